"""edge_vlm_record: write the graph's outputs as JSON lines (one line per received message).

Usage::

    edge_vlm_record OUT.jsonl [--topics caption compute_cost ground_truth route token_mask ...]
                    [--duration S] [--ros-args ...]

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
import sys
import time

import rclpy
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from edge_vlm.topics import TOPICS
from edge_vlm_ros.conversions import message_class, msg_to_dict, time_to_ns
from edge_vlm_ros.qos import drain, subscription
from edge_vlm_ros.run import interrupt_on_signals

#: the streams that can be recorded: keys of the topic table ``edge_vlm.topics.TOPICS`` (its
#: name, type and QoS); ``events`` records EventPacket arrivals only (seq, stamp, payload
#: size; no payload): for packet-to-caption latency
STREAMS = ("caption", "caption_text", "compute_cost", "ground_truth", "route", "token_mask",
           "events")
DEFAULT_STREAMS = ("caption", "compute_cost", "ground_truth", "route", "token_mask")


class Recorder(Node):
    def __init__(self, out, streams=DEFAULT_STREAMS, node_name: str = "edge_vlm_recorder"):
        super().__init__(node_name)
        self.out = out
        self.counts = {s: 0 for s in streams}
        self._unseen = list(streams)       # streams without a publisher yet
        self._next_check = 0.0
        self._subs = {}
        for s in streams:
            self._subs[s] = subscription(self, message_class(TOPICS[s].msgtype), s,
                                         lambda msg, s=s: self._take(s, msg))

    def _take(self, stream: str, msg) -> None:
        """A message, then those queued behind it (1,000 EventPackets/s: qos.drain)."""
        write = lambda m: self._write(stream, TOPICS[stream].msgtype, m)  # noqa: E731
        write(msg)
        drain(self._subs[stream], write)

    def report_publishers(self) -> None:
        """Print ``edge_vlm_record: publisher of STREAM`` once a stream's topic has one (the
        demo plays its bag once the graph's outputs reach the recorder); checked every 0.2 s."""
        if not self._unseen or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + 0.2
        for s in [s for s in self._unseen if self.count_publishers(TOPICS[s].name)]:
            self._unseen.remove(s)
            print(f"edge_vlm_record: publisher of {s}", flush=True)

    def _write(self, stream: str, type_name: str, msg) -> None:
        recv = time.time_ns()
        if stream == "events":
            data = {"seq": int(msg.seq), "encoding": msg.encoding, "bytes": len(msg.events),
                    "time_base": int(msg.time_base)}
        else:
            data = msg_to_dict(msg)
        header = getattr(msg, "header", None)
        line = {"topic": "/" + TOPICS[stream].name, "stream": stream, "type": type_name,
                "recv_ns": recv,
                "stamp_ns": time_to_ns(header.stamp) if header is not None else None,
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
    ap.add_argument("--duration", type=float, default=0.0,
                    help="stop after SEC seconds (0 = until SIGINT)")
    args = ap.parse_args(argv)

    interrupt_on_signals()
    rclpy.init(args=["edge_vlm_record"] + ros_args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    with open(args.out, "w") as fh:
        try:
            node = Recorder(fh, args.topics)
            print(f"edge_vlm_record: recording {', '.join(args.topics)} to {args.out}", flush=True)
            end = time.monotonic() + args.duration if args.duration > 0 else None
            while rclpy.ok() and (end is None or time.monotonic() < end):
                rclpy.spin_once(node, timeout_sec=0.1)
                node.report_publishers()
        except KeyboardInterrupt:
            pass
        finally:
            if node is not None:
                print("edge_vlm_record: wrote "
                      + ", ".join(f"{k}={v}" for k, v in node.counts.items()),
                      file=sys.stderr, flush=True)
                node.destroy_node()
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
