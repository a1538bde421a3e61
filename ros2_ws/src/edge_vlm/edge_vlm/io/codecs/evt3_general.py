"""The general EVT 3.0 path: any packet (vector words, 24-bit wraps, a stream not yet valid).

Each packet is decoded without per-word Python loops: y and time are forward-filled together
as one packed int64 ``y + (t_us << 11)`` (a cumsum of per-word deltas, exact because the
packing is linear), the vector x base is a cumsum of +12/+8 increments since the last
VECT_BASE_X, and vector words are expanded with ``np.unpackbits`` + ``np.repeat``.  The
caller's reused int64 scratch buffer avoids page faults on large packets.  The decoder state
is committed only after every check passed.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edge_vlm.events import EVENT_DTYPE, check_xy
from edge_vlm.io.codecs.evt3_format import (ADDR_X, ADDR_Y, EXT_TRIGGER, TIME_HIGH, TIME_LOW,
                                            TRIGGER_DTYPE, VECT_8, VECT_12, VECT_BASE_X,
                                            WRAP_THRESHOLD_HIGH, Evt3State, PacketTally)

__all__ = ["decode_general"]

_POPCOUNT = np.array([bin(i).count("1") for i in range(4096)], dtype=np.int64)


def _delta(a: np.ndarray, first: int) -> np.ndarray:
    """``a[i] - a[i-1]`` with ``a[-1] := first`` (a cheap ``np.diff(prepend=)``)."""
    out = np.empty_like(a)
    if a.size:
        out[0] = a[0] - first
        np.subtract(a[1:], a[:-1], out=out[1:])
    return out


class _Packed(NamedTuple):
    """y and time after every word of a packet, and what the state keeps of them."""

    packed: np.ndarray      # int64 y + (t_us << 11) after each word
    hp: np.ndarray          # positions of the TIME_HIGH words
    lp: np.ndarray          # positions of the TIME_LOW words
    hv: np.ndarray          # TIME_HIGH payloads
    wraps_end: int          # 24-bit wraps seen at the end of the packet


def _packed_state(s: Evt3State, typ: np.ndarray, val: np.ndarray, d: np.ndarray) -> _Packed:
    """y and time as ONE forward-filled packed state ``P = y + (t_us << 11)``, in ``d``.

    P is linear in (y, t_us) and t_us = (hi_full << 12) + time_low, so P after word i is the
    cumsum of per-word deltas: a y word adds the change of y, a TIME_LOW word the change of
    time_low, a TIME_HIGH word the change of hi_full = (wraps << 12) | time_high (shifted).
    """
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
    d.fill(0)
    d[yp] = _delta(yv, s.y)
    d[lp] = _delta(lv, s.time_low) << 11
    d[hp] = dh << 23
    d[0] += s.y + ((((s.wraps << 12) | s.time_high) << 12 | s.time_low) << 11)
    return _Packed(np.cumsum(d, out=d), hp, lp, hv, wraps_end)


class _Start(NamedTuple):
    """From which word a packet's events are emitted (the stream has a valid time)."""

    valid: bool             # the stream is valid at the end of the packet
    first_word: int         # words before this one emit nothing (n: none emits)


def _start(s: Evt3State, hp: np.ndarray, lp: np.ndarray, n: int) -> _Start:
    """Valid from the first TIME_LOW word after a TIME_HIGH word (at once if already valid)."""
    if s.valid:
        return _Start(True, 0)
    first_hi = -1 if s.seen_high else (int(hp[0]) if hp.size else n)
    k = int(np.searchsorted(lp, first_hi, side="right"))
    valid = first_hi < n and k < lp.size
    return _Start(valid, int(lp[k]) + 1 if valid else n)


class _Vectors(NamedTuple):
    """The VECT_BASE_X / VECT_12 / VECT_8 words of a packet and the x base at each."""

    vb: np.ndarray          # their positions
    vt: np.ndarray          # their types
    vv: np.ndarray          # their payloads (int64)
    isb: np.ndarray         # is a VECT_BASE_X word
    base_at: np.ndarray     # x base at each word
    pol_at: np.ndarray      # vector polarity at each word (uint8)
    end_base: int           # x base after the packet
    end_pol: int            # vector polarity after the packet


def _vectors(s: Evt3State, typ: np.ndarray, val: np.ndarray) -> _Vectors:
    """x base of vectors = last VECT_BASE_X + increments of the vectors since."""
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
    return _Vectors(vb, vt, vv, isb, base_at, pol_at, end_base, end_pol)


