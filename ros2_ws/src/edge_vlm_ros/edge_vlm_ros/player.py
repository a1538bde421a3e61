"""edge_vlm_play: play a rosbag2 folder (sqlite3 or mcap) into a live ROS 2 graph.

``ros2 bag`` is not available from the PyPI ROS wheels, so this is the
project's player.  It reads the bag with ``rosbags`` and publishes the stored
CDR bytes unchanged (``publisher.publish(raw_bytes)``): no deserialization,
so any type whose Python package is importable (``<pkg>.msg``) can be played.

Usage::

    edge_vlm_play BAG [--rate R] [--loop] [--topics T ...] [--remap FROM:=TO ...]
                  [--start-offset S] [--wait-for-subscribers N] [--wait-for TOPIC=N ...]
                  [--wait-timeout S]
                  [--qos auto|sensor|reliable] [--ros-args ...]

Timing follows the bag's receive timestamps (deltas divided by ``--rate``).
QoS (``--qos auto``, the default) follows docs/design.md: sensor data (best
effort, keep last 100) for events and images, reliable for everything else.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from collections import Counter
from pathlib import Path

__all__ = ["main", "qos_for", "parse_remaps", "split_ros_args", "message_class", "DESIGN_QOS"]

SENSOR = "sensor"
RELIABLE = "reliable"

# topic -> (kind, depth), from docs/design.md "Topics".
DESIGN_QOS = {
    "/event_camera/events": (SENSOR, 100),
    "/camera/image_raw": (SENSOR, 100),
    "/edge_vlm/change_mask": (SENSOR, 100),
    "/edge_vlm/ground_truth": (RELIABLE, 50),
    "/edge_vlm/token_mask": (RELIABLE, 10),
    "/edge_vlm/route": (RELIABLE, 10),
    "/edge_vlm/caption": (RELIABLE, 50),
    "/edge_vlm/caption_text": (RELIABLE, 50),
    "/edge_vlm/compute_cost": (RELIABLE, 50),
}
SENSOR_TYPES = {
    "event_camera_msgs/msg/EventPacket",
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "sensor_msgs/msg/PointCloud2",
}


def qos_for(topic: str, msgtype: str, mode: str = "auto"):
    """The rclpy ``QoSProfile`` the player offers on ``topic`` (original bag name).

    ``mode``: ``auto`` (design.md table, else by type: sensor types best effort,
    others reliable), ``sensor`` (all best effort, keep last 100) or
    ``reliable`` (all reliable, keep last 100).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if mode == SENSOR:
        kind, depth = SENSOR, 100
    elif mode == RELIABLE:
        kind, depth = RELIABLE, 100
    elif mode == "auto":
        kind, depth = DESIGN_QOS.get(
            topic, (SENSOR, 100) if msgtype in SENSOR_TYPES else (RELIABLE, 50))
    else:
        raise ValueError(f"unknown qos mode {mode!r}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=(ReliabilityPolicy.BEST_EFFORT if kind == SENSOR
                     else ReliabilityPolicy.RELIABLE),
        durability=DurabilityPolicy.VOLATILE,
    )


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


def message_class(msgtype: str):
    """Python class of ``pkg/msg/Type`` (``importlib.import_module('pkg.msg').Type``)."""
    parts = msgtype.split("/")
    if len(parts) == 2:                      # ROS 1 style "pkg/Type"
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ValueError(f"bad message type name {msgtype!r}")
    pkg, sub, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{sub}"), name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            f"cannot import message type {msgtype} ({exc}); is the workspace sourced "
            f"(. ros2_ws/install/local_setup.bash or . env.sh)?") from exc


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
                    help="before playing, wait until TOPIC (as in the bag, or its remapped name) has >= N "
                         "subscriptions (repeatable; overrides --wait-for-subscribers for that topic)")
    ap.add_argument("--wait-timeout", type=float, default=15.0, metavar="SEC",
                    help="longest wait for --wait-for-subscribers (then play anyway; default 15)")
    ap.add_argument("--qos", choices=["auto", SENSOR, RELIABLE], default="auto",
                    help="auto (design.md: sensor data for events/images, reliable otherwise), "
                         "sensor (best effort for all) or reliable (reliable for all)")
    ap.add_argument("--node-name", default="edge_vlm_player")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    return ap


