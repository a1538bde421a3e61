"""Interfaces: EventPacket type hash, and a cross-process round trip of every type.

Each round trip starts a publisher in a subprocess (this file run as a script:
``python tests/test_msgs.py publish <Type>``), which waits until the test's
subscription has matched, publishes one message with every field set to a
non-default value, waits for the acknowledgement and exits.  The test node
receives it and compares every field.  Same shape as a launch_pytest test, with
no launch (not available from PyPI).

Runs with the workspace sourced or from plain pytest (tests/rosenv.py); an
unbuilt workspace is a failure, never a skip.
"""
from __future__ import annotations

import array
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest  # noqa: E402
import rosenv  # noqa: E402

UPSTREAM_EVENT_PACKET_HASH = \
    "RIHS01_d6fa176260b1f37e5a40845305315e150a0f18191241eb64f407442aa29844aa"

TYPES = {
    "TokenMask": "edge_vlm_msgs",
    "RouteDecision": "edge_vlm_msgs",
    "Caption": "edge_vlm_msgs",
    "ComputeCost": "edge_vlm_msgs",
    "EventPacket": "event_camera_msgs",
}
TOPIC_PREFIX = "/test_msgs/"
TIMEOUT_S = 30.0


# --------------------------------------------------------------------- messages
def _time(sec, nsec):
    from builtin_interfaces.msg import Time
    return Time(sec=sec, nanosec=nsec)


def _header(sec, nsec, frame_id="dvs128"):
    from std_msgs.msg import Header
    return Header(stamp=_time(sec, nsec), frame_id=frame_id)


def make_message(kind: str):
    """One message of ``kind`` with EVERY field set to a non-default value.

    Floats are exact in float32 (a float32 scalar field keeps the Python float
    it was given on the sending side, but arrives rounded to float32).
    """
    import importlib

    cls = getattr(importlib.import_module(f"{TYPES[kind]}.msg"), kind)
    if kind == "TokenMask":
        return cls(
            header=_header(12, 366_666_666), grid_width=8, grid_height=6, patch_size=16,
            image_width=128, image_height=96, sensor_width=640, sensor_height=480,
            active_indices=[0, 17, 47],
            scores=[0.5, 0.875, 1.0], threshold=0.25, total_tokens=48,
            active_fraction=3 / 48, method="event_count", event_count=123_456,
            window_start=_time(12, 333_333_333))
    if kind == "RouteDecision":
        return cls(
            header=_header(3, 999_999_999), levels=["tiny", "small", "medium"],
            probabilities=[0.125, 0.625, 0.25], branches_run=["small", "medium"],
            branch_weights=[0.75, 0.25], complexity_level=1, complexity_score=0.625,
            compute_budget=0.5, estimated_flops=1.25e9, estimated_flops_dense=4.5e9,
            window_start=_time(3, 966_666_666))
    if kind == "Caption":
        return cls(
            header=_header(7, 1), text="a person waves the right hand \u2014 twice",
            score=-0.375, gesture_label=5, gesture_name="right_hand_wave",
            gesture_confidence=0.9375,
            input_stamps=[_time(6, 966_666_667), _time(7, 0), _time(7, 1)],
            window_start=_time(6, 0), window_end=_time(7, 1), model_id="edge-vlm-tiny@0.1",
            frame_index=2**63 + 11, input_mode="rgb+events", scene="gesture",
            scene_confidence=0.8125, motion_direction="none", motion_speed="fast",
            motion_position="left")
    if kind == "ComputeCost":
        return cls(
            header=_header(100, 500), active_tokens=17, total_tokens=64, branch="small",
            flops_executed=3.5e8, flops_dense=1.4e9, flops_saved_fraction=0.75,
            stage_latency_ms=[0.5, 0.25, 4.0, 1.0, 8.0, 13.75],
            stage_names=["decode", "mask", "encoder", "fusion", "decoder", "total"],
            frame_index=3001, compute_budget=0.25, params_active=2**40 + 1)
    if kind == "EventPacket":
        import numpy as np
        from edge_vlm.io.codecs.mono import encode_mono
        from edge_vlm.events import make_events

        t0 = 1_700_000_000_000_000_000
        n = 300
        ev = make_events(t0 + np.arange(n) * 1000, np.arange(n) % 128,
                         (np.arange(n) * 7) % 128, np.arange(n) % 2)
        return cls(
            header=_header(1_700_000_000, 2_000_000, "dvs128_left"), height=128, width=128,
            seq=2**40 + 3, time_base=t0, encoding="mono", is_bigendian=True,
            events=array.array("B", encode_mono(ev, t0)))
    raise KeyError(kind)


def field_diffs(a, b) -> list[str]:
    """Names (and values) of the fields where messages ``a`` and ``b`` differ."""
    out = []
    for name in a.get_fields_and_field_types():
        va, vb = getattr(a, name), getattr(b, name)
        if va != vb:
            out.append(f"{name}: {va!r} != {vb!r}"[:300])
    return out


def qos():
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


