"""Event representations on the model grid (pure numpy, vectorized).

The model sees one frame of ``period`` sensor time as an event histogram with
``2 * time_bins`` channels: channel ``2*b + p`` counts the polarity-``p`` events
of the b-th equal sub-window. Two sub-windows keep the direction of motion
inside a frame (leading vs trailing edge) at almost no cost.

Sensors of another size are mapped to the model grid by integer coordinate
scaling ``x * model_w // sensor_w`` (aspect ratio is not preserved; documented
in the README).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

TIME_BINS = 2
EVENT_CHANNELS = 2 * TIME_BINS


def scale_coords(x: np.ndarray, y: np.ndarray, sensor_w: int, sensor_h: int,
                 model_w: int, model_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Map sensor coordinates to model-grid coordinates (identity when sizes match)."""
    if sensor_w == model_w and sensor_h == model_h:
        return x.astype(np.int64), y.astype(np.int64)
    return (x.astype(np.int64) * model_w) // sensor_w, (y.astype(np.int64) * model_h) // sensor_h


def event_histogram(events: np.ndarray, t_start: int, t_end: int, sensor_w: int, sensor_h: int,
                    model_w: int = 128, model_h: int = 128,
                    time_bins: int = TIME_BINS) -> np.ndarray:
    """Counts per (channel, y, x) of ``events`` inside ``[t_start, t_end)``.

    Returns float32 of shape ``(2*time_bins, model_h, model_w)``.
    """
    out = np.zeros((2 * time_bins, model_h, model_w), dtype=np.float32)
    if len(events) == 0:
        return out
    t = events["t"]
    keep = (t >= t_start) & (t < t_end)
    ev = events[keep] if not keep.all() else events
    if len(ev) == 0:
        return out
    x, y = scale_coords(ev["x"], ev["y"], sensor_w, sensor_h, model_w, model_h)
    b = ((ev["t"] - t_start) * time_bins) // max(1, t_end - t_start)
    b = np.clip(b, 0, time_bins - 1)
    ch = 2 * b + ev["p"].astype(np.int64)
    flat = (ch * model_h + y) * model_w + x
    counts = np.bincount(flat, minlength=out.size)
    out.reshape(-1)[:] = counts[: out.size]
    return out


def patch_counts(hist: np.ndarray, patch: int) -> np.ndarray:
    """Sum a ``(C, H, W)`` histogram into a ``(H/patch, W/patch)`` per-patch count grid."""
    c, h, w = hist.shape
    return hist.reshape(c, h // patch, patch, w // patch, patch).sum(axis=(0, 2, 4))


#: table entry of an out-of-sensor coordinate: makes the bin negative
OUTSIDE = -(1 << 30)
_TABLES: dict = {}           # bin_tables, by (encoding, sensor w, h, model w, h)


class BinTables(NamedTuple):
    """Two look-up tables whose sum is an event's channel-less bin ``p*mh*mw + ym*mw + xm`` on the
    model grid (int32; :data:`OUTSIDE` for a coordinate outside the sensor): indexed by a mono
    word's (x, y | p << 15) halves, or by an evt3 event's (y, x | p << 11)."""

    a: np.ndarray
    b: np.ndarray


def bin_tables(enc: str, w: int, h: int, mw: int, mh: int) -> BinTables:
    """The read-only look-up tables of an encoding and sensor size (cached, shared)."""
    key = (enc, w, h, mw, mh)
    lut = _TABLES.get(key)
    if lut is None:
        if enc == "mono":
            x = np.arange(1 << 16)
            y, p = x & 0x7FFF, x >> 15
            lx = np.where(x < w, scale_coords(x, x, w, w, mw, mw)[0], OUTSIDE)
            ly = np.where(y < h, scale_coords(y, y, h, h, mh, mh)[0] * mw + p * mh * mw, OUTSIDE)
            lut = BinTables(lx.astype(np.int32), ly.astype(np.int32))
        else:
            y, v = np.arange(1 << 11), np.arange(1 << 12)
            x, p = v & 0x7FF, v >> 11
            ly = np.where(y < h, scale_coords(y, y, h, h, mh, mh)[0] * mw, OUTSIDE)
            lx = np.where(x < w, scale_coords(x, x, w, w, mw, mw)[0] + p * mh * mw, OUTSIDE)
            lut = BinTables(ly.astype(np.int32), lx.astype(np.int32))
        for a in lut:
            a.flags.writeable = False
        if len(_TABLES) >= 32:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = lut
    return lut