class _EventColumns(NamedTuple):
    x: np.ndarray           # columns
    p: np.ndarray           # polarities (uint8)
    packed: np.ndarray      # packed y / time (see _packed_state)


def _expand(v: _Vectors, typ: np.ndarray, ew: np.ndarray, first_word: int,
            ev: _EventColumns) -> _EventColumns:
    """One event per validity bit of the vector words among the event words ``ew``."""
    sel = ~v.isb & (v.vb >= first_word)
    vec = typ[ew] != ADDR_X
    xb, pol = ev.x.astype(np.int64), ev.p
    xb[vec] = v.base_at[sel]
    pol[vec] = v.pol_at[sel]
    vbits = np.where(v.vt[sel] == VECT_8, v.vv[sel] & 0xFF, v.vv[sel]).astype("<u2")
    cnt = np.ones(ew.size, dtype=np.int64)
    cnt[vec] = _POPCOUNT[vbits]
    _, cols = np.nonzero(np.unpackbits(
        vbits.view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")[:, :12])
    xb, pol, pk = (np.repeat(a, cnt) for a in (xb, pol, ev.packed))
    xb[np.flatnonzero(np.repeat(vec, cnt))] += cols
    return _EventColumns(xb, pol, pk)


def _triggers(typ: np.ndarray, val: np.ndarray, present: bool, packed: np.ndarray,
              first_word: int) -> np.ndarray:
    """The TRIGGER_DTYPE events of the EXT_TRIGGER words from ``first_word`` on."""
    tw = np.flatnonzero(typ == EXT_TRIGGER) if present else np.zeros(0, dtype=np.intp)
    if first_word:
        tw = tw[tw >= first_word]
    trig = np.empty(tw.size, dtype=TRIGGER_DTYPE)
    trig["t"] = (packed[tw] >> 11) * 1000
    trig["id"] = (val[tw] >> 8) & 0xF
    trig["value"] = val[tw] & 1
    return trig


def decode_general(s: Evt3State, typ: np.ndarray, val: np.ndarray, counts: np.ndarray,
                   width: int | None, height: int | None,
                   scratch: np.ndarray) -> tuple[np.ndarray, PacketTally]:
    """Any packet (``counts``: of each word type; ``scratch``: int64, one per word)."""
    n = typ.size
    fill = _packed_state(s, typ, val, scratch)
    start = _start(s, fill.hp, fill.lp, n)
    # --- event words: singles (ADDR_X) and vectors (VECT_12 / VECT_8)
    is_ev = typ == ADDR_X
    n_vec = int(counts[VECT_12] + counts[VECT_8])
    if n_vec:
        is_ev |= (typ == VECT_12) | (typ == VECT_8)
    ew = np.flatnonzero(is_ev)
    if start.first_word:
        ew = ew[ew >= start.first_word]
    wv = val[ew]
    cols = _EventColumns(wv & 0x7FF, (wv >> 11).astype(np.uint8), fill.packed[ew])
    vectors = None
    if counts[VECT_BASE_X] or n_vec:
        vectors = _vectors(s, typ, val)
        if n_vec:
            cols = _expand(vectors, typ, ew, start.first_word, cols)
    y = cols.packed & 0x7FF
    check_xy(cols.x, y, width, height, "evt3: ")
    ev = np.empty(cols.x.size, dtype=EVENT_DTYPE)
    ev["t"] = (cols.packed >> 11) * 1000
    ev["x"] = cols.x
    ev["y"] = y
    ev["p"] = cols.p
    trig = _triggers(typ, val, bool(counts[EXT_TRIGGER]), fill.packed, start.first_word)
    rising = int(np.count_nonzero(trig["value"]))

    # --- commit state (only after every check passed)
    last = int(fill.packed[-1])
    s.y, s.time_low = last & 0x7FF, (last >> 11) & 0xFFF
    if fill.hv.size:
        s.time_high, s.wraps = int(fill.hv[-1]), fill.wraps_end
        s.seen_high = True
    if vectors is not None:
        s.base_x, s.pol = vectors.end_base & 0xFFFF, vectors.end_pol   # uint16 like the sensor
    s.valid = start.valid
    return ev, PacketTally(int(cols.x.size), rising, int(trig.size), trig)