# --------------------------------------------------------------------- subprocess side
def _publisher_main(kind: str) -> int:
    import rclpy
    from rclpy.duration import Duration

    msg = make_message(kind)
    rclpy.init()
    try:
        node = rclpy.create_node(f"test_msgs_pub_{kind.lower()}")
        pub = node.create_publisher(type(msg), TOPIC_PREFIX + kind, qos())
        deadline = time.monotonic() + TIMEOUT_S
        while pub.get_subscription_count() < 1:
            if time.monotonic() > deadline:
                print(f"PUBLISHER: no subscription on {pub.topic_name} after {TIMEOUT_S} s",
                      flush=True)
                return 3
            time.sleep(0.02)
        pub.publish(msg)
        acked = pub.wait_for_all_acked(Duration(seconds=TIMEOUT_S))
        print(f"PUBLISHER: published {kind} acked={acked}", flush=True)
        time.sleep(0.5)
        return 0 if acked else 4
    finally:
        rclpy.shutdown()


# --------------------------------------------------------------------- test side
_NODE = None


def ros_node():
    """The test process's node (created once); fails the test if the ws is not built."""
    global _NODE
    if _NODE is None:
        try:
            rosenv.require_workspace(*set(TYPES.values()))
            rosenv.activate()
        except rosenv.WorkspaceNotBuilt as exc:
            pytest.fail(str(exc), pytrace=False)
        import rclpy
        # Our own context and domain: other test modules may use rclpy too.
        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=int(rosenv.DOMAIN_ID))
        _NODE = rclpy.create_node(f"test_msgs_{os.getpid()}", context=ctx)
    return _NODE


def teardown_module(module):
    global _NODE
    if _NODE is not None:
        ctx = _NODE.context
        _NODE.destroy_node()
        _NODE = None
        if ctx.ok():
            ctx.shutdown()


def test_event_packet_type_hash_json():
    """The generated type description carries the upstream hash."""
    ros_node()
    path = os.path.join(rosenv.INSTALL, "event_camera_msgs", "share", "event_camera_msgs",
                        "msg", "EventPacket.json")
    with open(path) as f:
        desc = json.load(f)
    hashes = {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}
    assert hashes["event_camera_msgs/msg/EventPacket"] == UPSTREAM_EVENT_PACKET_HASH


def test_event_packet_type_hash_on_the_wire():
    """The typesupport announces the upstream hash in the ROS graph."""
    node = ros_node()
    from event_camera_msgs.msg import EventPacket

    topic = f"/test_msgs/hash_{os.getpid()}"
    pub = node.create_publisher(EventPacket, topic, 1)
    try:
        deadline = time.monotonic() + 10
        infos = []
        while not infos and time.monotonic() < deadline:
            infos = node.get_publishers_info_by_topic(topic)
            time.sleep(0.02)
        assert infos, "own publisher not visible in the graph"
        assert str(infos[0].topic_type_hash) == UPSTREAM_EVENT_PACKET_HASH
        assert infos[0].topic_type == "event_camera_msgs/msg/EventPacket"
    finally:
        node.destroy_publisher(pub)


def test_rosbags_hashes_match_built_types():
    """Bags written by rosbags (from the .msg files) name the same hashes as the build."""
    ros_node()
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    src = os.path.join(rosenv.WS, "src")
    for kind, pkg in TYPES.items():
        with open(os.path.join(src, pkg, "msg", kind + ".msg")) as f:
            ts.register(get_types_from_msg(f.read(), f"{pkg}/msg/{kind}"))
    for kind, pkg in TYPES.items():
        with open(os.path.join(rosenv.INSTALL, pkg, "share", pkg, "msg", kind + ".json")) as f:
            desc = json.load(f)
        built = {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}
        name = f"{pkg}/msg/{kind}"
        assert ts.hash_rihs01(name) == built[name], name


def test_every_field_is_filled():
    """make_message sets every field away from its default (the round trip checks them all)."""
    ros_node()
    for kind in TYPES:
        msg = make_message(kind)
        default = type(msg)()
        same = [f for f in msg.get_fields_and_field_types()
                if getattr(msg, f) == getattr(default, f)]
        assert not same, f"{kind}: fields left at default: {same}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", list(TYPES))
def test_cross_process_round_trip(kind):
    node = ros_node()
    from rclpy.executors import SingleThreadedExecutor

    expected = make_message(kind)
    received = []
    sub = node.create_subscription(type(expected), TOPIC_PREFIX + kind,
                                   lambda m: received.append(m), qos())
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "publish", kind],
        env=rosenv.sourced_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not received and time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        # A last spin in case the message arrived just as the publisher exited.
        end = time.monotonic() + 1.0
        while not received and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        try:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert received, (f"no {kind} received within {TIMEOUT_S} s "
                          f"(publisher rc={proc.returncode}):\n{out}")
        assert len(received) == 1, f"{len(received)} {kind} messages received, expected 1"
        diffs = field_diffs(received[0], expected)
        assert not diffs, f"{kind} fields differ after the round trip:\n" + "\n".join(diffs)
        assert received[0] == expected
        assert proc.returncode == 0, f"publisher failed (rc={proc.returncode}):\n{out}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        executor.remove_node(node)
        executor.shutdown()
        node.destroy_subscription(sub)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "publish":
        sys.path.insert(0, os.path.join(rosenv.WS, "src", "edge_vlm"))
        sys.exit(_publisher_main(sys.argv[2]))
    print(f"usage: {sys.argv[0]} publish <{'|'.join(TYPES)}>", file=sys.stderr)
    sys.exit(2)