def split_ros_args(argv) -> tuple[list[str], list[str]]:
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
    return ours, ros


def _open_reader(path: Path, tmpdirs: list):
    """An open rosbags Reader for ``path`` (a bag folder or a storage file in one).

    Uses ``edge_vlm.bag.open_reader`` when importable; otherwise rosbags directly.

    Bags whose metadata.yaml leaves ``storage_identifier`` empty (seen in the
    wild, e.g. rosbag2 v5 mcap bags) are opened through a temporary folder with
    links to the storage files and the identifier taken from their suffix.
    """
    try:  # the core library's reader (handles the same quirks), when present
        from edge_vlm.io.bag_reader import open_reader
    except ImportError:
        pass
    else:
        return open_reader(path)

    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    if path.is_file():  # a storage file: its folder holds metadata.yaml
        path = path.parent
    reader = Reader(path)
    try:
        reader.open()
        return reader
    except ReaderError as exc:
        if "Storage plugin" not in str(exc):
            raise
        error = exc
    import tempfile

    import yaml

    meta_path = path / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    info = meta["rosbag2_bagfile_information"]
    files = info.get("relative_file_paths") or []
    suffixes = {Path(f).suffix for f in files}
    storage = {".mcap": "mcap", ".db3": "sqlite3"}.get(suffixes.pop()) if len(suffixes) == 1 else None
    if not storage or info.get("storage_identifier"):
        raise error
    tmp = Path(tempfile.mkdtemp(prefix="edge_vlm_play_"))
    tmpdirs.append(tmp)
    for f in files:
        (tmp / f).symlink_to((path / f).resolve())
    info["storage_identifier"] = storage
    (tmp / "metadata.yaml").write_text(yaml.safe_dump(meta))
    print(f"edge_vlm_play: {meta_path} has no storage_identifier; reading it as {storage}",
          file=sys.stderr, flush=True)
    reader = Reader(tmp)
    reader.open()
    return reader


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
    import rclpy

    per_topic = per_topic or {}

    def need(key, pub) -> int:      # key: (bag topic, type); per_topic by bag or published name
        for name in (str(key[0] if isinstance(key, tuple) else key), pub.topic_name):
            if name.lstrip("/") in per_topic:
                return per_topic[name.lstrip("/")]
        return n

    deadline = time.monotonic() + timeout
    missing = [(t, p) for t, p in pubs.items() if p.get_subscription_count() < need(t, p)]
    while missing and time.monotonic() < deadline and rclpy.ok():
        time.sleep(0.02)
        missing = [(t, p) for t, p in missing if p.get_subscription_count() < need(t, p)]
    if missing:
        print(f"edge_vlm_play: WARNING: after {timeout:.1f} s too few subscriptions on "
              + ", ".join(f"{p.topic_name} ({p.get_subscription_count()} of {need(t, p)})" for t, p in missing)
              + "; playing anyway", file=sys.stderr, flush=True)
        return False
    # The publisher has matched; give the subscriber side a moment to match too.
    time.sleep(0.3)
    if not quiet:
        print("edge_vlm_play: subscriptions matched: "
              + ", ".join(f"{p.topic_name} {p.get_subscription_count()} (>= {need(t, p)})" for t, p in pubs.items()),
              flush=True)
    return True


def _sleep_until(target: float) -> bool:
    import rclpy

    while True:
        if not rclpy.ok():
            return False
        left = target - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.05))


