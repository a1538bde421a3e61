"""edge_vlm_play: play a rosbag2 folder (sqlite3 or mcap) into a live ROS 2 graph.

``ros2 bag`` is not available from the PyPI ROS wheels, so this is the
project's player.  It reads the bag with ``rosbags`` and publishes the stored
CDR bytes unchanged (``publisher.publish(raw_bytes)``): no deserialization,
so any type whose Python package is importable (``<pkg>.msg``) can be played.

Usage::

    edge_vlm_play BAG [--rate R] [--loop] [--topics T ...] [--remap FROM:=TO ...]
                  [--start-offset S] [--wait-for-subscribers N] [--wait-for TOPIC=N ...]
                  [--wait-timeout S] [--hold-file PATH] [--clock [HZ]]
                  [--qos auto|sensor|reliable] [--ros-args ...]

Timing follows the bag's receive timestamps (deltas divided by ``--rate``).
QoS (``--qos auto``, the default) follows the topic table ``edge_vlm.topics``
(listed in docs/design.md): sensor data (best effort, keep last 100) for events
and images, reliable for everything else.

``--clock [HZ]`` also publishes ``rosgraph_msgs/Clock`` on ``/clock`` (best effort, keep last 1,
like ``ros2 bag play --clock``), for nodes started with ``use_sim_time:=true``: the clock is the
``header.stamp`` of the played messages that have a header (the EventPackets' and images'
clock, in which the nodes stamp their outputs), published when it advances, at most HZ times per
second of wall time (default 40). A ``--loop`` starts the clock again from the bag's first stamp.

``--hold-file PATH``: after the subscription wait (its ``subscriptions matched`` line), hold until
PATH exists (at most ``--wait-timeout``, then play anyway with a warning). ``--wait-for`` sees
the publisher's side of a match only; over a link the subscriber's side can come later, and a
best-effort packet sent in between is lost. A harness that sees the subscribers' side (the
nodes log ``events: N publisher(s) matched on TOPIC``; ``edge_vlm_multihost`` does this)
creates PATH once they all matched.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import rclpy
import rclpy.duration
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from rosbags.rosbag2 import ReaderError

from edge_vlm.io.bag_reader import BagError, open_reader
from edge_vlm.topics import QosSpec, qos_of
from edge_vlm_ros.conversions import message_class, ns_to_time
from edge_vlm_ros.qos import profile

__all__ = ["main", "qos_for", "parse_remaps", "split_ros_args", "header_stamp_ns"]

SENSOR = "sensor"
RELIABLE = "reliable"
#: --qos sensor / reliable: every topic best effort / reliable, keep last 100
FORCED_QOS = {SENSOR: QosSpec(reliable=False, depth=100),
              RELIABLE: QosSpec(reliable=True, depth=100)}
#: /clock messages per second with a bare --clock (as ros2 bag play)
DEFAULT_CLOCK_HZ = 40.0
#: the QoS of /clock (rclcpp's ClockQoS: best effort, keep last 1)
CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


def header_stamp_ns(raw) -> int:
    """``header.stamp`` (ns) of a CDR-serialised message whose first field is a std_msgs/Header
    (its encapsulation says the byte order; the stamp follows it). Raises ValueError."""
    if len(raw) < 12:
        raise ValueError("message too short for a header")
    order = "<" if raw[1] & 1 else ">"
    sec, nanosec = struct.unpack_from(order + "iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


def has_header(cls: type) -> bool:
    """The message type's first field is a std_msgs/Header."""
    fields = iter(cls.get_fields_and_field_types().items())
    return next(fields, None) == ("header", "std_msgs/Header")


def qos_for(topic: str, msgtype: str, mode: str = "auto") -> QoSProfile:
    """The rclpy ``QoSProfile`` the player offers on ``topic`` (original bag name).

    ``mode``: ``auto`` (the topic table ``edge_vlm.topics``, else by type: sensor types
    best effort keep last 100, others reliable keep last 50), ``sensor`` (all best effort,
    keep last 100) or ``reliable`` (all reliable, keep last 100).
    """
    if mode == "auto":
        return profile(qos_of(topic, msgtype))
    if mode not in FORCED_QOS:
        raise ValueError(f"unknown qos mode {mode!r}")
    return profile(FORCED_QOS[mode])


def parse_remaps(items) -> dict[str, str]:
    """``["/a:=/b", ...]`` -> ``{"/a": "/b"}``; raises ValueError on bad syntax."""
    out: dict[str, str] = {}
    for item in items or ():
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"bad remap {item!r}: expected FROM:=TO")
        out[_abs(src)] = _abs(dst)
    return out


def _abs(name: str) -> str:
    return name if name.startswith("/") else "/" + name


