"""Stateful, vectorized decoder for Prophesee EVT 3.0 payloads.

EVT 3.0 is a stream of little-endian 16-bit words; the top 4 bits give the
word type and the low 12 bits its payload:

====  ==============  ======================================================
type  name            payload
====  ==============  ======================================================
0x0   EVT_ADDR_Y      y (bits 0-10), system type (bit 11, ignored)
0x2   EVT_ADDR_X      one CD event: x (bits 0-10), polarity (bit 11)
0x3   VECT_BASE_X     x base (bits 0-10), polarity (bit 11) for vectors
0x4   VECT_12         12 validity bits: events at base..base+11; base += 12
0x5   VECT_8          8 validity bits: events at base..base+7; base += 8
0x6   EVT_TIME_LOW    low 12 bits of the 24-bit microsecond time
0x7   CONTINUED_4     payload continuation (ignored)
0x8   EVT_TIME_HIGH   high 12 bits of the 24-bit microsecond time
0xA   EXT_TRIGGER     value/edge (bit 0), trigger id (bits 8-11)
0xE   OTHERS          (ignored)
0xF   CONTINUED_12    payload continuation (ignored)
====  ==============  ======================================================

Event time in ns = ``((wraps << 24) | (time_high << 12) | time_low) * 1000``
where ``wraps`` counts 24-bit wrap-arounds (every 16.77 s), detected by
``time_high`` jumping backwards by more than :data:`WRAP_THRESHOLD_HIGH`.
This is sensor time; the packet ``time_base`` (host time) is ignored, as in
ros-event-camera/event_camera_codecs.

Like the reference decoder, nothing (CD events or triggers) is emitted until
the stream has a valid time, i.e. a TIME_LOW word following a TIME_HIGH word.

The decoder carries its state (y, time high/low, wrap count, x base,
polarity) across packets, so a stream may be cut at any even byte offset.
Each packet is decoded without per-word Python loops: y and time are
forward-filled together as one packed int64 ``y + (t_us << 11)`` (a cumsum of
per-word deltas, exact because the packing is linear), the vector x base is a
cumsum of +12/+8 increments since the last VECT_BASE_X, and vector words are
expanded with ``np.unpackbits`` + ``np.repeat``.  A reused int64 scratch
buffer avoids page faults on large packets.

Fast path.  Most packets of a running stream (every packet of the real
Prophesee bags) hold no vector words and no 24-bit wrap, and arrive once the
time is valid.  Those skip the general code above, whose fixed cost of ~70
numpy calls dominated at the 2-8 KB packets camera drivers publish, and take
about half as many calls on reused scratch buffers: y, TIME_LOW and TIME_HIGH
are forward-filled together by ONE ``np.maximum.accumulate`` over a (3, n)
array of keys ``(word index + 1) << 12 | payload`` (the latest word of each
kind wins; column 0 holds the packet's entry state), gathered once at the
event words, and the events are built as the two int64 halves of the 16-byte
:data:`EVENT_DTYPE` items.  Trigger events are counted at once and built on
first access of ``last_triggers``.  Results are identical to the general path
(the per-word reference of the tests); any other packet takes the general path.

Columns.  :meth:`Evt3Decoder.decode_columns` decodes a frame's worth of joined
packets for :class:`~edge_vlm.binner.FrameBinner`: it returns plain columns
(t, y, x | p << 11) instead of an :data:`EVENT_DTYPE` array and, for packets
like the above, forward-fills y and time with ONE ``cumsum`` of a per-word
indicator that packs three counters (y, TIME_LOW, TIME_HIGH words seen so far):
at an event word they index the arrays of those words' values. About 25 numpy
calls per call, whatever the number of packets joined.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError
from edge_vlm.io.codecs.mono import payload_bytes

__all__ = ["Evt3Decoder", "TRIGGER_DTYPE", "WRAP_THRESHOLD_HIGH"]

ADDR_Y, ADDR_X, VECT_BASE_X, VECT_12, VECT_8 = 0x0, 0x2, 0x3, 0x4, 0x5
TIME_LOW, CONTINUED_4, TIME_HIGH, EXT_TRIGGER = 0x6, 0x7, 0x8, 0xA
OTHERS, CONTINUED_12 = 0xE, 0xF

#: A TIME_HIGH that goes back by more than this many units (of 4.096 ms) is a
#: 24-bit wrap; smaller backward steps are sensor jitter (half the 12-bit
#: range: a real wrap jumps back by ~4095, jitter by a few units).
WRAP_THRESHOLD_HIGH = 2048

_UNKNOWN = np.zeros(16, dtype=bool)         # word types EVT 3.0 does not define
_UNKNOWN[[0x1, 0x9, 0xB, 0xC, 0xD]] = True

_POPCOUNT = np.array([bin(i).count("1") for i in range(4096)], dtype=np.int64)

#: External trigger events of the last decoded packet.
TRIGGER_DTYPE = np.dtype([("t", "<i8"), ("id", "u1"), ("value", "u1")])

# --- fast path tables
#: word types the fast path compares with, one row each: y, TIME_LOW, TIME_HIGH (the three
#: forward-filled ones), then the CD event and trigger words
_FILL_TYPES = np.array([[ADDR_Y], [TIME_LOW], [TIME_HIGH], [ADDR_X], [EXT_TRIGGER]], dtype=np.uint16)
#: payload bits kept per row after the fill (y has 11 bits; bit 11 is the system type)
_FILL_MASK = np.array([[0x7FF], [0xFFF], [0xFFF]], dtype=np.int64)
#: EVT_ADDR_X payload -> second int64 of an EVENT_DTYPE item: x (bytes 8-9) | p << 32 (byte 12)
_XP = (np.arange(4096, dtype=np.int64) & 0x7FF) | ((np.arange(4096, dtype=np.int64) >> 11) << 32)
_FAST_LAYOUT = (sys.byteorder == "little" and EVENT_DTYPE.itemsize == 16
                and [EVENT_DTYPE.fields[k][1] for k in ("t", "x", "y", "p")] == [0, 8, 10, 12]
                and [EVENT_DTYPE.fields[k][0] for k in ("t", "x", "y", "p")]
                == [np.dtype("<i8"), np.dtype("<u2"), np.dtype("<u2"), np.dtype("u1")])
#: bit masks over word types (bit k = type k) for :meth:`Evt3Decoder.decode_columns`
_UNKNOWN_BITS = sum(1 << k for k in (0x1, 0x9, 0xB, 0xC, 0xD))
_VECTOR_BITS = (1 << VECT_12) | (1 << VECT_8)
_ONE16 = np.uint16(1)
#: per word type: +1 to the y (bits 0-20), TIME_LOW (21-41) or TIME_HIGH (42-62) word counter
_COUNT_LUT = np.zeros(16, dtype=np.int64)
_COUNT_LUT[[ADDR_Y, TIME_LOW, TIME_HIGH]] = [1, 1 << 21, 1 << 42]
_COUNT_MASK = (1 << 21) - 1
_NO_POS = np.zeros(0, dtype=np.intp)
#: joined payloads up to this many words take the columns fast path (the counters' 21 bits)
_COLUMNS_MAX_WORDS = _COUNT_MASK
_POSK = np.zeros(0, dtype=np.int64)   # (index + 1) << 12, grown on demand
#: larger packets (64 KB+) take the general path: bounds the fast path's reused scratch (~2 MB)
_FAST_MAX_WORDS = 1 << 15


def _posk(n: int) -> np.ndarray:
    global _POSK
    if _POSK.size < n:
        _POSK = np.arange(1, max(n, 2 * _POSK.size, 65536) + 1, dtype=np.int64) << 12
    return _POSK[:n]


def _delta(a: np.ndarray, first: int) -> np.ndarray:
    """``a[i] - a[i-1]`` with ``a[-1] := first`` (a cheap ``np.diff(prepend=)``)."""
    out = np.empty_like(a)
    if a.size:
        out[0] = a[0] - first
        np.subtract(a[1:], a[:-1], out=out[1:])
    return out


@dataclass
class _State:
    y: int = 0
    time_low: int = 0
    time_high: int = 0      # last raw 12-bit TIME_HIGH payload
    wraps: int = 0          # number of 24-bit wrap-arounds seen
    base_x: int = 0
    pol: int = 0
    seen_high: bool = False
    valid: bool = False     # TIME_LOW seen after a TIME_HIGH

    def copy(self) -> "_State":
        return _State(self.y, self.time_low, self.time_high, self.wraps, self.base_x, self.pol,
                      self.seen_high, self.valid)


def _state_at(counts: np.ndarray, yv, lv, hv, wraps: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, t ns) at words whose cumulated _COUNT_LUT indicator is ``counts`` (decode_columns)."""
    y = yv.take(counts & _COUNT_MASK)
    t = hv.take(counts >> 42)
    if wraps:
        t += wraps << 12
    t <<= 12
    t |= lv.take((counts >> 21) & _COUNT_MASK)
    t *= 1000
    return y, t


