"""Diagnostics of a frame node: one ``diagnostic_msgs/DiagnosticStatus`` ``edge_vlm/<node name>``
on ``/diagnostics`` once per period (as diagnostic_updater publishes them).

The node holds a :class:`Diagnostics` and tells it about every processed frame
(:meth:`Diagnostics.record_frame`) and every input (:attr:`Diagnostics.last_input`); the
status reads the node's counters (rates are their change over the period).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType

from edge_vlm.topics import DIAGNOSTICS
from edge_vlm_ros.qos import DIAGNOSTICS_QOS

#: publish period (s)
DIAGNOSTICS_PERIOD_S = 1.0
#: how long without any EventPacket makes a node report WARN "no input"
NO_INPUT_WARN_S = 5.0
#: counters whose increase over a period is a warning, with the text of the reason
WARN_COUNTERS = (("rejected", "packets rejected"), ("dropped", "frames dropped (backpressure)"),
                 ("missing_packets", "packets missing (seq gaps)"), ("late_events", "late events"),
                 ("stamp_jumps", "header-clock jumps (EventPacket stamps vs sensor time)"))


@dataclass
class Period:
    """What one diagnostics period saw: frame latencies and active-token fractions, the
    counters at its start and end, its length and the time since the last input."""

    latency_ms: list[float]
    active: list[float]
    prev: dict[str, Any]
    now: dict[str, Any]
    seconds: float
    since_input: float

    def delta(self, key: str) -> int:
        return int(self.now.get(key, 0)) - int(self.prev.get(key, 0))


class Verdict(NamedTuple):
    """The level of a status (a ``DiagnosticStatus`` byte constant) and the reasons for it."""

    level: bytes
    reasons: list[str]


class Diagnostics:
    """Publishes the status of ``node`` every ``period_s`` seconds.

    ``counters()``: the node's cumulative counters (packets, events, rejected, seq_gaps,
    missing_packets, dropped, late_events, frames, clock_resets, stamp_jumps, processing_errors);
    ``extra_values()``: node-specific key/values added to the status;
    ``hardware_id()``: the status' hardware id (the input's frame id).
    """

    def __init__(self, node, counters: Callable[[], dict[str, Any]],
                 extra_values: Callable[[], dict[str, Any]], hardware_id: Callable[[], str],
                 period_s: float = DIAGNOSTICS_PERIOD_S):
        self.node = node
        self.counters = counters
        self.extra_values = extra_values
        self.hardware_id = hardware_id
        self.pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS.name, DIAGNOSTICS_QOS)
        self._lock = threading.Lock()
        self._latency: list[float] = []    # processing latency (ms) of the frames of this period
        self._active: list[float] = []     # active-token fraction of the frames of this period
        self._prev = dict(counters())
        self._t = self._start = time.monotonic()
        #: monotonic time of the latest input (set by the node), None before the first one
        self.last_input: float | None = None
        # the steady clock: the status keeps coming when a bag's /clock stops (use_sim_time);
        # its stamp is the node's clock (ROS time, or /clock under use_sim_time)
        node.create_timer(float(period_s), self.publish,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

    def record_frame(self, latency_ms: float, active_fraction: float | None = None) -> None:
        """Account one processed frame for the diagnostics of the current period (thread safe)."""
        with self._lock:
            self._latency.append(float(latency_ms))
            if active_fraction is not None:
                self._active.append(float(active_fraction))

    def _next_period(self) -> Period:
        """The period since the last call; starts the next one."""
        now = time.monotonic()
        with self._lock:
            lat, self._latency = self._latency, []
            act, self._active = self._active, []
        c = dict(self.counters())
        prev, self._prev = self._prev, c
        seconds, self._t = max(1e-6, now - self._t), now
        since = now - (self.last_input if self.last_input is not None else self._start)
        return Period(lat, act, prev, c, seconds, since)

    def _values(self, p: Period) -> dict[str, Any]:
        c, lat = p.now, p.latency_ms
        values: dict[str, Any] = {
            "packet_rate_hz": round(p.delta("packets") / p.seconds, 2),
            "event_rate_hz": round(p.delta("events") / p.seconds, 1),
            "packets": c["packets"], "events": c["events"], "rejected": c["rejected"],
            "seq_gaps": c["missing_packets"], "seq_gap_events": c["seq_gaps"],
            "dropped": c["dropped"], "late_events": c["late_events"], "frames": c["frames"],
            "clock_resets": c["clock_resets"], "stamp_jumps": c.get("stamp_jumps", 0),
            "processing_errors": c["processing_errors"],
            "frames_in_period": len(lat),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 3) if lat else "n/a",
            "latency_p95_ms": round(float(np.percentile(lat, 95)), 3) if lat else "n/a",
        }
        if p.active:
            values["active_token_fraction"] = round(float(np.mean(p.active)), 4)
        values["last_input_age_s"] = round(p.since_input, 2) if self.last_input is not None \
            else "never"
        values.update(self.extra_values())
        return values

    @staticmethod
    def _level(p: Period) -> Verdict:
        """Status level and its reasons: ERROR on processing errors, WARN on rejected packets,
        dropped frames, sequence gaps, late events or no input for a while."""
        level, reasons = DiagnosticStatus.OK, []
        if p.delta("processing_errors") > 0:
            level = DiagnosticStatus.ERROR
            reasons.append(f"{p.delta('processing_errors')} processing errors")
        warn = [f"{p.delta(key)} {text}" for key, text in WARN_COUNTERS if p.delta(key) > 0]
        if p.since_input > NO_INPUT_WARN_S:
            warn.append(f"no input for {p.since_input:.0f} s")
        if warn and level < DiagnosticStatus.WARN:
            level = DiagnosticStatus.WARN
        return Verdict(level, reasons + warn)

    def status(self) -> DiagnosticStatus:
        """The DiagnosticStatus of the period since the last call (also starts the next one)."""
        p = self._next_period()
        values = self._values(p)
        level, reasons = self._level(p)
        st = DiagnosticStatus()
        st.level = level
        st.name = f"edge_vlm/{self.node.get_name()}"
        st.hardware_id = self.hardware_id() or "event_camera"
        st.message = "; ".join(reasons) if reasons else (
            f"OK: {values['packet_rate_hz']} packets/s, "
            f"{len(p.latency_ms) / p.seconds:.1f} frames/s")
        st.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
        return st

    def publish(self) -> None:
        """Publish :meth:`status` (never raises: diagnostics must not take the node down)."""
        try:
            arr = DiagnosticArray()
            arr.header.stamp = self.node.get_clock().now().to_msg()
            arr.status = [self.status()]
            self.pub.publish(arr)
        except Exception as exc:
            self.node.get_logger().warning(f"diagnostics failed: {type(exc).__name__}: {exc}",
                                           throttle_duration_sec=10.0)