def main(argv=None) -> int:
    import rclpy
    import rclpy.duration

    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    ours, ros_args = split_ros_args(argv)
    args = _build_parser().parse_args(ours)
    if not args.rate > 0:
        print("edge_vlm_play: --rate must be > 0", file=sys.stderr)
        return 2
    try:
        remaps = parse_remaps(args.remap)
        _parse_wait_for(args.wait_for)
    except ValueError as exc:
        print(f"edge_vlm_play: {exc}", file=sys.stderr)
        return 2
    bag = Path(args.bag)
    if not bag.exists():
        print(f"edge_vlm_play: bag {bag} not found", file=sys.stderr)
        return 2

    counts: Counter = Counter()
    out_name: dict[str, str] = {}
    rclpy.init(args=["edge_vlm_play"] + ros_args)
    node = None
    loops = 0
    tmpdirs: list = []
    try:
        node = rclpy.create_node(args.node_name)
        with contextlib.closing(_open_reader(bag, tmpdirs)) as reader:
            wanted = {_abs(t) for t in args.topics} if args.topics else None
            conns = [c for c in reader.connections
                     if c.msgcount > 0 and (wanted is None or c.topic in wanted)]
            if wanted:
                unknown = wanted - {c.topic for c in reader.connections}
                if unknown:
                    print(f"edge_vlm_play: WARNING: topics not in the bag: {sorted(unknown)}",
                          file=sys.stderr)
            # One publisher per topic; several connections may share it.
            pubs: dict[str, object] = {}
            pub_of_conn = {}
            skipped = set()
            for c in conns:
                key = c.topic
                if key in skipped:
                    continue
                if key not in pubs:
                    try:
                        cls = message_class(c.msgtype)
                    except (RuntimeError, ValueError) as exc:
                        print(f"edge_vlm_play: WARNING: skipping {c.topic}: {exc}",
                              file=sys.stderr, flush=True)
                        skipped.add(key)
                        continue
                    name = remaps.get(c.topic, c.topic)
                    pubs[key] = node.create_publisher(cls, name, qos_for(c.topic, c.msgtype, args.qos))
                    out_name[key] = pubs[key].topic_name
                    if not args.quiet:
                        q = pubs[key].qos_profile
                        print(f"edge_vlm_play: {c.topic} -> {pubs[key].topic_name} [{c.msgtype}] "
                              f"{c.msgcount} msgs, {q.reliability.name.lower()} depth {q.depth}",
                              flush=True)
                pub_of_conn[c.id] = pubs[key]
            conns = [c for c in conns if c.id in pub_of_conn]
            if not conns:
                print("edge_vlm_play: nothing to play", file=sys.stderr)
                return 1

            if args.wait_for_subscribers > 0 or args.wait_for:
                _wait_for_subscribers(node, pubs, args.wait_for_subscribers,
                                      args.wait_timeout, args.quiet, _parse_wait_for(args.wait_for))

            start_ns = reader.start_time + int(round(args.start_offset * 1e9))
            stop = False
            while not stop:
                t0_bag = None
                t0_wall = 0.0
                for conn, stamp, raw in reader.messages(connections=conns, start=start_ns):
                    if t0_bag is None:
                        t0_bag, t0_wall = stamp, time.monotonic()
                    target = t0_wall + (stamp - t0_bag) / 1e9 / args.rate
                    if not _sleep_until(target):
                        stop = True
                        break
                    pub_of_conn[conn.id].publish(bytes(raw))
                    counts[conn.topic] += 1
                loops += 1
                if not args.loop or t0_bag is None:
                    break
            # Let reliable subscribers acknowledge everything before we go.
            for pub in pubs.values():
                if pub.qos_profile.reliability.name == "RELIABLE":
                    try:
                        pub.wait_for_all_acked(rclpy.duration.Duration(seconds=5.0))
                    except Exception:  # pragma: no cover - older rclpy
                        pass
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        total = sum(counts.values())
        print(f"edge_vlm_play: published {total} message(s)"
              + (f" in {loops} loop(s)" if args.loop else "") + ":", flush=True)
        for topic in sorted(set(counts) | set(out_name)):
            shown = out_name.get(topic, topic)
            arrow = f" -> {shown}" if shown != topic else ""
            print(f"  {topic}{arrow}: {counts.get(topic, 0)}", flush=True)
        for tmp in tmpdirs:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
