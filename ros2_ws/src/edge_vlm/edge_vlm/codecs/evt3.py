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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..events import EVENT_DTYPE, EventDecodeError
from .mono import payload_bytes

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

    def decode(self, data, width: int | None = None, height: int | None = None,
               time_base: int | None = None) -> np.ndarray:
        """Decode one packet (bytes-like / uint8 array) and return its CD events.

        ``time_base`` is accepted for interface symmetry and ignored.  On any
        :class:`EventDecodeError` the decoder state is left unchanged.
        """
        width = self.width if width is None else int(width)
        height = self.height if height is None else int(height)
        if (width is not None and width <= 0) or (height is not None and height <= 0):
            raise EventDecodeError(f"evt3: invalid sensor size {width}x{height}")
        buf = payload_bytes(data)
        if buf.size % 2:
            raise EventDecodeError(
                f"evt3: payload of {buf.size} bytes is not a whole number of 16-bit words")
        words = buf.view("<u2")
        n = words.size
        s = self._s
        if n == 0:
            self.packets += 1
            self.last_triggers = np.zeros(0, dtype=TRIGGER_DTYPE)
            return np.zeros(0, dtype=EVENT_DTYPE)
        typ = (words >> 12).astype(np.uint8)
        counts = np.bincount(typ, minlength=16)
        if counts[_UNKNOWN].any():
            raise EventDecodeError(
                f"evt3: unsupported word type 0x{int(np.flatnonzero(counts * _UNKNOWN)[0]):X}")
        val = words & 0x0FFF

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
