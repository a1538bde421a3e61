"""The one in-memory event layout of the project.

Events are a numpy structured array of :data:`EVENT_DTYPE`:

* ``t`` int64  -- absolute sensor time in **nanoseconds** (ns keeps EventPacket
  precision; int64 ns spans 292 years, so no wrap handling is ever needed);
* ``x`` uint16 -- column, 0 = left;
* ``y`` uint16 -- row, 0 = top;
* ``p`` uint8  -- polarity, 1 = ON (brighter), 0 = OFF.

Itemsize is padded to 16 bytes so field access stays aligned and fast.
"""
from __future__ import annotations

import numpy as np

EVENT_DTYPE = np.dtype(
    {"names": ["t", "x", "y", "p"], "formats": ["<i8", "<u2", "<u2", "u1"],
     "offsets": [0, 8, 10, 12], "itemsize": 16}
)


class EventDecodeError(ValueError):
    """Raised by every decoder/reader on malformed input (never a crash)."""


def empty_events(n: int = 0) -> np.ndarray:
    """Return a zero-filled event array of length ``n``."""
    return np.zeros(n, dtype=EVENT_DTYPE)


def make_events(t, x, y, p) -> np.ndarray:
    """Build an event array from four equally long array-likes."""
    t = np.asarray(t)
    ev = np.empty(t.shape[0], dtype=EVENT_DTYPE)
    ev["t"] = t
    ev["x"] = x
    ev["y"] = y
    ev["p"] = p
    return ev


def concat_events(chunks) -> np.ndarray:
    """Concatenate event arrays (an empty list gives an empty array)."""
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return empty_events()
    return np.concatenate(chunks).astype(EVENT_DTYPE, copy=False)


def check_coordinates(x_max: int, y_max: int, width: int, height: int, what: str = "") -> None:
    """The one coordinate rule of the project: raise :class:`EventDecodeError` when the sensor
    size is not positive or the largest column / row (``x_max``, ``y_max``; -1 for no events)
    falls outside it. ``what`` prefixes the message (e.g. ``"mono: "``)."""
    if width <= 0 or height <= 0:
        raise EventDecodeError(f"{what}invalid sensor size {width}x{height}")
    if x_max >= width or y_max >= height:
        raise EventDecodeError(f"{what}event coordinates outside sensor {width}x{height} "
                               f"(max x={x_max}, max y={y_max})")


def check_in_sensor(ev: np.ndarray, width: int, height: int, what: str = "") -> None:
    """:func:`check_coordinates` of an event array."""
    if len(ev):
        check_coordinates(int(ev["x"].max()), int(ev["y"].max()), width, height, what)
    else:
        check_coordinates(-1, -1, width, height, what)
