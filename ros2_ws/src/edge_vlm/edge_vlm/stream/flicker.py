"""The anti-flicker rule of the decode + bin path (parameter ``flicker_min_flips``).

A pixel of the model grid whose events change polarity at least ``min_flips`` times inside one
frame is flicker (mains-powered lighting at 100 / 120 Hz: ~6 flips in a 33 ms frame; a moving
edge: 0 to 2), and all its events of that frame are left out of the frame's histogram (and of
its event count). Flips are counted between consecutive events of the pixel in arrival order
(packets sorted by time, as the binner bins them), across the packets of the frame; nothing is
carried from one frame to the next. ``min_flips`` = 0: off.

:func:`flicker_keep` is the rule for the numpy paths (FrameBinner's numpy backend,
:func:`~edge_vlm.stream.frames.frame_histogram` of a frame's events); ``_native/evbin.c``
(``close_frame``) is the same rule in C, tested equal (tests/test_flicker.py).
"""
from __future__ import annotations

import numpy as np

__all__ = ["flicker_keep", "MAX_MIN_FLIPS"]

#: the largest ``min_flips`` (evbin.c counts flips in 6 bits, saturating)
MAX_MIN_FLIPS = 63


def flicker_keep(frame: np.ndarray | None, c: np.ndarray, plane: int,
                 min_flips: int) -> np.ndarray | None:
    """Which events a flicker filter keeps: a bool mask over the events, or None (all kept).

    ``c``: channel-less bins ``p * plane + pixel`` (``plane`` = model height x width), in
    arrival order; ``frame``: each event's frame (any integers, equal within a frame), or None
    when they are all of one frame. ``min_flips`` <= 0: None (off)."""
    if min_flips <= 0 or c.size <= min_flips:
        return None
    c = np.asarray(c, dtype=np.int64)
    key = c % plane
    if frame is not None:
        f = np.asarray(frame, dtype=np.int64)
        key = (f - f.min()) * plane + key
    order = np.argsort(key, kind="stable")          # by pixel (and frame), arrival order kept
    ks = key[order]
    pol = c[order] >= plane
    flip = (ks[1:] == ks[:-1]) & (pol[1:] != pol[:-1])
    # events i..j-1 of a run share a key: its flips are those between i and j-1
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    cum = np.r_[0, np.cumsum(flip)]
    ends = np.r_[starts[1:], ks.size]
    flips = cum[ends - 1] - cum[starts]
    bad = flips >= min_flips
    if not bad.any():
        return None
    keep = np.ones(c.size, dtype=bool)
    keep[order] = ~np.repeat(bad, ends - starts)
    return keep
