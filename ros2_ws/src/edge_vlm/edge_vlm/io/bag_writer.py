"""Write ROS 2 bags (rosbag2: sqlite3 or mcap) from events, frames and ground truth.

Core library: uses ``rosbags`` only, never rclpy.  The bags carry rosbag2
metadata (version 9, type description hashes, offered QoS per the design card)
so that both ``rosbags`` and a real ROS 2 install (``ros2 bag play``) read them.

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

import heapq
import importlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError

__all__ = [
    "write_bag",
    "DEFAULT_FRAME_PERIOD_NS",
    "EVENTS_TYPE",
    "IMAGE_TYPE",
    "STRING_TYPE",
    "qos_sensor_data",
    "qos_reliable",
]

EVENTS_TYPE = "event_camera_msgs/msg/EventPacket"
IMAGE_TYPE = "sensor_msgs/msg/Image"
STRING_TYPE = "std_msgs/msg/String"
DEFAULT_FRAME_PERIOD_NS = 33_333_333

# The definition of ros2_ws/src/event_camera_msgs/msg/EventPacket.msg (used only
# when edge_vlm.bag is not importable).  Type hash:
# RIHS01_d6fa176260b1f37e5a40845305315e150a0f18191241eb64f407442aa29844aa
_EVENT_PACKET_MSG = """\
std_msgs/Header header
uint32 height
uint32 width
uint64 seq
uint64 time_base
string encoding
bool is_bigendian
uint8[] events
"""


# --------------------------------------------------------------------------- types
def _typestore():
    """The project's typestore (``edge_vlm.bag.typestore()``), else a local one."""
    try:
        from edge_vlm.io.bag_reader import typestore  # type: ignore[attr-defined]
    except ImportError:
        return _fallback_typestore()
    return typestore()


_FALLBACK = None


def _fallback_typestore():
    global _FALLBACK
    if _FALLBACK is None:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        ts = get_typestore(Stores.ROS2_KILTED)
        ts.register(get_types_from_msg(_EVENT_PACKET_MSG, EVENTS_TYPE))
        _FALLBACK = ts
    return _FALLBACK


def _qos(reliable: bool, depth: int):
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    zero = QosTime(0, 0)  # 0 = "default" = infinite, as rosbag2 treats it
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


def qos_sensor_data():
    """Offered QoS recorded for events/images: best effort, keep last 100 (design.md)."""
    return _qos(False, 100)


def qos_reliable(depth: int = 50):
    """Offered QoS recorded for ground truth: reliable, keep last ``depth``."""
    return _qos(True, depth)


# --------------------------------------------------------------------------- helpers
def _time(ts, ns: int):
    ns = int(ns)
    if ns < 0:
        raise ValueError(f"negative ROS time {ns} ns")
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(ts, ns: int, frame_id: str):
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=_time(ts, ns), frame_id=frame_id)


def _encoder(encoding: str):
    """``encode_<encoding>(events, time_base) -> bytes`` from ``edge_vlm.codecs``."""
    try:
        mod = importlib.import_module(f"{__package__}.codecs.{encoding}")
        return getattr(mod, f"encode_{encoding}")
    except (ImportError, AttributeError):
        raise ValueError(f"no encoder for EventPacket encoding {encoding!r} "
                         f"(edge_vlm.codecs.{encoding}.encode_{encoding})") from None


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


def _event_packets(ts, events, *, width, height, encoding, packet_ns, frame_id, conn):
    ev = _as_events(events)
    if len(ev) == 0:
        return
    if int(ev["t"][0]) < 0:
        raise EventDecodeError("events with negative time cannot be written to a bag")
    encode = _encoder(encoding)
    EventPacket = ts.types[EVENTS_TYPE]
    t = ev["t"]
    k0 = int(t[0]) // packet_ns
    k1 = int(t[-1]) // packet_ns
    starts = np.arange(k0, k1 + 2, dtype=np.int64) * np.int64(packet_ns)
    bounds = np.searchsorted(t, starts, side="left")
    for seq, k in enumerate(range(k0, k1 + 1)):
        start = k * packet_ns
        end = start + packet_ns
        chunk = ev[bounds[seq]:bounds[seq + 1]]
        payload = encode(chunk, start) if len(chunk) else b""
        msg = EventPacket(
            header=_header(ts, end, frame_id),
            height=int(height), width=int(width), seq=seq, time_base=start,
            encoding=encoding, is_bigendian=False,
            events=np.frombuffer(payload, dtype=np.uint8),
        )
        yield end, conn, ts.serialize_cdr(msg, EVENTS_TYPE)


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


