"""The fast EVT 3.0 paths: packets of a running stream without vector words.

Most packets of a running stream (every packet of the real Prophesee bags) hold no vector
words and no 24-bit wrap, and arrive once the time is valid.  Those skip the general path
(:mod:`.evt3_general`) and take far fewer numpy calls on reused scratch buffers:

* :func:`decode_fast` (:meth:`~edge_vlm.io.codecs.evt3.Evt3Decoder.decode`): y, TIME_LOW and
  TIME_HIGH are forward-filled together by ONE ``np.maximum.accumulate`` over a (3, n) array
  of keys ``(word index + 1) << 12 | payload`` (the latest word of each kind wins; column 0
  holds the packet's entry state), gathered once at the event words, and the events are
  built as the two int64 halves of the 16-byte :data:`~edge_vlm.events.EVENT_DTYPE` items;
* :func:`columns_fast` (:meth:`~edge_vlm.io.codecs.evt3.Evt3Decoder.decode_columns`, a
  frame's worth of joined packets for :class:`~edge_vlm.stream.binner.FrameBinner`): plain
  columns (t, y, x | p << 11); y and time are forward-filled with ONE ``cumsum`` of a
  per-word indicator that packs three counters (y, TIME_LOW, TIME_HIGH words seen so far):
  at an event word they index the arrays of those words' values, whatever the number of
  packets joined.

Trigger events are counted at once and built on first access of ``last_triggers``.  Both
return None for a packet that may hold a 24-bit wrap (the general path handles it); their
results are identical to the general path's (the per-word reference of the tests).  The
decoder state is committed only after every check passed.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np

from edge_vlm.events import EVENT_DTYPE, check_xy
from edge_vlm.io.codecs.evt3_format import (ADDR_X, ADDR_Y, EXT_TRIGGER, TIME_HIGH, TIME_LOW,
                                            TRIGGER_DTYPE, UNKNOWN_TYPES, VECT_8, VECT_12,
                                            VECT_BASE_X, WRAP_THRESHOLD_HIGH, Evt3Columns,
                                            Evt3State, PacketTally, no_triggers)

__all__ = ["FAST_LAYOUT", "FAST_MAX_WORDS", "COLUMNS_MAX_WORDS", "UNKNOWN_BITS", "VECTOR_BITS",
           "FastScratch", "fast_scratch", "decode_fast", "columns_fast"]

# --- decode_fast tables
#: word types the fast path compares with, one row each: y, TIME_LOW, TIME_HIGH (the three
#: forward-filled ones), then the CD event and trigger words
_FILL_TYPES = np.array([[ADDR_Y], [TIME_LOW], [TIME_HIGH], [ADDR_X], [EXT_TRIGGER]],
                       dtype=np.uint16)
#: payload bits kept per row after the fill (y has 11 bits; bit 11 is the system type)
_FILL_MASK = np.array([[0x7FF], [0xFFF], [0xFFF]], dtype=np.int64)
#: EVT_ADDR_X payload -> second int64 of an EVENT_DTYPE item: x (bytes 8-9) | p << 32 (byte 12)
_XP = (np.arange(4096, dtype=np.int64) & 0x7FF) | ((np.arange(4096, dtype=np.int64) >> 11) << 32)
#: the events can be built as two int64 halves (little-endian, the EVENT_DTYPE layout)
FAST_LAYOUT = (sys.byteorder == "little" and EVENT_DTYPE.itemsize == 16
               and [EVENT_DTYPE.fields[k][1] for k in ("t", "x", "y", "p")] == [0, 8, 10, 12]
               and [EVENT_DTYPE.fields[k][0] for k in ("t", "x", "y", "p")]
               == [np.dtype("<i8"), np.dtype("<u2"), np.dtype("<u2"), np.dtype("u1")])
#: larger packets (64 KB+) take the general path: bounds the fast path's reused scratch (~2 MB)
FAST_MAX_WORDS = 1 << 15
_POSK = np.zeros(0, dtype=np.int64)   # (index + 1) << 12, grown on demand

# --- columns_fast tables
#: bit masks over word types (bit k = type k)
UNKNOWN_BITS = sum(1 << k for k in UNKNOWN_TYPES)
VECTOR_BITS = (1 << VECT_12) | (1 << VECT_8)
#: per word type: +1 to the y (bits 0-20), TIME_LOW (21-41) or TIME_HIGH (42-62) word counter
_COUNT_LUT = np.zeros(16, dtype=np.int64)
_COUNT_LUT[[ADDR_Y, TIME_LOW, TIME_HIGH]] = [1, 1 << 21, 1 << 42]
_COUNT_MASK = (1 << 21) - 1
_NO_POS = np.zeros(0, dtype=np.intp)
#: joined payloads up to this many words take the columns fast path (the counters' 21 bits)
COLUMNS_MAX_WORDS = _COUNT_MASK


def _posk(n: int) -> np.ndarray:
    global _POSK
    if _POSK.size < n:
        _POSK = np.arange(1, max(n, 2 * _POSK.size, 65536) + 1, dtype=np.int64) << 12
    return _POSK[:n]


@dataclass
class FastScratch:
    """The reused buffers of :func:`decode_fast` (capacity: words per packet)."""

    typ: np.ndarray       # uint16 word types
    val: np.ndarray       # uint16 payloads
    key: np.ndarray       # int64 (index + 1) << 12 | payload
    is_: np.ndarray       # bool (5, cap): word is of type _FILL_TYPES[r]
    sel: np.ndarray       # int64 (3, cap): is_[:3] as int64
    fill: np.ndarray      # int64 3 * (cap + 1): the forward-filled keys


def fast_scratch(sc: FastScratch | None, n: int) -> FastScratch:
    """``sc`` when it holds ``n`` words, else buffers for the next power of two (>= 4096)."""
    if sc is not None and sc.typ.size >= n:
        return sc
    cap = max(4096, 1 << (int(n) - 1).bit_length())
    return FastScratch(np.empty(cap, dtype=np.uint16), np.empty(cap, dtype=np.uint16),
                       np.empty(cap + 1, dtype=np.int64), np.empty((5, cap), dtype=bool),
                       np.empty((3, cap), dtype=np.int64), np.empty(3 * (cap + 1), dtype=np.int64))


def _fill_triggers(tt: np.ndarray, tv: np.ndarray, wraps: int) -> np.ndarray:
    """The TRIGGER_DTYPE array of decode_fast's trigger words (``tt``: their filled TIME_LOW /
    TIME_HIGH keys, ``tv``: their payloads)."""
    tt &= 0xFFF
    trig = np.empty(tv.size, dtype=TRIGGER_DTYPE)
    trig["t"] = ((wraps << 24) | (tt[1] << 12) | tt[0]) * 1000
    trig["id"] = (tv >> 8) & 0xF
    trig["value"] = tv & 1
    return trig


def decode_fast(s: Evt3State, sc: FastScratch, typ: np.ndarray, val: np.ndarray, c: list[int],
                n: int, width: int | None,
                height: int | None) -> tuple[np.ndarray, PacketTally] | None:
    """A packet without vector words once the time is valid (``typ`` / ``val`` in ``sc``,
    ``c`` the count of each word type); None: a possible 24-bit wrap."""
    # Row r of `fill`: key (index + 1) << 12 | payload at the words of type _FILL_TYPES[r], 0
    # elsewhere; column 0 holds the entry state (a key < 4096 loses to every word's key), so
    # word i is column i + 1 and, after the running maximum, column i + 1 holds the latest
    # y / TIME_LOW / TIME_HIGH payload up to word i.
    fill = sc.fill[: 3 * (n + 1)].reshape(3, n + 1)
    fill[:, 0] = (s.y, s.time_low, s.time_high)
    sel = sc.sel[:, :n]
    is_t = np.equal(typ, _FILL_TYPES, out=sc.is_[:, :n])
    sel[...] = is_t[:3]
    np.multiply(sel, np.bitwise_or(_posk(n), val, out=sc.key[:n]), out=fill[:, 1:])
    np.maximum.accumulate(fill, axis=1, out=fill)
    if c[TIME_HIGH]:
        # no TIME_HIGH step back by more than the threshold (a wrap) is possible unless the
        # range of TIME_HIGH values (with the entry state) exceeds it
        hi = val[is_t[2]]
        if (max(int(hi.max()), s.time_high) - min(int(hi.min()), s.time_high)
                > WRAP_THRESHOLD_HIGH):
            return None
    ew = np.flatnonzero(is_t[3])
    m = ew.size
    wv = val.take(ew)
    ew += 1
    st = fill.take(ew, axis=1)
    st &= _FILL_MASK
    check_xy(wv & 0x7FF, st[0], width, height, "evt3: ")
    # the 16-byte EVENT_DTYPE item as two int64: t (built in row 2), x | y << 16 | p << 32
    # (row 0)
    t, xyp = st[2], st[0]
    t <<= 12
    t |= st[1]
    if s.wraps:
        t += s.wraps << 24
    t *= 1000
    xyp <<= 16
    xyp |= _XP.take(wv)
    ev = np.ndarray(m, EVENT_DTYPE, np.ascontiguousarray(st[::-2].T))

    triggers, rising = no_triggers, 0
    if c[EXT_TRIGGER]:   # counted now; the TRIGGER_DTYPE array is built on demand
        tw = np.flatnonzero(is_t[4])
        tv = val.take(tw)
        tw += 1
        triggers = functools.partial(_fill_triggers, fill[1:].take(tw, axis=1), tv, s.wraps)
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
    return ev, PacketTally(m, rising, c[EXT_TRIGGER], triggers)


def _state_at(counts: np.ndarray, yv, lv, hv, wraps: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, t ns) at words whose cumulated _COUNT_LUT indicator is ``counts``."""
    y = yv.take(counts & _COUNT_MASK)
    t = hv.take(counts >> 42)
    if wraps:
        t += wraps << 12
    t <<= 12
    t |= lv.take((counts >> 21) & _COUNT_MASK)
    t *= 1000
    return y, t