def _build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edge_vlm_play",
        description="Play a rosbag2 folder (sqlite3 or mcap) by publishing its raw CDR messages.")
    ap.add_argument("bag", help="bag folder (with metadata.yaml) or storage file")
    ap.add_argument("--rate", type=float, default=1.0,
                    help="playback speed factor (2 = twice as fast; default 1)")
    ap.add_argument("--loop", action="store_true", help="play the bag again and again")
    ap.add_argument("--topics", nargs="+", metavar="TOPIC",
                    help="play only these topics (bag names, before remapping)")
    ap.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                    help="publish bag topic FROM on TO (repeatable)")
    ap.add_argument("--start-offset", type=float, default=0.0, metavar="SEC",
                    help="skip the first SEC seconds of the bag")
    ap.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                    help="before playing, wait until every played topic has >= N subscriptions")
    ap.add_argument("--wait-for", action="append", default=[], metavar="TOPIC=N",
                    help="before playing, wait until TOPIC (as in the bag, or its remapped name) "
                         "has >= N subscriptions (repeatable; overrides --wait-for-subscribers "
                         "for that topic)")
    ap.add_argument("--wait-timeout", type=float, default=15.0, metavar="SEC",
                    help="longest wait for --wait-for-subscribers (then play anyway; default 15)")
    ap.add_argument("--hold-file", default=None, metavar="PATH",
                    help="after the subscription wait, hold until PATH exists (at most "
                         "--wait-timeout, then play anyway): a harness creates it once the "
                         "subscribers' side of the match is known")
    ap.add_argument("--qos", choices=["auto", SENSOR, RELIABLE], default="auto",
                    help="auto (design.md: sensor data for events/images, reliable otherwise), "
                         "sensor (best effort for all) or reliable (reliable for all)")
    ap.add_argument("--clock", type=float, nargs="?", const=DEFAULT_CLOCK_HZ, default=None,
                    metavar="HZ",
                    help="publish /clock (rosgraph_msgs/Clock) from the played messages' header "
                         f"stamps, at most HZ per second (default {DEFAULT_CLOCK_HZ:g}), for "
                         "nodes with use_sim_time:=true")
    ap.add_argument("--node-name", default="edge_vlm_player")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    return ap


class SplitArgs(NamedTuple):
    ours: list[str]
    ros: list[str]


def split_ros_args(argv) -> SplitArgs:
    """Split ``argv`` into (player args, ``--ros-args ... [--]`` sections).

    Done by hand: rclpy's ``remove_ros_args`` also swallows bare ``FROM:=TO``
    words (deprecated rcl remap syntax), which are our ``--remap`` values.
    """
    ours: list[str] = []
    ros: list[str] = []
    inside = False
    for a in argv:
        if a == "--ros-args":
            inside = True
            ros.append(a)
        elif inside and a == "--":
            inside = False
            ros.append(a)
        elif inside:
            ros.append(a)
        else:
            ours.append(a)
    return SplitArgs(ours, ros)


def _parse_wait_for(items: list[str]) -> dict[str, int]:
    """``["TOPIC=N", ...]`` -> {topic without leading '/': N}; ValueError on a bad item."""
    out = {}
    for it in items:
        topic, sep, n = it.rpartition("=")
        if not sep or not topic or not n.strip().isdigit():
            raise ValueError(f"--wait-for expects TOPIC=N, got {it!r}")
        out[topic.strip().lstrip("/")] = int(n)
    return out


def _wait_for_subscribers(node, pubs, n, timeout, quiet, per_topic: dict | None = None):
    per_topic = per_topic or {}

    def need(topic, pub) -> int:    # per_topic by bag topic or published name
        for name in (str(topic), pub.topic_name):
            if name.lstrip("/") in per_topic:
                return per_topic[name.lstrip("/")]
        return n

    # topics of --wait-for that the bag does not publish (a relay downstream of the player, as
    # link:=active's edge_vlm/link_events): counted in the graph, by the absolute name
    played = {str(t).lstrip("/") for t in pubs} | {p.topic_name.lstrip("/") for p in pubs.values()}
    others = {t: k for t, k in per_topic.items() if t not in played}

    def short() -> list[str]:
        return [f"/{t} ({node.count_subscribers('/' + t)} of {k})" for t, k in others.items()
                if node.count_subscribers("/" + t) < k]

    deadline = time.monotonic() + timeout
    missing = [(t, p) for t, p in pubs.items() if p.get_subscription_count() < need(t, p)]
    while (missing or short()) and time.monotonic() < deadline and rclpy.ok():
        time.sleep(0.02)
        missing = [(t, p) for t, p in missing if p.get_subscription_count() < need(t, p)]
    if missing or short():
        print(f"edge_vlm_play: WARNING: after {timeout:.1f} s too few subscriptions on "
              + ", ".join([f"{p.topic_name} ({p.get_subscription_count()} of {need(t, p)})"
                           for t, p in missing] + short())
              + "; playing anyway", file=sys.stderr, flush=True)
        return False
    # The publisher has matched; give the subscriber side a moment to match too.
    time.sleep(0.3)
    if not quiet:
        print("edge_vlm_play: subscriptions matched: "
              + ", ".join([f"{p.topic_name} {p.get_subscription_count()} (>= {need(t, p)})"
                           for t, p in pubs.items()]
                          + [f"/{t} {node.count_subscribers('/' + t)} (>= {k})"
                             for t, k in others.items()]),
              flush=True)
    return True