def _frame_msgs(ts, frames, stamps, *, frame_id, conn):
    Image = ts.types[IMAGE_TYPE]
    items = sorted(zip((int(s) for s in stamps), range(len(stamps))))
    for stamp, i in items:
        img = _rgb8(frames[i])
        h, w = img.shape[:2]
        msg = Image(header=_header(ts, stamp, frame_id), height=h, width=w, encoding="rgb8",
                    is_bigendian=0, step=w * 3, data=img.reshape(-1))
        yield stamp, conn, ts.serialize_cdr(msg, IMAGE_TYPE)


def _gt_msgs(ts, ground_truth, *, conn):
    String = ts.types[STRING_TYPE]
    items = []
    for i, seg in enumerate(ground_truth):
        if not isinstance(seg, dict) or "t_start_ns" not in seg:
            raise ValueError(f"ground_truth[{i}] must be a dict with 't_start_ns'")
        items.append((int(seg["t_start_ns"]), i, seg))
    items.sort(key=lambda it: (it[0], it[1]))
    for t0, _, seg in items:
        text = json.dumps(seg, sort_keys=False, ensure_ascii=False, default=_json_default)
        yield t0, conn, ts.serialize_cdr(String(data=text), STRING_TYPE)


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
    events_topic: str = "/event_camera/events",
    image_topic: str = "/camera/image_raw",
    gt_topic: str = "/edge_vlm/ground_truth",
    frame_id: str = "dvs128",
    overwrite: bool = False,
) -> Path:
    """Write a rosbag2 folder at ``path`` and return it as a :class:`Path`.

    ``events``: :data:`~edge_vlm.events.EVENT_DTYPE` array (absolute sensor time
    in ns; sorted here if needed), cut into EventPacket messages every
    ``packet_ns`` of sensor time and encoded with
    ``edge_vlm.codecs.<encoding>.encode_<encoding>(events, time_base)``.
    ``frames``: HxWx3 uint8 images written as ``rgb8`` sensor_msgs/Image at
    ``frame_stamps_ns`` (default: the ends of consecutive 30 fps frame periods
    on the absolute grid, starting with the period holding the first event).
    ``ground_truth``: list of dicts (design.md format), each written as a JSON
    std_msgs/String at its ``t_start_ns``.
    ``storage``: ``"sqlite3"`` or ``"mcap"``.  ``overwrite`` removes an existing
    bag folder at ``path`` first (otherwise an existing path is an error).
    Topics without data get no connection.  Messages are written in bag-time
    order.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
    if storage not in plugins:
        raise ValueError(f"storage must be 'sqlite3' or 'mcap', not {storage!r}")
    packet_ns = int(packet_ns)
    if not 0 < packet_ns <= 0xFFFFFFFF:
        raise ValueError(f"packet_ns must be in (0, 2**32) ns, got {packet_ns}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"invalid sensor size {width}x{height}")
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"bag path {path} exists (pass overwrite=True)")
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    ts = _typestore()
    have_events = events is not None and len(events) > 0
    frames = list(frames) if frames is not None else []
    if frames:
        if frame_stamps_ns is None:
            first = int(np.min(np.asarray(events)["t"])) if have_events else 0
            k0 = first // DEFAULT_FRAME_PERIOD_NS
            frame_stamps_ns = [(k0 + i + 1) * DEFAULT_FRAME_PERIOD_NS for i in range(len(frames))]
        frame_stamps_ns = [int(s) for s in frame_stamps_ns]
        if len(frame_stamps_ns) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(frame_stamps_ns)} frame stamps")
    gt = list(ground_truth) if ground_truth is not None else []

    with Writer(path, version=9, storage_plugin=plugins[storage]) as writer:
        streams: list[Iterator] = []
        if have_events:
            conn = writer.add_connection(events_topic, EVENTS_TYPE, typestore=ts,
                                         offered_qos_profiles=[qos_sensor_data()])
            streams.append(_event_packets(ts, events, width=width, height=height,
                                          encoding=encoding, packet_ns=packet_ns,
                                          frame_id=frame_id, conn=conn))
        if frames:
            conn = writer.add_connection(image_topic, IMAGE_TYPE, typestore=ts,
                                         offered_qos_profiles=[qos_sensor_data()])
            streams.append(_frame_msgs(ts, frames, frame_stamps_ns, frame_id=frame_id, conn=conn))
        if gt:
            conn = writer.add_connection(gt_topic, STRING_TYPE, typestore=ts,
                                         offered_qos_profiles=[qos_reliable(50)])
            streams.insert(0, _gt_msgs(ts, gt, conn=conn))
        # Each stream is time ordered; merge keeps ties in stream order
        # (ground truth first, then events, then frames).
        for stamp, conn, data in heapq.merge(*streams, key=lambda m: m[0]):
            writer.write(conn, stamp, data)
    return path