def _count_triggers(counts, tv, yv, lv, hv, wraps: int) -> np.ndarray:
    """The TRIGGER_DTYPE array of columns_fast's trigger words (built on first access)."""
    trig = np.empty(tv.size, dtype=TRIGGER_DTYPE)
    trig["t"] = _state_at(counts, yv, lv, hv, wraps)[1]
    trig["id"] = (tv >> 8) & 0xF
    trig["value"] = tv & 1
    return trig


def columns_fast(s: Evt3State, words: np.ndarray, typ: np.ndarray, present: int,
                 width: int | None, height: int | None,
                 ends) -> tuple[Evt3Columns, PacketTally] | None:
    """Columns of a valid stream without vector words (``present``: the bit mask of the word
    types it holds; ``ends``: byte offsets where joined packets end, or None); None: a
    possible 24-bit wrap.

    ONE ``cumsum`` of a per-word indicator packing three 21-bit counters (y, TIME_LOW and
    TIME_HIGH words seen so far) gives, at every event word, the index of its y / time_low
    / time_high value in the arrays of those words' values (index 0: the entry state).
    """
    val = words & 0xFFF
    vals = []               # the y, TIME_LOW and TIME_HIGH payloads, each after its entry state
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
    check_xy(xp & 0x7FF, y, width, height, "evt3: ")
    n_trig = rising = 0
    triggers = no_triggers
    if present >> EXT_TRIGGER & 1:        # counted now; last_triggers is built on first access
        tw = (typ == EXT_TRIGGER).nonzero()[0]
        tv = val.take(tw)
        n_trig, rising = tw.size, int(np.count_nonzero(tv & 1))
        triggers = functools.partial(_count_triggers, acc.take(tw), tv, yv, lv, hv, s.wraps)
    base = (int(val[(typ == VECT_BASE_X).nonzero()[0][-1]]) if present >> VECT_BASE_X & 1
            else None)
    # --- commit state (only after every check passed)
    s.y, s.time_low, s.time_high = int(yv[-1]), int(lv[-1]), int(hv[-1])
    if hv.size > 1:
        s.seen_high = True
    if base is not None:
        s.base_x, s.pol = base & 0x7FF, base >> 11
    packet_ends = None if ends is None else np.searchsorted(ew, np.asarray(ends) // 2)
    return (Evt3Columns(t, y.astype(np.int64), xp, packet_ends),
            PacketTally(int(ew.size), rising, n_trig, triggers))
