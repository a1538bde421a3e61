"""Write ROS 2 bags (rosbag2: sqlite3 or mcap) from events, frames and ground truth.

Core library: uses ``rosbags`` only, never rclpy.  The bags carry rosbag2
metadata (version 9, type description hashes, the offered QoS of
:func:`edge_vlm.topics.qos_of`) so that both ``rosbags`` and a real ROS 2
install (``ros2 bag play``) read them.

Layout of a written bag (topics are arguments):

* ``/event_camera/events`` -- ``event_camera_msgs/msg/EventPacket``.  The event
  stream is cut on the absolute sensor-time grid ``[k*packet_ns, (k+1)*packet_ns)``
  from the packet holding the first event to the packet holding the last one
  (empty packets in between are written too, so time keeps flowing for
  subscribers that close frames on packet time).  ``seq`` counts from 0,
  ``time_base`` = packet start (ns), ``header.stamp`` = packet end, bag time =
  packet end.
* ``/camera/image_raw`` -- ``sensor_msgs/msg/Image`` ``rgb8``, stamp = bag time
  = the frame's stamp.
* ``/edge_vlm/ground_truth`` -- ``std_msgs/msg/String`` holding one JSON
  object per segment, stamped and written at its ``t_start_ns``.
"""
from __future__ import annotations

import errno
import heapq
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer

from edge_vlm.events import EVENT_DTYPE, EventDecodeError, check_coordinates
from edge_vlm.io.bag_reader import typestore
from edge_vlm.io.codecs import make_encoder
from edge_vlm.topics import TOPICS, QosSpec, qos_of
from edge_vlm.io.packets import packet_grid

__all__ = [
    "write_bag",
    "BagExistsError",
    "DEFAULT_FRAME_PERIOD_NS",
    "EVENTS_TYPE",
    "IMAGE_TYPE",
    "STRING_TYPE",
]

EVENTS_TYPE = TOPICS["events"].msgtype
IMAGE_TYPE = TOPICS["image"].msgtype
STRING_TYPE = TOPICS["ground_truth"].msgtype
DEFAULT_FRAME_PERIOD_NS = 33_333_333
_STORAGE = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


class BagExistsError(FileExistsError):
    """The output bag path exists and ``overwrite`` is off (``filename``: the path)."""


# --------------------------------------------------------------------------- QoS

def offered_qos(topic: str, msgtype: str) -> Qos:
    """The offered QoS recorded for ``topic`` (:func:`edge_vlm.topics.qos_of`) as rosbags
    metadata: keep last, volatile, automatic liveliness, default (infinite) durations."""
    spec: QosSpec = qos_of(topic, msgtype)
    zero = QosTime(0, 0)  # 0 = "default" = infinite, as rosbag2 treats it
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=spec.depth,
        reliability=QosReliability.RELIABLE if spec.reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


# --------------------------------------------------------------------------- helpers
class _BagMessage(NamedTuple):
    """One serialized message of a stream, in bag-time order."""

    stamp: int        # bag time, ns
    conn: Any         # the rosbags connection of its topic
    data: bytes       # CDR


def _time(ts, ns: int):
    ns = int(ns)
    if ns < 0:
        raise ValueError(f"negative ROS time {ns} ns")
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(ts, ns: int, frame_id: str):
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=_time(ts, ns), frame_id=frame_id)


def _as_events(events) -> np.ndarray:
    ev = np.asarray(events)
    if ev.dtype != EVENT_DTYPE:
        if ev.dtype.names is None or not {"t", "x", "y", "p"} <= set(ev.dtype.names):
            raise ValueError(f"events must be an EVENT_DTYPE array, got dtype {ev.dtype}")
        conv = np.empty(ev.shape[0], dtype=EVENT_DTYPE)
        for f in ("t", "x", "y", "p"):
            conv[f] = ev[f]
        ev = conv
    if len(ev) > 1 and np.any(np.diff(ev["t"]) < 0):
        ev = ev[np.argsort(ev["t"], kind="stable")]
    return ev


