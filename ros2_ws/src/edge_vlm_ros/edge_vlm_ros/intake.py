"""Event intake of the frame nodes: EventPacket messages into the core's
:class:`~edge_vlm.stream.intake.PacketIntake` (sequence gaps, checked decode + bin, counters),
which the offline evaluation runs too. This adapter adds what only a node has: the logger
(rejections are logged with a throttle: ``rejected packet seq=N (encoding 'e'): reason``) and
the sensor's ``frame_id`` for the outputs.

:func:`parse_event_packet`: an EventPacket's serialized CDR (a raw subscription) into the fields
the intake reads, without building rclpy message objects (the single-process graph, 1 ms
packets).
"""
from __future__ import annotations

import struct
import time
from typing import Any, NamedTuple

from event_camera_msgs.msg import EventPacket
from rclpy.serialization import deserialize_message

from edge_vlm.stream.binner import FrameBinner
from edge_vlm.stream.frames import Rejection
from edge_vlm.stream.intake import IntakeResult, PacketIntake


class RawTime(NamedTuple):
    sec: int
    nanosec: int


class RawHeader(NamedTuple):
    stamp: RawTime
    frame_id: str


class RawEventPacket(NamedTuple):
    """The fields of an EventPacket as :func:`parse_event_packet` reads them (the attribute
    names of ``event_camera_msgs/EventPacket``; ``events`` as bytes)."""

    header: RawHeader
    height: int
    width: int
    seq: int
    time_base: int
    encoding: str
    is_bigendian: bool
    events: bytes


#: CDR encapsulation of little-endian plain CDR (XCDR1), what Fast DDS writes for ROS 2
_CDR_LE = b"\x00\x01"
_STAMP_LEN = struct.Struct("<iII").unpack_from
_U32 = struct.Struct("<I").unpack_from
_U32X2 = struct.Struct("<II").unpack_from
_U64X2 = struct.Struct("<QQ").unpack_from


def _parse_cdr_le(b: bytes) -> RawEventPacket:
    """EventPacket fields from little-endian plain CDR (alignment counted after the 4-byte
    encapsulation header); raises on a short or inconsistent buffer."""
    sec, nanosec, n = _STAMP_LEN(b, 4)
    o = 16 + n
    frame_id = b[16:o - 1].decode()
    o += -(o - 4) % 4
    height, width = _U32X2(b, o)
    o += 8
    o += -(o - 4) % 8
    seq, time_base = _U64X2(b, o)
    (n,) = _U32(b, o + 16)
    o += 20
    encoding = b[o:o + n - 1].decode()
    o += n
    big = b[o]
    o += 1
    o += -(o - 4) % 4
    (n,) = _U32(b, o)
    o += 4
    if o + n > len(b):
        raise ValueError("EventPacket CDR: payload beyond the buffer")
    return RawEventPacket(RawHeader(RawTime(sec, nanosec), frame_id), height, width, seq,
                          time_base, encoding, bool(big), b[o:o + n])


def parse_event_packet(raw: bytes):
    """An EventPacket's serialized CDR (``raw=True`` subscription) as a
    :class:`RawEventPacket`; anything but little-endian plain CDR, or a buffer that does not
    parse, goes through rclpy's deserialization (an ``EventPacket``; it raises on garbage)."""
    if raw[:2] == _CDR_LE:
        try:
            return _parse_cdr_le(raw)
        except (struct.error, ValueError, IndexError, UnicodeDecodeError):
            pass
    return deserialize_message(raw, EventPacket)


class EventInput:
    """EventPacket messages -> closed frames; never raises (see the module doc)."""

    def __init__(self, logger, binner: FrameBinner, throttle_s: float = 2.0):
        self.logger = logger
        self.intake = PacketIntake(binner)
        self.throttle_s = float(throttle_s)
        self.frame_id = ""
        self._last_warn: dict[str, tuple[float, int]] = {}

    def feed(self, msg) -> IntakeResult:
        """One EventPacket message (the frames it closes, its rejections logged)."""
        res = self.intake.push(msg.encoding, msg.events, msg.width, msg.height, msg.time_base,
                               msg.seq, tag=msg, bigendian=bool(msg.is_bigendian))
        if res.accepted:
            self.frame_id = str(msg.header.frame_id)
        self._log(res.rejected)
        return res

    def flush(self) -> IntakeResult:
        """Close the open frame (end of a bag / camera stopped)."""
        res = self.intake.flush()
        self._log(res.rejected)
        return res

    def counters(self) -> dict[str, Any]:
        c = self.intake.counters
        return {"packets": c.packets, "events": c.events, "rejected": c.rejected,
                "seq_gaps": c.seq_gaps, "missing_packets": c.missing_packets}

    def _log(self, rejected: list[Rejection]) -> None:
        for r in rejected:
            self._warn(r.tag, r.reason)

    def _warn(self, msg, reason: str) -> None:
        """A throttled warning per kind of rejection (digits ignored), with the count of
        suppressed ones."""
        text = f"{getattr(msg, 'encoding', '')}:{reason}"
        key = "".join(c for c in text if not c.isdigit())[:80]
        now = time.monotonic()
        last, suppressed = self._last_warn.get(key, (-1e18, 0))
        if now - last < self.throttle_s:
            self._last_warn[key] = (last, suppressed + 1)
            return
        more = f" ({suppressed} similar suppressed)" if suppressed else ""
        try:
            self.logger.warning(f"rejected packet seq={getattr(msg, 'seq', '?')} "
                                f"(encoding '{getattr(msg, 'encoding', '?')}'): {reason}{more}")
        except Exception:
            pass
        self._last_warn[key] = (now, 0)
