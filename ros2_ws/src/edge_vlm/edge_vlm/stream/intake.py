"""The rclpy-free part of a node's EventPacket intake: sequence gaps, the checked decode + bin
(:class:`~edge_vlm.stream.binner.FrameBinner`), counters, and which packets fed which frame.

The ROS nodes (``edge_vlm_ros.intake``) and the offline evaluation (``edge_vlm.evaluation``) run
the same :class:`PacketIntake`, so a recording replayed offline is cut into the same frames with
the same rejections as on the robot. Nothing here raises on a malformed packet: it is rejected,
counted and reported back (:class:`~edge_vlm.stream.frames.Rejection`) for the caller to log.

Sequence gaps: ``missing_packets`` counts the *missing messages* (seq 0..9 then 20..29 -> 10),
``seq_gaps`` the gap *occurrences* (-> 1; a seq going backwards, e.g. a restarted driver, is an
occurrence with no missing message).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edge_vlm.events import check_coordinates
from edge_vlm.stream.binner import FrameBinner
from edge_vlm.stream.frames import Frame, Rejection


@dataclass
class IntakeResult:
    """What one packet (or an end-of-stream flush) produced."""

    frames: list[Frame]
    rejected: list[Rejection]            # this packet, or packets buffered earlier
    accepted: bool                       # this packet was not rejected
    decode_ms: float                     # decode + bin time spent on this call


@dataclass
class IntakeCounters:
    packets: int = 0
    events: int = 0
    rejected: int = 0
    seq_gaps: int = 0
    missing_packets: int = 0
    unsorted: int = 0
    decode_s: float = 0.0


class PacketIntake:
    """One EventPacket stream into frames (see the module doc)."""

    def __init__(self, binner: FrameBinner):
        self.binner = binner
        self.counters = IntakeCounters()
        self.last_seq: int | None = None

    def _sequence(self, seq: int) -> None:
        c = self.counters
        if self.last_seq is not None and seq != self.last_seq + 1:
            c.seq_gaps += 1
            if seq > self.last_seq + 1:
                c.missing_packets += seq - self.last_seq - 1
        self.last_seq = seq

    def push(self, encoding, payload, width, height, time_base, seq, tag: object = None,
             bigendian: bool = False) -> IntakeResult:
        """One EventPacket (its message fields; ``tag`` identifies it in rejections and in
        :meth:`FrameBinner.pop_fed`). Never raises: anything a broken packet provokes is a
        rejection of that packet. Payloads are little-endian (every encoding here): a packet
        flagged ``is_bigendian`` is rejected."""
        self.counters.packets += 1
        error = None
        frames: list[Frame] = []
        b, before = self.binner, self._mark()
        try:
            self._sequence(int(seq))
            if bigendian:
                error = Rejection(tag, "big-endian EventPacket payloads are not supported")
            else:    # the sensor size of every encoding (events are uint16 coordinates)
                check_coordinates(-1, -1, int(width), int(height), "EventPacket: ")
                frames = b.push(str(encoding), payload, int(width), int(height), int(time_base),
                                tag=tag)
        except Exception as exc:
            error = Rejection(tag, f"{type(exc).__name__}: {exc}")
        res = self._account(frames, before)
        if error is not None:
            res.rejected.append(error)
            self.counters.rejected += 1
        res.accepted = not any(r.tag is tag for r in res.rejected)
        return res

    def flush(self) -> IntakeResult:
        """Decode what is buffered and close the open frame (end of stream / idle)."""
        before = self._mark()
        try:
            frames = self.binner.flush()
        except Exception:
            self._account([], before)
            raise
        return self._account(frames, before)

    def _mark(self) -> tuple[float, int, int]:
        b = self.binner
        return b.busy_s, b.events, b.unsorted

    def _account(self, frames: list[Frame], before: tuple[float, int, int]) -> IntakeResult:
        """Count what the binner did since ``before`` and collect its rejections."""
        b, c = self.binner, self.counters
        busy, events, unsorted = before
        c.decode_s += b.busy_s - busy
        c.events += b.events - events
        c.unsorted += b.unsorted - unsorted
        rejected = b.pop_rejections()
        c.rejected += len(rejected)
        return IntakeResult(frames, rejected, True, (b.busy_s - busy) * 1e3)


@dataclass
class FrameInput:
    """The packets that fed one frame: their stamps (ns) and the decode time they cost it."""

    stamps: list[int] = field(default_factory=list)
    decode_ms: float = 0.0


class FrameInputs:
    """Per frame index: stamps of the EventPackets that fed it and their decode time (a packet's
    decode time is shared by the frames it fed)."""

    MAX_SPAN = 64

    def __init__(self):
        self.frames: dict[int, FrameInput] = {}

    def add_frames(self, k0: int, k1: int, stamp_ns: int, decode_ms: float) -> None:
        """A packet with events in frames ``k0..k1`` (stamp, decode time shared by its frames)."""
        k0 = max(k0, k1 - self.MAX_SPAN)
        share = decode_ms / (k1 - k0 + 1)
        for k in range(k0, k1 + 1):
            fi = self.frames.get(k)
            if fi is None:
                fi = self.frames[k] = FrameInput()
            if not fi.stamps or fi.stamps[-1] != stamp_ns:
                fi.stamps.append(stamp_ns)
            fi.decode_ms += share

    def pop(self, k: int) -> FrameInput:
        """The inputs of frame ``k`` (forgets frames far older than it)."""
        fi = self.frames.pop(k, None) or FrameInput()
        for old in [j for j in self.frames if j < k - self.MAX_SPAN]:
            self.frames.pop(old, None)
        return fi