def _hold(path: str, timeout: float, quiet: bool, alive=rclpy.ok) -> bool:
    """``--hold-file``: until ``path`` exists (True) or ``timeout`` s passed or ``alive()`` is
    false (a stop signal: False, warned)."""
    if not quiet:
        print(f"edge_vlm_play: holding until {path} exists", flush=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline or not alive():
            print(f"edge_vlm_play: WARNING: {path} not there after {timeout:.1f} s; "
                  "playing anyway", file=sys.stderr, flush=True)
            return False
        time.sleep(0.02)
    if not quiet:
        print("edge_vlm_play: hold released", flush=True)
    return True


def _sleep_until(target: float) -> bool:
    while True:
        if not rclpy.ok():
            return False
        left = target - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.05))


@dataclass
class SimClock:
    """``--clock``: ``/clock`` from the played messages' header stamps (see the module doc)."""

    pub: Publisher
    period_s: float                                   # at least this long between two messages
    conns: set[int] = field(default_factory=set)     # connections of a type with a header
    now_ns: int | None = None                         # latest header stamp seen
    sent_ns: int | None = None                        # ... and the latest published
    sent_at: float = float("-inf")
    published: int = 0

    def message(self, conn_id: int, raw) -> None:
        """A message about to be played: its header stamp advances the clock."""
        if conn_id not in self.conns:
            return
        try:
            stamp = header_stamp_ns(raw)
        except ValueError:
            return
        if self.now_ns is None or stamp > self.now_ns:
            self.now_ns = stamp
            if time.monotonic() - self.sent_at >= self.period_s:
                self.flush()

    def flush(self) -> None:
        """Publish the latest stamp (if not yet published)."""
        if self.now_ns is not None and self.now_ns != self.sent_ns:
            self.pub.publish(Clock(clock=ns_to_time(self.now_ns)))
            self.sent_ns, self.sent_at = self.now_ns, time.monotonic()
            self.published += 1

    def restart(self) -> None:
        """A new loop: the clock starts again from the bag's first stamp."""
        self.flush()
        self.now_ns = None


@dataclass
class Playback:
    """The publishers of one playback and what they published."""

    pubs: dict[str, Publisher] = field(default_factory=dict)     # bag topic -> publisher
    pub_of_conn: dict[int, Publisher] = field(default_factory=dict)   # connection id -> publisher
    out_name: dict[str, str] = field(default_factory=dict)       # bag topic -> published name
    counts: Counter = field(default_factory=Counter)             # bag topic -> messages published
    loops: int = 0
    clock: SimClock | None = None                                # --clock


def _connections(reader, topics: list[str] | None) -> list:
    """The bag's connections with messages, only those of ``topics`` when given."""
    wanted = {_abs(t) for t in topics} if topics else None
    conns = [c for c in reader.connections
             if c.msgcount > 0 and (wanted is None or c.topic in wanted)]
    if wanted:
        unknown = wanted - {c.topic for c in reader.connections}
        if unknown:
            print(f"edge_vlm_play: WARNING: topics not in the bag: {sorted(unknown)}",
                  file=sys.stderr)
    return conns


def _publishers(node, conns: list, remaps: dict[str, str], qos_mode: str, quiet: bool,
                play: Playback) -> list:
    """One publisher per topic (several connections may share it); the connections that got
    one (a type that cannot be imported is skipped with a warning)."""
    skipped = set()
    for c in conns:
        key = c.topic
        if key in skipped:
            continue
        if key not in play.pubs:
            try:
                cls = message_class(c.msgtype)
            except (RuntimeError, ValueError) as exc:
                print(f"edge_vlm_play: WARNING: skipping {c.topic}: {exc}", file=sys.stderr,
                      flush=True)
                skipped.add(key)
                continue
            name = remaps.get(c.topic, c.topic)
            pub = node.create_publisher(cls, name, qos_for(c.topic, c.msgtype, qos_mode))
            play.pubs[key] = pub
            play.out_name[key] = pub.topic_name
            if not quiet:
                q = pub.qos_profile
                print(f"edge_vlm_play: {c.topic} -> {pub.topic_name} [{c.msgtype}] "
                      f"{c.msgcount} msgs, {q.reliability.name.lower()} depth {q.depth}",
                      flush=True)
        play.pub_of_conn[c.id] = play.pubs[key]
        if play.clock is not None and has_header(play.pubs[key].msg_type):
            play.clock.conns.add(c.id)
    return [c for c in conns if c.id in play.pub_of_conn]