def _event_packets(ts, events, *, width, height, encoding, packet_ns, frame_id,
                   conn) -> Iterator[_BagMessage]:
    ev = _as_events(events)
    if len(ev) == 0:
        return
    if int(ev["t"][0]) < 0:
        raise EventDecodeError("events with negative time cannot be written to a bag")
    encode = make_encoder(encoding)
    EventPacket = ts.types[EVENTS_TYPE]
    starts, bounds = packet_grid(ev["t"], packet_ns)
    for seq, start in enumerate(starts.tolist()):
        end = start + packet_ns
        chunk = ev[bounds[seq]:bounds[seq + 1]]
        payload = encode(chunk, start) if len(chunk) else b""
        msg = EventPacket(
            header=_header(ts, end, frame_id),
            height=int(height), width=int(width), seq=seq, time_base=start,
            encoding=encoding, is_bigendian=False,
            events=np.frombuffer(payload, dtype=np.uint8),
        )
        yield _BagMessage(end, conn, ts.serialize_cdr(msg, EVENTS_TYPE))


def _rgb8(frame) -> np.ndarray:
    a = np.asarray(frame)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"frame must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.shape[2] == 4:
        a = a[:, :, :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and float(np.nanmax(a, initial=0.0)) <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def _frame_msgs(ts, frames, stamps, *, frame_id, conn) -> Iterator[_BagMessage]:
    Image = ts.types[IMAGE_TYPE]
    items = sorted(zip((int(s) for s in stamps), range(len(stamps))))
    for stamp, i in items:
        img = _rgb8(frames[i])
        h, w = img.shape[:2]
        msg = Image(header=_header(ts, stamp, frame_id), height=h, width=w, encoding="rgb8",
                    is_bigendian=0, step=w * 3, data=img.reshape(-1))
        yield _BagMessage(stamp, conn, ts.serialize_cdr(msg, IMAGE_TYPE))


def _gt_msgs(ts, ground_truth, *, conn) -> Iterator[_BagMessage]:
    String = ts.types[STRING_TYPE]
    items = []
    for i, seg in enumerate(ground_truth):
        if not isinstance(seg, dict) or "t_start_ns" not in seg:
            raise ValueError(f"ground_truth[{i}] must be a dict with 't_start_ns'")
        items.append((int(seg["t_start_ns"]), i, seg))
    items.sort(key=lambda it: (it[0], it[1]))
    for t0, _, seg in items:
        text = json.dumps(seg, sort_keys=False, ensure_ascii=False, default=_json_default)
        yield _BagMessage(t0, conn, ts.serialize_cdr(String(data=text), STRING_TYPE))


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# --------------------------------------------------------------------------- API
def write_bag(
    path,
    *,
    events: np.ndarray | None = None,
    width: int = 128,
    height: int = 128,
    encoding: str = "mono",
    packet_ns: int = 2_000_000,
    frames: Sequence[np.ndarray] | None = None,
    frame_stamps_ns: Sequence[int] | None = None,
    ground_truth: Iterable[dict] | None = None,
    storage: str = "sqlite3",
    events_topic: str = "/" + TOPICS["events"].name,
    image_topic: str = "/" + TOPICS["image"].name,
    gt_topic: str = "/" + TOPICS["ground_truth"].name,
    frame_id: str = "dvs128",
    overwrite: bool = False,
) -> Path:
    """Write a rosbag2 folder at ``path`` and return it as a :class:`Path`.

    ``events``: :data:`~edge_vlm.events.EVENT_DTYPE` array (absolute sensor time
    in ns; sorted here if needed), cut into EventPacket messages every
    ``packet_ns`` of sensor time and encoded with the ``encoding``'s encoder
    (:func:`edge_vlm.io.codecs.make_encoder`).
    ``frames``: HxWx3 uint8 images written as ``rgb8`` sensor_msgs/Image at
    ``frame_stamps_ns`` (default: the ends of consecutive 30 fps frame periods
    on the absolute grid, starting with the period holding the first event).
    ``ground_truth``: list of dicts (design.md format), each written as a JSON
    std_msgs/String at its ``t_start_ns``.
    ``storage``: ``"sqlite3"`` or ``"mcap"``.  ``overwrite`` removes an existing
    bag folder at ``path`` first (otherwise an existing path is an error).
    Topics without data get no connection; each gets the offered QoS of
    :func:`edge_vlm.topics.qos_of`.  Messages are written in bag-time order.
    """
    packet_ns = _check_args(storage, packet_ns, width, height)
    path = _clear(Path(path), overwrite)
    ts = typestore()
    have_events = events is not None and len(events) > 0
    frames = list(frames) if frames is not None else []
    stamps = _frame_stamps(len(frames), frame_stamps_ns, events if have_events else None)
    gt = list(ground_truth) if ground_truth is not None else []

    with Writer(path, version=9, storage_plugin=_STORAGE[storage]) as writer:
        streams: list[Iterator[_BagMessage]] = []
        if have_events:
            conn = _connect(writer, ts, events_topic, EVENTS_TYPE)
            streams.append(_event_packets(ts, events, width=width, height=height,
                                          encoding=encoding, packet_ns=packet_ns,
                                          frame_id=frame_id, conn=conn))
        if frames:
            conn = _connect(writer, ts, image_topic, IMAGE_TYPE)
            streams.append(_frame_msgs(ts, frames, stamps, frame_id=frame_id, conn=conn))
        if gt:
            conn = _connect(writer, ts, gt_topic, STRING_TYPE)
            streams.insert(0, _gt_msgs(ts, gt, conn=conn))
        # Each stream is time ordered; merge keeps ties in stream order
        # (ground truth first, then events, then frames).
        for msg in heapq.merge(*streams, key=lambda m: m.stamp):
            writer.write(msg.conn, msg.stamp, msg.data)
    return path


def _check_args(storage: str, packet_ns: int, width: int, height: int) -> int:
    """Validate the storage, packet length (returned as int) and sensor size."""
    if storage not in _STORAGE:
        raise ValueError(f"storage must be 'sqlite3' or 'mcap', not {storage!r}")
    packet_ns = int(packet_ns)
    if not 0 < packet_ns <= 0xFFFFFFFF:
        raise ValueError(f"packet_ns must be in (0, 2**32) ns, got {packet_ns}")
    check_coordinates(-1, -1, int(width), int(height))
    return packet_ns


def _clear(path: Path, overwrite: bool) -> Path:
    """``path``, after removing what is there when ``overwrite`` (else that is an error)."""
    if path.exists():
        if not overwrite:
            raise BagExistsError(errno.EEXIST, "bag path exists (pass overwrite=True)",
                                 str(path))
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


def _frame_stamps(n_frames: int, stamps: Sequence[int] | None,
                  events: np.ndarray | None) -> list[int]:
    """The stamps of ``n_frames`` frames: ``stamps`` (checked), else the ends of consecutive
    frame periods from the one holding the first event (or time 0 without events)."""
    if not n_frames:
        return []
    if stamps is None:
        first = int(np.min(np.asarray(events)["t"])) if events is not None else 0
        k0 = first // DEFAULT_FRAME_PERIOD_NS
        stamps = [(k0 + i + 1) * DEFAULT_FRAME_PERIOD_NS for i in range(n_frames)]
    stamps = [int(s) for s in stamps]
    if len(stamps) != n_frames:
        raise ValueError(f"{n_frames} frames but {len(stamps)} frame stamps")
    return stamps


def _connect(writer: Writer, ts, topic: str, msgtype: str):
    """Add the connection of ``topic`` with its offered QoS."""
    return writer.add_connection(topic, msgtype, typestore=ts,
                                 offered_qos_profiles=[offered_qos(topic, msgtype)])
