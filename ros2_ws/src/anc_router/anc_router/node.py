"""anc_router node: EventPacket -> FrameClock -> RouterCore -> RouteDecision.

Subscribes  ``/event_camera/events`` (event_camera_msgs/EventPacket, sensor QoS)
Publishes   ``/edge_vlm/route``      (edge_vlm_msgs/RouteDecision, reliable keep last 10)
            ``/diagnostics``         (diagnostic_msgs/DiagnosticArray, 1 Hz, status
                                      ``edge_vlm/anc_router``)
``compute_budget`` can be changed at runtime (``SetParameters``); it applies
from the next closed frame. ``header.stamp`` = the frame end in the EventPacket header clock
(``frame.stamp_end``), ``window_start`` = its start in sensor time (the captioner's match key).
"""
from __future__ import annotations

import sys
import time

from rclpy.node import Node

from edge_vlm.cores.router import RouteResult, RouterCore
from edge_vlm.stream.frames import Frame
from edge_vlm_msgs.msg import RouteDecision
from edge_vlm_ros.conversions import ns_to_time
from edge_vlm_ros.frame_node import FrameNode
from edge_vlm_ros.params import add_param_validation, declare_from_spec
from edge_vlm_ros.qos import publisher
from edge_vlm_ros.run import run_node

NAME = "anc_router"


def complexity_score(probabilities: list[float]) -> float:
    """Scalar complexity in [0, 1]: probability-weighted level index / (number of levels - 1)."""
    n = max(1, len(probabilities) - 1)
    return float(min(1.0, max(0.0, sum(i * p for i, p in enumerate(probabilities)) / n)))


def route_msg(frame: Frame, r: RouteResult, frame_id: str) -> RouteDecision:
    """The RouteDecision of ``frame``, stamped at the frame end in the EventPacket header
    clock."""
    m = RouteDecision()
    m.header.stamp = ns_to_time(frame.stamp_end)
    m.window_start = ns_to_time(frame.t_start)            # sensor time
    m.header.frame_id = frame_id
    m.levels = [str(x) for x in r.levels]
    probs = [float(p) for p in r.probabilities]
    m.probabilities = probs
    m.branches_run = [str(b) for b in r.branches]
    m.branch_weights = [float(w) for w in r.weights]
    m.complexity_level = int(r.level)
    m.complexity_score = complexity_score(probs)
    m.compute_budget = float(r.budget)
    # learned router: encoder FLOPs of the routed branches on this frame's changed tokens
    # (and of the Medium branch on every token); 0.0 with router_method = density
    m.estimated_flops = float(r.est_flops)
    m.estimated_flops_dense = float(r.est_flops_dense)
    return m


class RouterNode(FrameNode, Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = declare_from_spec(self, NAME)
        self.core = RouterCore(self.params)
        add_param_validation(self, NAME, self._on_params)
        self.pub = publisher(self, RouteDecision, "route")
        self.setup_frames(self.params)
        self.get_logger().info(f"ready: frame period {self.period} ns, compute_budget "
                               f"{self.params['compute_budget']}")

    def _on_params(self, changed: dict) -> None:
        self.params.update(changed)
        if "compute_budget" in changed:
            self.core.set_budget(float(changed["compute_budget"]))
            self.get_logger().info(f"compute_budget -> {changed['compute_budget']} "
                                   "(from the next frame)")
        other = {k: v for k, v in changed.items() if k != "compute_budget"}
        if other:
            self.core.params = {**self.core.params, **other}

    def on_frames(self, frames) -> None:
        frame_id = self.input.frame_id
        for f in frames:
            t0 = time.perf_counter()
            r = self.core.process(f)
            self.diagnostics.record_frame((time.perf_counter() - t0) * 1e3)
            self.pub.publish(route_msg(f, r, frame_id))


def main(args=None) -> int:
    return run_node(RouterNode, args, NAME)


if __name__ == "__main__":
    sys.exit(main())
