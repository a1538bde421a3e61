"""Exact summary statistics of event streams (JSON-safe Python ints).

* :func:`event_stats` -- stats of an iterable of event-array chunks;
* :func:`stats_path` -- stats of a recording on disk: a ROS 2 bag (directory,
  its ``metadata.yaml``, ``.db3`` or ``.mcap``), an AEDAT 3.1 file
  (``.aedat``, read by :func:`edge_vlm.io.formats.aedat31.read_aedat31`) or any other
  file :func:`edge_vlm.io.formats.detect.read_events` reads (AEDAT 2.0/4.0, Prophesee
  RAW/DAT, RPG ``events.txt``; ``source`` names the format).

All sums are exact integers (no floats); ``t`` sums are split into high and
low 32-bit halves so int64 accumulators can never overflow.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from edge_vlm.io.bag_reader import event_stream
from edge_vlm.io.formats.aedat31 import read_aedat31
from edge_vlm.io.formats.detect import read_events

__all__ = ["STATS_KEYS", "event_stats", "stats_path"]

#: keys always present in a stats dict (extras may follow)
STATS_KEYS: tuple[str, ...] = ("events", "on", "off", "sum_x", "sum_y", "t_first_ns",
                               "t_last_ns", "width", "height", "encoding")


def _exact_sum_t(t: np.ndarray) -> int:
    """Exact sum of int64 nanosecond times as a Python int."""
    t = t.astype(np.int64, copy=False)
    return (int((t >> 32).sum()) << 32) + int((t & 0xFFFFFFFF).sum())


def event_stats(chunks: Iterable[np.ndarray], width: int, height: int,
                encoding: str) -> dict[str, Any]:
    """Stats of a stream given as event arrays (``EVENT_DTYPE``), in order.

    Keys: :data:`STATS_KEYS` plus ``sum_t_ns`` and ``packets`` (number of
    chunks).  ``t_first_ns``/``t_last_ns`` are the times of the first and
    last event in stream order (None without events).
    """
    n = on = sx = sy = st = packets = 0
    t_first: int | None = None
    t_last: int | None = None
    for ev in chunks:
        packets += 1
        if len(ev) == 0:
            continue
        n += len(ev)
        on += int(np.count_nonzero(ev["p"]))
        sx += int(ev["x"].sum(dtype=np.int64))
        sy += int(ev["y"].sum(dtype=np.int64))
        st += _exact_sum_t(ev["t"])
        if t_first is None:
            t_first = int(ev["t"][0])
        t_last = int(ev["t"][-1])
    return {"events": n, "on": on, "off": n - on, "sum_x": sx, "sum_y": sy,
            "t_first_ns": t_first, "t_last_ns": t_last, "width": int(width),
            "height": int(height), "encoding": str(encoding),
            "sum_t_ns": st, "packets": packets}


def _stats_aedat(path: str) -> dict[str, Any]:
    """AEDAT 3.1 (:func:`~edge_vlm.io.formats.aedat31.read_aedat31`), as a 128x128 sensor."""
    events, _ = read_aedat31(path)
    out = event_stats([events], 128, 128, "aedat3.1")
    out["source"] = "aedat3.1"
    return out


def _other_format(p: str) -> bool:
    """True for an event file that is neither a bag nor AEDAT 3.1 (see edge_vlm.io.formats)."""
    if not os.path.isfile(p) or p.lower().endswith((".db3", ".mcap", ".yaml")):
        return False
    with open(p, "rb") as f:
        head = f.read(12)
    if p.lower().endswith(".aedat"):
        return head.startswith((b"#!AER-DAT2", b"#!AER-DAT4"))
    return True


def _stats_file(p: str) -> dict[str, Any]:
    """Other formats: AEDAT 2.0/4.0, Prophesee RAW/DAT, RPG events.txt."""
    events, info = read_events(p)
    out = event_stats([events], int(info["width"]), int(info["height"]), str(info["encoding"]))
    out["source"] = str(info["format"])
    for k in ("triggers_rising", "triggers_falling"):
        if k in info:
            out[k] = int(info[k])
    return out


def stats_path(path: str | os.PathLike, topic: str | None = None) -> dict[str, Any]:
    """Stats of a recording: a ROS 2 bag, an ``.aedat`` (3.1) file or any other event file.

    For a bag, the EventPacket topic ``topic`` (default: the first one, sorted)
    is decoded packet by packet with one stateful decoder; width, height and
    encoding come from the first packet.  Extras: ``topic``, ``sum_t_ns``,
    ``packets`` and, for evt3, ``triggers_rising``/``triggers_falling``.
    Raises :class:`edge_vlm.io.bag_reader.BagError` for an unreadable bag and
    :class:`~edge_vlm.events.EventDecodeError` for undecodable data (e.g. an
    unsupported encoding).
    """
    p = os.fspath(path)
    if _other_format(p):
        return _stats_file(p)
    if p.lower().endswith(".aedat"):
        return _stats_aedat(p)
    stream = event_stream(p, topic)
    out = event_stats(stream.chunks, stream.width, stream.height, stream.encoding)
    out["topic"] = stream.topic
    if hasattr(stream.decoder, "triggers_rising"):
        out["triggers_rising"] = int(stream.decoder.triggers_rising)
        out["triggers_falling"] = int(stream.decoder.triggers_falling)
    return out
