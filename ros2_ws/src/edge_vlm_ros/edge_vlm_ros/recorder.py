"""edge_vlm_record: write the graph's outputs as JSON lines (one line per received message).

Usage::

    edge_vlm_record OUT.jsonl [--topics caption compute_cost ground_truth route token_mask ...]
                    [--namespace NS] [--duration S]

Streams: caption, caption_text, compute_cost, ground_truth, route, token_mask,
and ``events`` (EventPacket arrival times and sizes only, no payload).

Each line: ``{"topic", "stream", "type", "recv_ns" (wall clock, time.time_ns()),
"stamp_ns" (header.stamp or null), "data": {...}}``. In ``data``,
builtin_interfaces/Time values are integer nanoseconds; a std_msgs/String
holding JSON (ground truth) also gets ``"json": {...}``. Lines are flushed as
they are written, so readers can follow the file live. SIGINT/SIGTERM stop it.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import rclpy
from rclpy.node import Node

from edge_vlm_ros.common import QOS_RELIABLE, QOS_RELIABLE_50, QOS_SENSOR, TOPICS, msg_to_dict, time_to_ns

#: short name -> (topic key in common.TOPICS, type, QoS)
STREAMS = {
    "caption": ("caption", "edge_vlm_msgs/msg/Caption", QOS_RELIABLE_50),
    "caption_text": ("caption_text", "std_msgs/msg/String", QOS_RELIABLE_50),
    "compute_cost": ("compute_cost", "edge_vlm_msgs/msg/ComputeCost", QOS_RELIABLE_50),
    "ground_truth": ("ground_truth", "std_msgs/msg/String", QOS_RELIABLE_50),
    "route": ("route", "edge_vlm_msgs/msg/RouteDecision", QOS_RELIABLE),
    "token_mask": ("token_mask", "edge_vlm_msgs/msg/TokenMask", QOS_RELIABLE),
    # EventPacket arrivals only (seq, stamp, payload size; no payload): for packet-to-caption latency
    "events": ("events", "event_camera_msgs/msg/EventPacket", QOS_SENSOR),
}
DEFAULT_STREAMS = ("caption", "compute_cost", "ground_truth", "route", "token_mask")


def _msg_class(type_name: str):
    import importlib
    pkg, _, name = type_name.partition("/msg/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


class Recorder(Node):
    def __init__(self, out, streams=DEFAULT_STREAMS, node_name: str = "edge_vlm_recorder"):
        super().__init__(node_name)
        self.out = out
        self.counts = {s: 0 for s in streams}
        for s in streams:
            key, type_name, qos = STREAMS[s]
            self.create_subscription(_msg_class(type_name), TOPICS[key],
                                     lambda msg, s=s, t=type_name: self._write(s, t, msg), qos)

    def _write(self, stream: str, type_name: str, msg) -> None:
        recv = time.time_ns()
        if stream == "events":
            data = {"seq": int(msg.seq), "encoding": msg.encoding, "bytes": len(msg.events),
                    "time_base": int(msg.time_base)}
        else:
            data = msg_to_dict(msg)
        header = getattr(msg, "header", None)
        line = {"topic": "/" + TOPICS[STREAMS[stream][0]], "stream": stream, "type": type_name,
                "recv_ns": recv, "stamp_ns": time_to_ns(header.stamp) if header is not None else None,
                "data": data}
        if type_name == "std_msgs/msg/String":
            try:
                line["json"] = json.loads(msg.data)
            except (ValueError, TypeError):
                pass
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()
        self.counts[stream] += 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ros_args = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    ap = argparse.ArgumentParser(prog="edge_vlm_record", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output file (JSON lines)")
    ap.add_argument("--topics", nargs="+", default=list(DEFAULT_STREAMS), choices=sorted(STREAMS),
                    help="streams to record (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after SEC seconds (0 = until SIGINT)")
    args = ap.parse_args(argv)

    def _stop(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    from rclpy.signals import SignalHandlerOptions
    rclpy.init(args=["edge_vlm_record"] + ros_args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    with open(args.out, "w") as fh:
        try:
            node = Recorder(fh, args.topics)
            print(f"edge_vlm_record: recording {', '.join(args.topics)} to {args.out}", flush=True)
            end = time.monotonic() + args.duration if args.duration > 0 else None
            while rclpy.ok() and (end is None or time.monotonic() < end):
                rclpy.spin_once(node, timeout_sec=0.1)
        except KeyboardInterrupt:
            pass
        finally:
            if node is not None:
                print("edge_vlm_record: wrote " + ", ".join(f"{k}={v}" for k, v in node.counts.items()),
                      file=sys.stderr, flush=True)
                node.destroy_node()
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
