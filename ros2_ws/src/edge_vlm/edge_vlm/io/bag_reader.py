"""Read ROS 2 bags with ``rosbags`` (pure Python; never imports rclpy).

* :func:`typestore` -- a rosbags typestore (ROS 2 Kilted) plus this
  workspace's interface packages (``event_camera_msgs``, ``edge_vlm_msgs``)
  registered from their ``.msg`` files.
* :func:`open_reader` / :func:`iter_messages` -- raw CDR messages of a bag
  (rosbag2 directory with sqlite3 or mcap storage, its ``metadata.yaml``, or
  a single ``.db3`` / ``.mcap`` file).
* :func:`event_topics`, :func:`iter_event_packets`, :func:`iter_events`,
  :func:`event_stream` -- ``event_camera_msgs/msg/EventPacket`` topics, messages and
  decoded events.

Bags written by rosbag2 record a type description hash; rosbags needs the
type itself to deserialize, so EventPacket is always registered here (from
the workspace ``.msg`` file, or else from the definition stored in the bag).
"""
from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from edge_vlm.events import EventDecodeError
from edge_vlm.io.codecs import PacketDecoder, make_decoder
from edge_vlm.paths import WORKSPACE_SRC

try:                              # a ROS 2 install: interface packages from the ament index
    from ament_index_python.packages import get_package_share_directory
except ImportError:
    get_package_share_directory = None

__all__ = ["BagError", "EVENT_PACKET_TYPE", "MSG_PACKAGES", "typestore", "msg_dir",
           "open_reader", "iter_messages", "event_topics", "iter_event_packets",
           "iter_events", "RawMessage", "EventStream", "event_stream"]

EVENT_PACKET_TYPE = "event_camera_msgs/msg/EventPacket"
#: interface packages whose ``msg/*.msg`` files :func:`typestore` registers
MSG_PACKAGES: tuple[str, ...] = ("event_camera_msgs", "edge_vlm_msgs")
_STORAGE_SUFFIXES = (".db3", ".mcap")


class BagError(ValueError):
    """A path is not a readable ROS 2 bag."""


def msg_dir(pkg: str) -> Path | None:
    """The ``msg`` folder of interface package ``pkg``, or None if not found.

    Looks in the source tree next to this package first (``<src>/<pkg>/msg``),
    then in an installed ament index (if ``ament_index_python`` is importable).
    """
    cand = WORKSPACE_SRC / pkg / "msg"
    if cand.is_dir():
        return cand
    if get_package_share_directory is None:
        return None
    try:
        cand = Path(get_package_share_directory(pkg)) / "msg"
    except Exception:            # package not installed
        return None
    return cand if cand.is_dir() else None


@functools.lru_cache(maxsize=1)
def typestore():
    """The shared rosbags typestore: ROS 2 Kilted + workspace interfaces.

    Registers every ``msg/*.msg`` file of :data:`MSG_PACKAGES` that exists.
    Cached; call ``typestore.cache_clear()`` to pick up new ``.msg`` files.
    """
    store = getattr(Stores, "ROS2_KILTED", Stores.LATEST)
    ts = get_typestore(store)
    types: dict = {}
    for pkg in MSG_PACKAGES:
        d = msg_dir(pkg)
        if d is None:
            continue
        for f in sorted(d.glob("*.msg")):
            types.update(get_types_from_msg(f.read_text(), f"{pkg}/msg/{f.stem}"))
    ts.register(types)
    return ts


def ensure_type(ts, conn) -> None:
    """Register ``conn.msgtype`` from the definition stored in the bag if unknown."""
    if conn.msgtype in ts.types or conn.msgdef is None or not conn.msgdef.data:
        return
    fmt = getattr(conn.msgdef.format, "name", str(conn.msgdef.format))
    try:
        if fmt == "IDL":
            ts.register(get_types_from_idl(conn.msgdef.data))
        else:
            ts.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))
    except Exception as exc:       # keep going; deserialization will report it
        raise BagError(f"cannot register type {conn.msgtype!r} from the bag: {exc}") from exc


class _Reader(Reader):
    """A rosbags Reader returned already open; ``with`` works on it too."""

    def __enter__(self):
        if not self.is_open:
            self.open()
        return self


def _open(path: Path) -> _Reader:
    r = _Reader(path)
    r.open()
    return r


def open_reader(path: str | os.PathLike) -> Reader:
    """Open a bag and return an **open** rosbags ``Reader`` (close it when done;
    ``with open_reader(p) as r:`` also works).

    ``path`` may be a rosbag2 directory, its ``metadata.yaml``, or one
    ``.db3``/``.mcap`` storage file.  A directory whose metadata rosbags
    rejects (e.g. an empty ``storage_identifier``) is read through its single
    storage file.  Raises :class:`BagError` for a missing or invalid bag.
    """
    p = Path(path)
    if p.name == "metadata.yaml":
        p = p.parent
    if not p.exists():
        raise BagError(f"bag not found: {str(path)!r}")
    if p.is_file() and p.suffix not in _STORAGE_SUFFIXES:
        raise BagError(f"not a bag (expected a directory, .db3 or .mcap): {str(path)!r}")
    try:
        return _open(p)
    except Exception as exc:
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in _STORAGE_SUFFIXES)
            if len(files) == 1:
                try:
                    return _open(files[0])
                except Exception:
                    pass
        raise BagError(f"cannot open bag {str(path)!r}: {exc}") from exc


