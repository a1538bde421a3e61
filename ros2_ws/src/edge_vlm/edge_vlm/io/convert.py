"""Any readable event recording -> a ROS 2 bag (``edge-vlm convert``).

The input is anything :func:`edge_vlm.io.formats.detect.read_events` reads (AEDAT 2.0 / 3.1 /
4.0, Prophesee RAW EVT 2.0/3.0 and DAT, RPG ``events.txt``, another bag). Events are written
as ``mono`` EventPackets cut every ``packet_ms`` of sensor time
(:func:`edge_vlm.io.bag_writer.write_bag`); the sensor size is kept (``width``/``height``
override it). Ground-truth objects given by the caller (DvsGesture labels: see
:func:`edge_vlm.datasets.dvs128_gesture.gesture_ground_truth`) go to
``/edge_vlm/ground_truth``.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_vlm.events import check_in_sensor
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.io.formats.detect import read_events

#: longest EventPacket (mono offsets are 32-bit ns)
MAX_PACKET_NS = 4_000_000_000


@dataclass
class Conversion:
    """What :func:`convert_file` wrote."""

    input: str
    output: str
    format: str
    events: int
    width: int
    height: int
    ground_truth: int
    storage: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def packet_ns_of(packet_ms: float) -> int:
    """An EventPacket length given in ms (``--packet-ms``) as ns; ValueError unless it is in
    (0, 4000] ms (mono offsets are 32-bit ns)."""
    packet_ns = int(round(packet_ms * 1e6)) if math.isfinite(packet_ms) else 0
    if not 0 < packet_ns <= MAX_PACKET_NS:
        raise ValueError(f"--packet-ms must be in (0, 4000] (mono offsets are 32-bit ns), got "
                         f"{packet_ms:g}")
    return packet_ns


def convert_file(inp: str | os.PathLike, out: str | os.PathLike, *, storage: str = "sqlite3",
                 packet_ms: float = 2.0, width: int | None = None, height: int | None = None,
                 camera: str | None = None, overwrite: bool = False,
                 ground_truth: list[dict] | None = None) -> Conversion:
    """Convert one recording. Raises EventDecodeError (unreadable input, events outside the
    sensor), ValueError (bad packet length) or OSError."""
    packet_ns = packet_ns_of(packet_ms)
    ev, info = read_events(inp, camera=camera)
    w = int(width if width is not None else info["width"])
    h = int(height if height is not None else info["height"])
    check_in_sensor(ev, w, h)
    if ev.size > 1 and np.any(np.diff(ev["t"]) < 0):
        ev = ev[np.argsort(ev["t"], kind="stable")]
    gt = list(ground_truth or [])
    write_bag(out, events=ev, width=w, height=h, encoding="mono", packet_ns=packet_ns,
              ground_truth=gt, storage=storage, overwrite=overwrite)
    return Conversion(os.fspath(inp), os.fspath(out), info["format"], int(ev.size), w, h,
                      len(gt), storage)
