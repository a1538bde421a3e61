"""Sensor time -> the EventPacket header clock: the stamps of every output about a frame.

Frames are cut on sensor time (the events' own clock, :class:`~edge_vlm.stream.frames.FrameClock`),
but a consumer lines the outputs up with its other data (rviz, Foxglove, TF, an RGB camera) in
the clock of the inputs' header stamps: ROS time on a robot, the recording's time in a bag,
``/clock`` under ``use_sim_time``. Every EventPacket relates the two clocks. As in
ros-event-camera's event_camera_msgs, ``header.stamp`` is the header-clock time of the packet's
*reference* sensor time: ``time_base`` for the encodings whose event times are offsets from it
(``mono``, ``libcaer_cmp``: "add dt to the header stamp"), the first event for ``evt3`` (absolute
sensor time in the payload, ``time_base`` undefined). ``offset = header.stamp - reference``.

A frame is stamped with the offset of the LAST packet that fed it: its end in the header clock
is ``t_end + offset`` (:attr:`Frame.stamp_end`). The nodes see the same packets, so they compute
the same stamps; a packet lost by one node only moves its stamp by the jitter between the
driver's packets. Nodes and the offline replay use this one class (``edge_vlm_ros.frame_node``,
``edge_vlm.evaluation.replay``).
"""
from __future__ import annotations

from edge_vlm.stream.frames import FedPacket, Frame

#: encodings whose event times are ``time_base`` + an offset: ``time_base`` is the reference
TIME_BASE_ENCODINGS = frozenset({"mono", "libcaer_cmp"})


def packet_reference(encoding: str, time_base: int, t_first: int) -> int:
    """The sensor time (ns) a packet's ``header.stamp`` stands for (see the module doc)."""
    return int(time_base) if encoding in TIME_BASE_ENCODINGS else int(t_first)


class HeaderClock:
    """Per EventPacket stream: the header-clock offset of each frame (see the module doc).

    :meth:`packet` for every decoded packet with events (a
    :class:`~edge_vlm.stream.frames.FedPacket` of the binner), :meth:`stamp` for the frames a
    push closed (sets their ``stamp_offset``). ``offset``: the latest packet's (None before
    the first); ``jumps``: packets whose offset differs from the previous one by more than a
    frame period (the header clock jumped against sensor time: a restarted driver, a bag loop
    played with ``/clock``).
    """

    #: a packet's offset is recorded for at most this many frames (a long gap inside one packet)
    MAX_SPAN = 64
    #: frames remembered (oldest forgotten first; a frame closes long before that)
    MAX_FRAMES = 256

    def __init__(self, period_ns: int):
        self.period = int(period_ns)
        self.offset: int | None = None
        self.jumps = 0
        self._frames: dict[int, int] = {}

    def packet(self, fed: FedPacket, header_ns: int, encoding: str, time_base: int) -> int:
        """Record a packet (its header stamp, encoding and time_base); returns its offset."""
        off = int(header_ns) - packet_reference(encoding, time_base, fed.t_first)
        if self.offset is not None and abs(off - self.offset) > self.period:
            self.jumps += 1
        self.offset = off
        frames = self._frames
        for k in range(max(fed.first_frame, fed.last_frame - self.MAX_SPAN), fed.last_frame + 1):
            frames[k] = off
        while len(frames) > self.MAX_FRAMES:
            del frames[next(iter(frames))]
        return off

    def frame_offset(self, index: int) -> int:
        """The offset of frame ``index`` (its last packet's; else the latest; 0 before any)."""
        off = self._frames.pop(index, None)
        if off is None:
            off = self.offset if self.offset is not None else 0
        return off

    def stamp(self, frames: list[Frame]) -> None:
        """Set ``stamp_offset`` of closed frames (each frame once: its entry is forgotten)."""
        for f in frames:
            f.stamp_offset = self.frame_offset(f.index)
