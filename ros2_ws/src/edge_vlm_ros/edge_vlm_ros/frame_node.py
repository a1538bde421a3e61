"""The base of the event-driven nodes: EventPackets in, closed frames out.

:class:`FrameSource` decodes and bins one EventPacket stream
(:class:`edge_vlm.stream.binner.FrameBinner` through the intake of :mod:`edge_vlm_ros.intake`),
stamps the closed frames in the EventPacket header clock
(:class:`edge_vlm.stream.clock.HeaderClock`: ``frame.stamp_end`` is the stamp of every output
about a frame) and hands them to its frame nodes. :class:`FrameNode` (the nodes' mixin)
subscribes to the EventPacket topic with a source of its own, and holds the node's
:class:`~edge_vlm_ros.diagnostics.Diagnostics`.

In the single-process graph (``edge_vlm_tools.graph``) the frame nodes of one event topic and
one frame grid share ONE source (:meth:`FrameNode.share_source`): each packet is decoded and
binned once and every node gets the same closed frames, in graph order. The intake counters
(packets, events, rejected, sequence gaps, late events, clock resets, stamp jumps) are then
the shared source's: the values each node would have counted on the same packets.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Any

from event_camera_msgs.msg import EventPacket
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks

from edge_vlm.stream.binner import FrameBinner
from edge_vlm.stream.clock import HeaderClock
from edge_vlm.stream.frames import period_ns
from edge_vlm.stream.intake import FrameInputs, IntakeResult
from edge_vlm_ros.conversions import time_to_ns
from edge_vlm_ros.diagnostics import Diagnostics
from edge_vlm_ros.intake import EventInput
from edge_vlm_ros.qos import drain, subscription

#: When no EventPacket arrived for this long (wall time), nodes close the open
#: frame (end of a bag / camera stopped). All nodes use the same rule, so the
#: last frame still gets the same stamp everywhere.
IDLE_FLUSH_S = 1.0
#: how often the idle rule is checked (s; on the steady clock: under use_sim_time the idle
#: flush must fire when the bag player and its /clock have stopped)
IDLE_CHECK_S = 0.25
#: the line a node logs when the publishers matched with its EventPacket subscription change
MATCHED_LOG = "events: {count} publisher(s) matched on {topic}"
#: ... as a harness reads it from the node's log (``edge_vlm_tools.netns``): the count, the topic
MATCHED_LINE = re.compile(r"\]: events: (\d+) publisher\(s\) matched on (\S+)")


class FrameSource:
    """One EventPacket stream -> closed frames, stamped, for the frame nodes in ``sinks``.

    ``key`` (frame period, model width, model height): nodes with the same key close the same
    frames from the same packets, so they can share a source. Which packets fed which frame
    (:class:`~edge_vlm.stream.intake.FrameInputs`) is kept for each node that asks for it
    (:meth:`track_inputs`: its own record, which it pops)."""

    def __init__(self, logger, params: dict):
        self.period = period_ns(params)
        self.key = (self.period, int(params["model_width"]), int(params["model_height"]),
                    int(params.get("flicker_min_flips", 0)))
        self.binner = FrameBinner(self.period, self.key[1], self.key[2], track_packets=True,
                                  flicker_min_flips=self.key[3])
        self.clock = self.binner.clock            # frame index, late_events, resets
        self.header_clock = HeaderClock(self.period)   # sensor time -> header clock
        self.input = EventInput(logger, self.binner)
        self.inputs: list[FrameInputs] = []
        self.sinks: list[FrameNode] = []
        self.last_packet: float | None = None
        #: link mode 'active': one packet = one whole frame, closed after the packet
        self.close_each_packet = bool(params.get("link_frames", False))

    def track_inputs(self) -> FrameInputs:
        """A new record of the packets that feed each frame, kept from now on."""
        self.inputs.append(FrameInputs())
        return self.inputs[-1]

    def feed(self, msg) -> None:
        """One EventPacket message (never raises: rejects counted and logged)."""
        now = self.last_packet = time.monotonic()
        for node in self.sinks:
            node.diagnostics.last_input = now
        self._take(self.input.feed(msg))
        if self.close_each_packet:
            self.flush_open(self.sinks[0].get_logger() if self.sinks else None)

    def flush_open(self, logger, what: str = "flush") -> None:
        """Close the open frame now (never raises: an error is logged)."""
        try:
            res = self.input.flush()
        except Exception as exc:  # keep running whatever the stream does
            if logger is not None:
                logger.warning(f"frame binning error at {what}: {exc}")
            return
        self._take(res)

    def _take(self, res: IntakeResult) -> None:
        """Record which packets fed which frames (their header-clock offsets; their stamps and
        decode time when tracked), then hand the frames closed, stamped, to every sink."""
        fed = self.binner.pop_fed()
        for f in fed:
            msg = f.tag
            stamp = time_to_ns(msg.header.stamp)
            self.header_clock.packet(f, stamp, msg.encoding, msg.time_base)
            for inputs in self.inputs:
                inputs.add_frames(f.first_frame, f.last_frame, stamp, res.decode_ms / len(fed))
        if res.frames:
            self.header_clock.stamp(res.frames)
            for node in self.sinks:
                node._emit(res.frames)

    def idle_check(self, logger) -> None:
        """Close the open frame after :data:`IDLE_FLUSH_S` without packets."""
        if self.last_packet is not None and time.monotonic() - self.last_packet > IDLE_FLUSH_S:
            self.last_packet = None
            self.flush_open(logger, "idle flush")


class FrameNode:
    """Mixin for the event-driven nodes (combine with ``rclpy.node.Node``).

    :meth:`setup_frames` subscribes to the EventPacket topic and gives the node its own
    :class:`FrameSource` (decode + bin with :class:`edge_vlm.stream.binner.FrameBinner`:
    frames on the absolute grid, histograms on the model grid), which calls
    ``self.on_frames(frames)`` with the closed frames, oldest first, their ``stamp_offset``
    set (outputs carry ``frame.stamp_end``: the frame end in the EventPacket header clock).
    After :data:`IDLE_FLUSH_S` without packets the open frame is closed (end of a bag).
    ``self.diagnostics`` publishes the node's status once per second; counters are
    logged by :meth:`shutdown_report`. :meth:`share_source`: the node takes its frames from
    another node's source instead (single-process graph).
    """

    def setup_frames(self, params: dict, track_inputs: bool = False,
                     subscribe: bool = True) -> None:
        """The node's frame source, idle timer and diagnostics; its EventPacket subscription
        too unless ``subscribe`` is False (then :meth:`subscribe_events` makes it later)."""
        self.period = period_ns(params)
        self.source = FrameSource(self.get_logger(), params)
        self._inputs = self.source.track_inputs() if track_inputs else None
        self.frames_out = 0
        self.dropped_frames = 0          # frames dropped by backpressure (vlm_captioner)
        self.processing_errors = 0
        self._events = None
        if subscribe:
            self.subscribe_events()
        self._idle_timer = self.create_timer(IDLE_CHECK_S, self._idle_check,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.diagnostics = Diagnostics(self, self.counters, self.diagnostic_values,
                                       lambda: self.input.frame_id)
        self.source.sinks.append(self)

    def subscribe_events(self) -> None:
        """Subscribe to the EventPacket topic (once). Whenever the publishers matched with the
        subscription change (a camera or a player comes or goes), the node logs
        ``events: N publisher(s) matched on TOPIC``: the subscriber side of the match, which
        a harness that plays a bag over a link waits for (``edge_vlm_play --hold-file``),
        because a best-effort packet sent before it is lost."""
        if self._events is None:
            self._events = subscription(
                self, EventPacket, "events", self._on_packets,
                SubscriptionEventCallbacks(matched=self._on_events_matched))

    def _on_events_matched(self, info) -> None:
        topic = self._events.topic_name if self._events is not None else "events"
        self.get_logger().info(MATCHED_LOG.format(count=info.current_count, topic=topic))

    # the source's parts, as the nodes use them
    @property
    def binner(self) -> FrameBinner:
        return self.source.binner

    @property
    def clock(self):
        return self.source.clock

    @property
    def header_clock(self) -> HeaderClock:
        return self.source.header_clock

    @property
    def input(self) -> EventInput:
        return self.source.input

    @property
    def inputs(self) -> FrameInputs | None:
        """Which packets fed which frame (None unless ``track_inputs``)."""
        return self._inputs

    def share_source(self, source: FrameSource) -> None:
        """Take the closed frames of ``source`` (another node's, same ``key``) instead of
        decoding the packets again: the node's own event subscription and idle timer go (the
        source's owner keeps its timer)."""
        if source is self.source:
            return
        if source.key != self.source.key:
            raise ValueError(f"{self.get_name()}: frame grid {self.source.key} differs from the "
                             f"shared source's {source.key}")
        self.source.sinks.remove(self)
        if self._events is not None:
            self.destroy_subscription(self._events)
            self._events = None
        self.destroy_timer(self._idle_timer)
        if self._inputs is not None:
            self._inputs = source.track_inputs()
        self.source = source
        source.sinks.append(self)

    def _on_packets(self, msg) -> None:
        """The events subscription: this packet, then those queued behind it (qos.drain)."""
        self._on_packet(msg)
        drain(self._events, self._on_packet)

    def _on_packet(self, msg) -> None:
        self.source.feed(msg)   # never raises: rejects counted and logged

    def _idle_check(self) -> None:
        self.source.idle_check(self.get_logger())

    def _emit(self, frames) -> None:
        self.frames_out += len(frames)
        try:
            self.on_frames(frames)
        except Exception as exc:
            self.processing_errors += 1
            self.get_logger().error(f"processing frames {[f.index for f in frames]} failed: "
                                    f"{type(exc).__name__}: {exc}")

    def counters(self) -> dict[str, Any]:
        c = self.input.counters()
        c.update(frames=self.frames_out, late_events=self.clock.late_events,
                 clock_resets=self.clock.resets, stamp_jumps=self.header_clock.jumps,
                 dropped=self.dropped_frames,
                 processing_errors=self.processing_errors)
        return c

    def diagnostic_values(self) -> dict[str, Any]:
        """Node-specific key/values added to the diagnostics status (override)."""
        return {}

    def shutdown_report(self) -> None:
        text = " ".join(f"{k}={v}" for k, v in self.counters().items())
        try:
            self.get_logger().info(f"shutdown: {text}")
        except Exception:
            print(f"[{self.get_name()}] shutdown: {text}", file=sys.stderr, flush=True)
