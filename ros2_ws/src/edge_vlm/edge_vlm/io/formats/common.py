"""What every event file reader shares: its result type, the sensor-size rule, u32 unwrapping."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from edge_vlm.events import check_in_sensor

__all__ = ["ReadResult", "HeaderLines", "SensorSize", "sensor_size", "unwrap_u32"]


class ReadResult(NamedTuple):
    """What a reader returns (``ev, info = read_...(path)`` unpacks it)."""

    events: np.ndarray            # EVENT_DTYPE, file order, t in ns
    info: dict[str, Any]          # JSON-safe facts about the file (format, width, height, ...)


class HeaderLines(NamedTuple):
    """The text header of a file."""

    lines: list[str]              # each without its line end
    offset: int                   # where the data starts


class SensorSize(NamedTuple):
    """Sensor size of a file and where it came from."""

    width: int
    height: int
    source: str                   # "header" (checked against the events) or "inferred"


def sensor_size(ev: np.ndarray, width: int | None, height: int | None,
                what: str) -> SensorSize:
    """The size a file's header gives (every event must lie inside it, else
    :class:`~edge_vlm.events.EventDecodeError` prefixed ``what``), or, when the header gives
    none, the smallest size holding the events (1x1 without events)."""
    if width is None or height is None:
        width = int(ev["x"].max()) + 1 if ev.size else 1
        height = int(ev["y"].max()) + 1 if ev.size else 1
        return SensorSize(width, height, "inferred")
    check_in_sensor(ev, width, height, what)
    return SensorSize(width, height, "header")


def unwrap_u32(ts: np.ndarray) -> np.ndarray:
    """uint32 timestamps -> int64, adding 2**32 at every backward jump > 2**31."""
    t = ts.astype(np.int64)
    if t.size > 1:
        wraps = np.cumsum(np.diff(t) < -(1 << 31))
        if wraps.size and wraps[-1]:
            t[1:] += wraps << 32
    return t