def _play(reader, conns: list, play: Playback, start_ns: int, rate: float, loop: bool) -> None:
    """Publish the messages at the bag's pace (divided by ``rate``), again and again with
    ``loop``; stops when rclpy shuts down."""
    stop = False
    while not stop:
        if play.clock is not None and play.loops:
            play.clock.restart()
        t0_bag = None
        t0_wall = 0.0
        for conn, stamp, raw in reader.messages(connections=conns, start=start_ns):
            if t0_bag is None:
                t0_bag, t0_wall = stamp, time.monotonic()
            target = t0_wall + (stamp - t0_bag) / 1e9 / rate
            if not _sleep_until(target):
                stop = True
                break
            if play.clock is not None:
                play.clock.message(conn.id, raw)
            play.pub_of_conn[conn.id].publish(bytes(raw))
            play.counts[conn.topic] += 1
        play.loops += 1
        if not loop or t0_bag is None:
            break


def _wait_acked(pubs) -> None:
    """Let reliable subscribers acknowledge everything before the player goes."""
    for pub in pubs:
        if pub.qos_profile.reliability.name == "RELIABLE":
            try:
                pub.wait_for_all_acked(rclpy.duration.Duration(seconds=5.0))
            except Exception:  # pragma: no cover - older rclpy
                pass
    time.sleep(0.1)


def _print_summary(play: Playback, loop: bool) -> None:
    total = sum(play.counts.values())
    print(f"edge_vlm_play: published {total} message(s)"
          + (f" in {play.loops} loop(s)" if loop else "") + ":", flush=True)
    for topic in sorted(set(play.counts) | set(play.out_name)):
        shown = play.out_name.get(topic, topic)
        arrow = f" -> {shown}" if shown != topic else ""
        print(f"  {topic}{arrow}: {play.counts.get(topic, 0)}", flush=True)
    if play.clock is not None:
        print(f"  /clock: {play.clock.published}", flush=True)


class Invocation(NamedTuple):
    """The player's command line: its arguments, the ``--ros-args`` sections, the remaps."""

    args: argparse.Namespace
    ros_args: list[str]
    remaps: dict[str, str]


def _arguments(argv: list[str]) -> Invocation:
    """Parse and check the command line; ValueError with the message for the user."""
    ours, ros_args = split_ros_args(argv)
    args = _build_parser().parse_args(ours)
    if not args.rate > 0:
        raise ValueError("--rate must be > 0")
    if args.clock is not None and not args.clock > 0:
        raise ValueError("--clock must be > 0 (messages per second)")
    remaps = parse_remaps(args.remap)
    _parse_wait_for(args.wait_for)
    if not Path(args.bag).exists():
        raise ValueError(f"bag {args.bag} not found")
    return Invocation(args, ros_args, remaps)


def _run(node, args: argparse.Namespace, remaps: dict[str, str], play: Playback) -> int:
    if args.clock is not None:
        play.clock = SimClock(node.create_publisher(Clock, "/clock", CLOCK_QOS), 1.0 / args.clock)
    with contextlib.closing(open_reader(Path(args.bag))) as reader:
        conns = _publishers(node, _connections(reader, args.topics), remaps, args.qos, args.quiet,
                            play)
        if not conns:
            print("edge_vlm_play: nothing to play", file=sys.stderr)
            return 1
        if args.wait_for_subscribers > 0 or args.wait_for:
            _wait_for_subscribers(node, play.pubs, args.wait_for_subscribers, args.wait_timeout,
                                  args.quiet, _parse_wait_for(args.wait_for))
        if args.hold_file:
            _hold(args.hold_file, args.wait_timeout, args.quiet)
        start_ns = reader.start_time + int(round(args.start_offset * 1e9))
        _play(reader, conns, play, start_ns, args.rate, args.loop)
        if play.clock is not None:
            play.clock.flush()
        _wait_acked(play.pubs.values())
    return 0


def main(argv=None) -> int:
    try:
        args, ros_args, remaps = _arguments(list(sys.argv[1:] if argv is None else argv))
    except ValueError as exc:
        print(f"edge_vlm_play: error: {exc}", file=sys.stderr)
        return 2
    play = Playback()
    rclpy.init(args=["edge_vlm_play"] + ros_args)
    node = None
    try:
        node = rclpy.create_node(args.node_name)
        return _run(node, args, remaps, play)
    except (BagError, ReaderError, sqlite3.DatabaseError) as exc:   # not a bag, truncated, ...
        print(f"edge_vlm_play: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        _print_summary(play, args.loop)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