class RawMessage(NamedTuple):
    """One message of a bag, not deserialized."""

    topic: str
    msgtype: str              # ROS 2 type name (pkg/msg/Name)
    t_ns: int                 # bag time
    raw: bytes                # CDR


def iter_messages(path: str | os.PathLike,
                  topics: Iterable[str] | None = None) -> Iterator[RawMessage]:
    """Yield the messages of a bag (of ``topics`` only, when given) in bag (time) order."""
    reader = open_reader(path)
    try:
        wanted = None if topics is None else set(topics)
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield RawMessage(conn.topic, conn.msgtype, int(t_ns), bytes(raw))
    finally:
        reader.close()


def event_topics(path: str | os.PathLike) -> list[str]:
    """Sorted topics of type ``event_camera_msgs/msg/EventPacket`` in a bag."""
    reader = open_reader(path)
    try:
        return sorted({c.topic for c in reader.connections if c.msgtype == EVENT_PACKET_TYPE})
    finally:
        reader.close()


class _TopicPacket(NamedTuple):
    topic: str
    msg: object               # a deserialized EventPacket


def _iter_packets(path, topic: str | None) -> Iterator[_TopicPacket]:
    reader = open_reader(path)
    try:
        ts = typestore()
        conns = [c for c in reader.connections if c.msgtype == EVENT_PACKET_TYPE
                 and (topic is None or c.topic == topic)]
        if topic is not None and not conns:
            raise BagError(f"no {EVENT_PACKET_TYPE} topic {topic!r} in {str(path)!r}")
        for c in conns:
            ensure_type(ts, c)
        if not conns:
            return
        for conn, _, raw in reader.messages(connections=conns):
            try:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:
                raise EventDecodeError(
                    f"malformed {conn.msgtype} message on {conn.topic}: {exc}") from exc
            yield _TopicPacket(conn.topic, msg)
    finally:
        reader.close()


def iter_event_packets(path: str | os.PathLike, topic: str | None = None) -> Iterator[object]:
    """Yield deserialized EventPacket messages (every EventPacket topic by default)."""
    for packet in _iter_packets(path, topic):
        yield packet.msg


def _decode(dec: PacketDecoder, msg, topic: str, encoding: str) -> np.ndarray:
    """The events of one EventPacket of a stream whose encoding is ``encoding``."""
    if str(msg.encoding) != encoding:
        raise EventDecodeError(f"encoding changed on {topic}: {encoding!r} -> {msg.encoding!r}")
    if msg.is_bigendian:
        raise EventDecodeError(f"big-endian {encoding} payloads are not supported")
    return dec.decode(msg.events, int(msg.width), int(msg.height), int(msg.time_base))


def iter_events(path: str | os.PathLike, topic: str | None = None,
                decoders: dict[str, PacketDecoder] | None = None) -> Iterator[np.ndarray]:
    """Yield decoded event arrays, one per EventPacket, in bag order.

    One decoder per topic carries stream state (evt3) across packets.  Pass a
    dict as ``decoders`` to get them back (topic -> decoder), e.g. for the evt3
    trigger counters.  Unsupported encodings raise :class:`EventDecodeError`.
    """
    decs: dict[str, PacketDecoder] = {} if decoders is None else decoders
    encs: dict[str, str] = {}
    for top, msg in _iter_packets(path, topic):
        enc = str(msg.encoding)
        if top not in decs:
            decs[top] = make_decoder(enc)
        yield _decode(decs[top], msg, top, encs.setdefault(top, enc))


class EventStream(NamedTuple):
    """One EventPacket topic of a bag, decoded lazily packet by packet (:func:`event_stream`)."""

    topic: str
    encoding: str                   # of the first packet ("" without packets)
    width: int                      # of the first packet (0 without packets)
    height: int
    decoder: PacketDecoder | None   # its counters (evt3 triggers) once ``chunks`` is consumed
    chunks: Iterator[np.ndarray]    # the events of each packet, in bag order


def event_stream(path: str | os.PathLike, topic: str | None = None) -> EventStream:
    """The EventPacket topic ``topic`` of a bag (default: the first one, sorted; a bag without
    any raises :class:`BagError`), decoded with one decoder made for the first packet's
    encoding (:class:`EventDecodeError` if unsupported, or if a later packet changes it)."""
    if topic is None:
        topics = event_topics(path)
        if not topics:
            raise BagError(f"no {EVENT_PACKET_TYPE} topic in {str(path)!r}")
        topic = topics[0]
    packets = iter_event_packets(path, topic)
    first = next(packets, None)
    if first is None:
        return EventStream(topic, "", 0, 0, None, iter(()))
    enc = str(first.encoding)
    dec = make_decoder(enc)
    chunks = (_decode(dec, msg, topic, enc) for msg in itertools.chain((first,), packets))
    return EventStream(topic, enc, int(first.width), int(first.height), dec, chunks)
