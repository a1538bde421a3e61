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


#: largest sensor width / height: coordinates are uint16 (0..65535)
MAX_SENSOR_SIDE = 1 << 16


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


def _num(v: int | None) -> str:
    return "?" if v is None else str(v)


def _size(width: int | None, height: int | None) -> str:
    return f"{_num(width)}x{_num(height)}"


def check_coordinates(x_max: int | None, y_max: int | None, width: int | None,
                      height: int | None, what: str = "") -> None:
    """The one coordinate rule of the project: raise :class:`EventDecodeError` when a sensor
    side is not in 1..:data:`MAX_SENSOR_SIDE` or the largest column / row (``x_max``,
    ``y_max``; -1 for no events) falls outside it. A ``width`` / ``height`` of None leaves that
    axis unchecked (its maximum may then be None too). ``what`` prefixes the message (e.g.
    ``"mono: "``)."""
    if ((width is not None and not 0 < width <= MAX_SENSOR_SIDE)
            or (height is not None and not 0 < height <= MAX_SENSOR_SIDE)):
        raise EventDecodeError(f"{what}invalid sensor size {_size(width, height)}")
    if (width is not None and x_max >= width) or (height is not None and y_max >= height):
        raise EventDecodeError(f"{what}event coordinates outside sensor {_size(width, height)} "
                               f"(max x={_num(x_max)}, max y={_num(y_max)})")


def check_xy(x: np.ndarray, y: np.ndarray, width: int | None, height: int | None,
             what: str = "") -> None:
    """:func:`check_coordinates` of coordinate arrays (an axis' maximum is taken only when
    that axis is checked)."""
    x_max = (int(x.max()) if x.size else -1) if width is not None else None
    y_max = (int(y.max()) if y.size else -1) if height is not None else None
    check_coordinates(x_max, y_max, width, height, what)


def check_in_sensor(ev: np.ndarray, width: int | None, height: int | None,
                    what: str = "") -> None:
    """:func:`check_coordinates` of an event array."""
    check_xy(ev["x"], ev["y"], width, height, what)