def _build_triggers(counts, tv, yv, lv, hv, wraps: int) -> np.ndarray:
    """The TRIGGER_DTYPE array of decode_columns' trigger words (built on first access)."""
    trig = np.empty(tv.size, dtype=TRIGGER_DTYPE)
    trig["t"] = _state_at(counts, yv, lv, hv, wraps)[1]
    trig["id"] = (tv >> 8) & 0xF
    trig["value"] = tv & 1
    return trig


class Evt3Decoder:
    """Stateful EVT 3.0 decoder; feed packets in stream order to :meth:`decode`.

    ``width``/``height`` (optional, here or per call) enable a bounds check:
    a CD event outside the sensor raises :class:`EventDecodeError`.
    Counters: ``events_decoded``, ``triggers_rising``, ``triggers_falling``,
    ``packets``; ``last_triggers`` holds the trigger events (TRIGGER_DTYPE)
    of the last packet.
    """

    encoding = "evt3"

    def __init__(self, width: int | None = None, height: int | None = None) -> None:
        self.width = width
        self.height = height
        self._scratch = np.empty(0, dtype=np.int64)
        self._trigger_src = None
        self._scratch_fast = None
        self.reset()

    def reset(self) -> None:
        """Forget all stream state and zero the counters."""
        self._s = _State()
        self.events_decoded = 0
        self.triggers_rising = 0
        self.triggers_falling = 0
        self.packets = 0
        self.last_triggers = np.zeros(0, dtype=TRIGGER_DTYPE)

    @property
    def time_us(self) -> int | None:
        """Current unwrapped sensor time in us (None before a valid time)."""
        s = self._s
        if not s.valid:
            return None
        return (s.wraps << 24) | (s.time_high << 12) | s.time_low

    def _words(self, data, width, height) -> tuple:
        """(width, height, uint16 words) of a payload, with the size and length checks."""
        width = self.width if width is None else int(width)
        height = self.height if height is None else int(height)
        if (width is not None and width <= 0) or (height is not None and height <= 0):
            raise EventDecodeError(f"evt3: invalid sensor size {width}x{height}")
        buf = np.frombuffer(data, dtype=np.uint8) if type(data) is bytes else payload_bytes(data)
        if buf.size % 2:
            raise EventDecodeError(
                f"evt3: payload of {buf.size} bytes is not a whole number of 16-bit words")
        return width, height, buf.view("<u2")

    def decode(self, data, width: int | None = None, height: int | None = None,
               time_base: int | None = None) -> np.ndarray:
        """Decode one packet (bytes-like / uint8 array) and return its CD events.

        ``time_base`` is accepted for interface symmetry and ignored.  On any
        :class:`EventDecodeError` the decoder state is left unchanged.
        """
        width, height, words = self._words(data, width, height)
        n = words.size
        s = self._s
        if n == 0:
            self.packets += 1
            self.last_triggers = np.zeros(0, dtype=TRIGGER_DTYPE)
            return np.zeros(0, dtype=EVENT_DTYPE)
        fast = s.valid and _FAST_LAYOUT and n <= _FAST_MAX_WORDS
        if fast:      # typ / val in reused scratch (the general path keeps its own arrays)
            sc = self._fast_scratch(n)
            typ = np.right_shift(words, 12, out=sc["typ"][:n])
            val = np.bitwise_and(words, 0x0FFF, out=sc["val"][:n])
        else:
            typ = words >> 12
            val = words & 0x0FFF
        counts = np.bincount(typ, minlength=16)
        c = counts.tolist()
        if c[0x1] or c[0x9] or c[0xB] or c[0xC] or c[0xD]:
            raise EventDecodeError(
                f"evt3: unsupported word type 0x{int(np.flatnonzero(counts * _UNKNOWN)[0]):X}")
        if fast and not (c[VECT_12] or c[VECT_8]):
            ev = self._decode_fast(sc, typ, val, c, n, width, height)
            if ev is not None:
                return ev
        return self._decode_general(typ, val, counts, n, width, height)

    def decode_columns(self, data, width: int | None = None, height: int | None = None,
                       ends=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Decode like :meth:`decode` (same events, errors, state and counters) into columns.

        Returns ``(t, y, xp, event_ends)``: int64 arrays of the event times (ns), rows and
        ``x | p << 11`` (x in bits 0-10, polarity in bit 11, as in EVT_ADDR_X; a vector
        running past x = 2047, which only a sensor wider than EVT 3.0 can address and
        :meth:`decode` accepts, raises :class:`EventDecodeError` here), and, when
        ``ends`` (the byte offset where each of several joined packets ends) is given, the
        event index where each packet's events end (else None). Raises
        :class:`EventDecodeError` like :meth:`decode`, leaving the state unchanged.
        """
        width, height, words = self._words(data, width, height)
        typ = words >> 12
        present = int(np.bitwise_or.reduce(np.left_shift(_ONE16, typ))) if words.size else 0
        if present & _UNKNOWN_BITS:
            bad = present & _UNKNOWN_BITS
            raise EventDecodeError(f"evt3: unsupported word type 0x{(bad & -bad).bit_length() - 1:X}")
        out = None
        if self._s.valid and not present & _VECTOR_BITS and words.size <= _COLUMNS_MAX_WORDS:
            out = self._columns_fast(words, typ, present, width, height)
        if out is None:
            return self._columns_general(words.view(np.uint8), width, height, ends)
        t, y, xp, ew = out
        return t, y, xp, (None if ends is None else np.searchsorted(ew, np.asarray(ends) // 2))

    def _columns_fast(self, words, typ, present, width, height):
        """Columns of a valid stream without vector words (None: a possible 24-bit wrap).

        ONE ``cumsum`` of a per-word indicator packing three 21-bit counters (y, TIME_LOW and
        TIME_HIGH words seen so far) gives, at every event word, the index of its y / time_low
        / time_high value in the arrays of those words' values (index 0: the entry state).
        """
        s = self._s
        val = words & 0xFFF
        vals = []
        for kind, first in ((ADDR_Y, s.y), (TIME_LOW, s.time_low), (TIME_HIGH, s.time_high)):
            pos = (typ == kind).nonzero()[0] if present >> kind & 1 else _NO_POS
            v = np.empty(pos.size + 1, dtype=np.uint16)
            v[0] = first
            val.take(pos, out=v[1:])
            vals.append(v)
        yv, lv, hv = vals
        if hv.size > 1 and int(hv.max()) - int(hv.min()) > WRAP_THRESHOLD_HIGH:
            return None                         # a wrap is possible: the general path handles it
        yv &= 0x7FF
        hv = hv.astype(np.int64)
        acc = _COUNT_LUT.take(typ)
        np.cumsum(acc, out=acc)
        ew = (typ == ADDR_X).nonzero()[0]
        xp = val.take(ew).astype(np.int64)
        y, t = _state_at(acc.take(ew), yv, lv, hv, s.wraps)
        if ew.size:
            if width is not None:
                xmax = int((xp & 0x7FF).max())
                if xmax >= width:
                    raise EventDecodeError(f"evt3: x={xmax} outside sensor width {width}")
            if height is not None:
                ymax = int(y.max())
                if ymax >= height:
                    raise EventDecodeError(f"evt3: y={ymax} outside sensor height {height}")
        n_trig = rising = 0
        if present >> EXT_TRIGGER & 1:        # counted now; last_triggers is built on first access
            tw = (typ == EXT_TRIGGER).nonzero()[0]
            tv = val.take(tw)
            n_trig, rising = tw.size, int(np.count_nonzero(tv & 1))
            trig_src = functools.partial(_build_triggers, acc.take(tw), tv, yv, lv, hv, s.wraps)
        base = int(val[(typ == VECT_BASE_X).nonzero()[0][-1]]) if present >> VECT_BASE_X & 1 else None
        # --- commit state (only after every check passed)
        s.y, s.time_low, s.time_high = int(yv[-1]), int(lv[-1]), int(hv[-1])
        if hv.size > 1:
            s.seen_high = True
        if base is not None:
            s.base_x, s.pol = base & 0x7FF, base >> 11
        self.events_decoded += int(ew.size)
        self.triggers_rising += rising
        self.triggers_falling += n_trig - rising
        self.packets += 1
        if n_trig:
            self._last_triggers, self._trigger_src = None, trig_src
        else:
            self.last_triggers = np.zeros(0, dtype=TRIGGER_DTYPE)
        return t, y.astype(np.int64), xp, ew

    def _columns_general(self, buf, width, height, ends):
        """Columns via :meth:`decode`, packet by packet when ``ends`` is given (state restored on error)."""
        cuts = [0, *(int(e) for e in ends)] if ends is not None else [0, buf.size]
        saved = (self._s.copy(), self.events_decoded, self.triggers_rising, self.triggers_falling,
                 self.packets)
        evs, trigs = [], []
        try:
            for a, b in zip(cuts, cuts[1:]):
                evs.append(self.decode(buf[a:b], width, height))
                trigs.append(self.last_triggers)
        except EventDecodeError:
            (self._s, self.events_decoded, self.triggers_rising, self.triggers_falling,
             self.packets) = saved
            raise
        if len(evs) > 1:
            self.packets = saved[4] + 1
            self.last_triggers = np.concatenate(trigs)
        ev = np.concatenate(evs) if evs else np.zeros(0, dtype=EVENT_DTYPE)
        if len(ev) and int(ev["x"].max()) > 0x7FF:     # x | p << 11 cannot hold it
            (self._s, self.events_decoded, self.triggers_rising, self.triggers_falling,
             self.packets) = saved
            raise EventDecodeError(f"evt3: x={int(ev['x'].max())} beyond 11 bits (vector past x=2047)")
        xp = ev["x"].astype(np.int64)
        xp |= ev["p"].astype(np.int64) << 11
        counts = np.cumsum([len(e) for e in evs]) if ends is not None else None
        return ev["t"].copy(), ev["y"].astype(np.int64), xp, counts

    def _fast_scratch(self, n: int) -> dict:
        sc = self._scratch_fast
        if sc is None or sc["typ"].size < n:
            cap = max(4096, 1 << (int(n) - 1).bit_length())
            sc = self._scratch_fast = {
                "typ": np.empty(cap, dtype=np.uint16), "val": np.empty(cap, dtype=np.uint16),
                "key": np.empty(cap + 1, dtype=np.int64), "is": np.empty((5, cap), dtype=bool),
                "sel": np.empty((3, cap), dtype=np.int64), "fill": np.empty(3 * (cap + 1), dtype=np.int64)}
        return sc

    def _decode_fast(self, sc, typ, val, c, n, width, height):
        """A packet without vector words once the time is valid (None: a possible 24-bit wrap)."""
        s = self._s
        # Row r of `fill`: key (index + 1) << 12 | payload at the words of type _FILL_TYPES[r], 0
        # elsewhere; column 0 holds the entry state (a key < 4096 loses to every word's key), so
        # word i is column i + 1 and, after the running maximum, column i + 1 holds the latest
        # y / TIME_LOW / TIME_HIGH payload up to word i.
        fill = sc["fill"][: 3 * (n + 1)].reshape(3, n + 1)
        fill[:, 0] = (s.y, s.time_low, s.time_high)
        sel = sc["sel"][:, :n]
        is_t = np.equal(typ, _FILL_TYPES, out=sc["is"][:, :n])
        sel[...] = is_t[:3]
        np.multiply(sel, np.bitwise_or(_posk(n), val, out=sc["key"][:n]), out=fill[:, 1:])
        np.maximum.accumulate(fill, axis=1, out=fill)
        if c[TIME_HIGH]:
            # no TIME_HIGH step back by more than the threshold (a wrap) is possible unless the
            # range of TIME_HIGH values (with the entry state) exceeds it
            hi = val[is_t[2]]
            if max(int(hi.max()), s.time_high) - min(int(hi.min()), s.time_high) > WRAP_THRESHOLD_HIGH:
                return None
        ew = np.flatnonzero(is_t[3])
        m = ew.size
        wv = val.take(ew)
        ew += 1
        st = fill.take(ew, axis=1)
        st &= _FILL_MASK
        if m:
            if width is not None:
                xmax = int((wv & 0x7FF).max())
                if xmax >= width:
                    raise EventDecodeError(f"evt3: x={xmax} outside sensor width {width}")
            if height is not None:
                ymax = int(st[0].max())
                if ymax >= height:
                    raise EventDecodeError(f"evt3: y={ymax} outside sensor height {height}")
        # the 16-byte EVENT_DTYPE item as two int64: t (built in row 2), x | y << 16 | p << 32 (row 0)
        t, xyp = st[2], st[0]
        t <<= 12
        t |= st[1]
        if s.wraps:
            t += s.wraps << 24
        t *= 1000
        xyp <<= 16
        xyp |= _XP.take(wv)
        ev = np.ndarray(m, EVENT_DTYPE, np.ascontiguousarray(st[::-2].T))

        trig_src, rising = None, 0
        if c[EXT_TRIGGER]:   # counted now; the TRIGGER_DTYPE array is built on demand
            tw = np.flatnonzero(is_t[4])
            tv = val.take(tw)
            tw += 1
            trig_src = (fill[1:].take(tw, axis=1), tv, s.wraps)
            rising = int(np.count_nonzero(tv & 1))
        base = None
        if c[VECT_BASE_X]:
            base = int(val[np.flatnonzero(typ == VECT_BASE_X)[-1]])

        # --- commit state (only after every check passed)
        last = fill[:, -1].tolist()
        s.y, s.time_low, s.time_high = last[0] & 0x7FF, last[1] & 0xFFF, last[2] & 0xFFF
        if c[TIME_HIGH]:
            s.seen_high = True
        if base is not None:
            s.base_x, s.pol = base & 0x7FF, base >> 11
        self.events_decoded += m
        self.triggers_rising += rising
        self.triggers_falling += c[EXT_TRIGGER] - rising
        self.packets += 1
        self._last_triggers, self._trigger_src = (None, trig_src) if trig_src else (
            np.zeros(0, dtype=TRIGGER_DTYPE), None)
        return ev

    @property
    def last_triggers(self) -> np.ndarray:
        """External trigger events (TRIGGER_DTYPE) of the last decoded packet."""
        if callable(self._trigger_src):
            self._last_triggers, self._trigger_src = self._trigger_src(), None
        if self._trigger_src is not None:
            tt, tv, wraps = self._trigger_src
            tt &= 0xFFF
            trig = np.empty(tv.size, dtype=TRIGGER_DTYPE)
            trig["t"] = ((wraps << 24) | (tt[1] << 12) | tt[0]) * 1000
            trig["id"] = (tv >> 8) & 0xF
            trig["value"] = tv & 1
            self._last_triggers, self._trigger_src = trig, None
        return self._last_triggers

    @last_triggers.setter
    def last_triggers(self, trig: np.ndarray) -> None:
        self._last_triggers, self._trigger_src = trig, None

    def _decode_general(self, typ, val, counts, n, width, height):
        """Any packet (vectors, wraps, a stream that is not yet valid)."""
        s = self._s

        # --- y and time as ONE forward-filled packed state  P = y + (t_us << 11).
        # P is linear in (y, t_us) and t_us = (hi_full << 12) + time_low, so
        # P after word i = cumsum of per-word deltas: a y word adds the change
        # of y, a TIME_LOW word the change of time_low, a TIME_HIGH word the
        # change of hi_full = (wraps << 12) | time_high (shifted).
        yp = np.flatnonzero(typ == ADDR_Y)
        lp = np.flatnonzero(typ == TIME_LOW)
        hp = np.flatnonzero(typ == TIME_HIGH)
        yv = (val[yp] & 0x7FF).astype(np.int64)
        lv = val[lp].astype(np.int64)
        hv = val[hp].astype(np.int64)
        dh = _delta(hv, s.time_high)
        wrapped = dh < -WRAP_THRESHOLD_HIGH
        wraps_end = s.wraps
        if wrapped.any():                      # rare: 24-bit wrap in this packet
            wraps = s.wraps + np.cumsum(wrapped)
            wraps_end = int(wraps[-1])
            dh = _delta((wraps << 12) | hv, (s.wraps << 12) | s.time_high)
        if self._scratch.size < n:                # reused: avoids page faults
            self._scratch = np.empty(max(n, 2 * self._scratch.size), dtype=np.int64)
        d = self._scratch[:n]
        d.fill(0)
        d[yp] = _delta(yv, s.y)
        d[lp] = _delta(lv, s.time_low) << 11
        d[hp] = dh << 23
        d[0] += s.y + ((((s.wraps << 12) | s.time_high) << 12 | s.time_low) << 11)
        packed = np.cumsum(d, out=d)

        # --- first word index from which events are emitted
        became_valid = s.valid
        valid_from = 0
        if not s.valid:
            first_hi = -1 if s.seen_high else (int(hp[0]) if hp.size else n)
            k = int(np.searchsorted(lp, first_hi, side="right"))
            became_valid = first_hi < n and k < lp.size
            valid_from = int(lp[k]) + 1 if became_valid else n

        # --- event words: singles (ADDR_X) and vectors (VECT_12 / VECT_8)
        is_ev = typ == ADDR_X
        n_vec = int(counts[VECT_12] + counts[VECT_8])
        if n_vec:
            is_ev |= (typ == VECT_12) | (typ == VECT_8)
        ew = np.flatnonzero(is_ev)
        if valid_from:
            ew = ew[ew >= valid_from]
        wv = val[ew]
        xb = wv & 0x7FF
        pol = (wv >> 11).astype(np.uint8)
        pk = packed[ew]
        cnt = None
        has_base = bool(counts[VECT_BASE_X])
        if has_base or n_vec:
            # x base of vectors = last VECT_BASE_X + increments of vectors since
            vb = np.flatnonzero((typ >= VECT_BASE_X) & (typ <= VECT_8))
            vt, vv = typ[vb], val[vb].astype(np.int64)
            isb = vt == VECT_BASE_X
            incr = np.where(vt == VECT_12, 12, np.where(vt == VECT_8, 8, 0))
            cum = np.cumsum(incr) - incr
            bpos = np.concatenate(([-1], np.flatnonzero(isb)))[np.cumsum(isb)]
            has_b = bpos >= 0
            bc = np.maximum(bpos, 0)
            base_at = np.where(has_b, (vv[bc] & 0x7FF) + cum - cum[bc], s.base_x + cum)
            pol_at = np.where(has_b, vv[bc] >> 11, s.pol).astype(np.uint8)
            end_base = int(base_at[-1]) + int(incr[-1])
            end_pol = int(pol_at[-1])
            if isb[-1]:
                end_base, end_pol = int(vv[-1] & 0x7FF), int(vv[-1] >> 11)
            if n_vec:
                sel = ~isb & (vb >= valid_from)
                vec = typ[ew] != ADDR_X
                xb = xb.astype(np.int64)
                xb[vec] = base_at[sel]
                pol[vec] = pol_at[sel]
                vbits = np.where(vt[sel] == VECT_8, vv[sel] & 0xFF, vv[sel]).astype("<u2")
                cnt = np.ones(ew.size, dtype=np.int64)
                cnt[vec] = _POPCOUNT[vbits]
                _, cols = np.nonzero(np.unpackbits(
                    vbits.view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")[:, :12])
                xb, pol, pk = (np.repeat(a, cnt) for a in (xb, pol, pk))
                xb[np.flatnonzero(np.repeat(vec, cnt))] += cols
        y = pk & 0x7FF
        if xb.size:
            if width is not None and int(xb.max()) >= width:
                raise EventDecodeError(
                    f"evt3: x={int(xb.max())} outside sensor width {width}")
            if height is not None and int(y.max()) >= height:
                raise EventDecodeError(
                    f"evt3: y={int(y.max())} outside sensor height {height}")
        ev = np.empty(xb.size, dtype=EVENT_DTYPE)
        ev["t"] = (pk >> 11) * 1000
        ev["x"] = xb
        ev["y"] = y
        ev["p"] = pol

        # --- external triggers
        tw = np.flatnonzero(typ == EXT_TRIGGER) if counts[EXT_TRIGGER] else ew[:0]
        if valid_from:
            tw = tw[tw >= valid_from]
        trig = np.empty(tw.size, dtype=TRIGGER_DTYPE)
        trig["t"] = (packed[tw] >> 11) * 1000
        trig["id"] = (val[tw] >> 8) & 0xF
        trig["value"] = val[tw] & 1
        rising = int(np.count_nonzero(trig["value"]))

        # --- commit state (only after every check passed)
        last = int(packed[-1])
        s.y, s.time_low = last & 0x7FF, (last >> 11) & 0xFFF
        if hv.size:
            s.time_high, s.wraps = int(hv[-1]), wraps_end
            s.seen_high = True
        if has_base or n_vec:
            s.base_x, s.pol = end_base & 0xFFFF, end_pol      # uint16 like the sensor logic
        s.valid = became_valid
        self.events_decoded += int(xb.size)
        self.triggers_rising += rising
        self.triggers_falling += int(tw.size) - rising
        self.packets += 1
        self.last_triggers = trig
        return ev
