"""The base of the event-driven nodes: EventPackets in, closed frames out.

:class:`FrameNode` subscribes to the EventPacket topic, decodes and bins the stream with
:class:`edge_vlm.stream.binner.FrameBinner` and hands the closed frames to the node's
``on_frames``, stamped in the EventPacket header clock (:class:`edge_vlm.stream.clock.HeaderClock`:
``frame.stamp_end`` is the stamp of every output about a frame); it holds the node's
:class:`~edge_vlm_ros.diagnostics.Diagnostics`.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from event_camera_msgs.msg import EventPacket
from rclpy.clock import Clock, ClockType

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


class FrameNode:
    """Mixin for the event-driven nodes (combine with ``rclpy.node.Node``).

    :meth:`setup_frames` subscribes to the EventPacket topic, decodes and bins
    the stream with :class:`edge_vlm.stream.binner.FrameBinner` (frames on the absolute
    grid, histograms on the model grid, batched per frame) and calls
    ``self.on_frames(frames)`` with the closed frames, oldest first, their ``stamp_offset``
    set (outputs carry ``frame.stamp_end``: the frame end in the EventPacket header clock). After
    :data:`IDLE_FLUSH_S` without packets the open frame is closed (end of a bag).
    ``self.diagnostics`` publishes the node's status once per second; counters are
    logged by :meth:`shutdown_report`.
    """

    def setup_frames(self, params: dict, track_inputs: bool = False) -> None:
        self.period = period_ns(params)
        self.binner = FrameBinner(self.period, int(params["model_width"]),
                                  int(params["model_height"]), track_packets=True)
        self.clock = self.binner.clock            # frame index, late_events, resets
        self.header_clock = HeaderClock(self.period)   # sensor time -> header clock
        self.input = EventInput(self.get_logger(), self.binner)
        self.inputs = FrameInputs() if track_inputs else None
        self.frames_out = 0
        self.dropped_frames = 0          # frames dropped by backpressure (vlm_captioner)
        self.processing_errors = 0
        self._last_packet = None
        self._events = subscription(self, EventPacket, "events", self._on_packets)
        self.create_timer(IDLE_CHECK_S, self._idle_check,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.diagnostics = Diagnostics(self, self.counters, self.diagnostic_values,
                                       lambda: self.input.frame_id)

    def _on_packets(self, msg) -> None:
        """The events subscription: this packet, then those queued behind it (qos.drain)."""
        self._on_packet(msg)
        drain(self._events, self._on_packet)

    def _on_packet(self, msg) -> None:
        self._last_packet = self.diagnostics.last_input = time.monotonic()
        self._take(self.input.feed(msg))   # never raises: rejects counted and logged

    def _take(self, res: IntakeResult) -> None:
        """Record which packets fed which frames (their header-clock offsets; their stamps and
        decode time when tracked), then emit the frames closed, stamped."""
        fed = self.binner.pop_fed()
        for f in fed:
            msg = f.tag
            stamp = time_to_ns(msg.header.stamp)
            self.header_clock.packet(f, stamp, msg.encoding, msg.time_base)
            if self.inputs is not None:
                self.inputs.add_frames(f.first_frame, f.last_frame, stamp,
                                       res.decode_ms / len(fed))
        if res.frames:
            self.header_clock.stamp(res.frames)
            self._emit(res.frames)

    def _idle_check(self) -> None:
        if self._last_packet is not None and time.monotonic() - self._last_packet > IDLE_FLUSH_S:
            self._last_packet = None
            try:
                res = self.input.flush()
            except Exception as exc:  # keep running whatever the stream does
                self.get_logger().warning(f"frame binning error at idle flush: {exc}")
                return
            self._take(res)

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
