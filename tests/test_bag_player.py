"""bag_writer + edge_vlm_play: write bags (sqlite3, mcap), read them back, play them.

1. ``edge_vlm.bag_writer.write_bag`` from synthetic events + 2 frames + ground
   truth; read back with rosbags: metadata, hashes, order, every field, bytes.
2. The raw CDR in the bag is what rclpy serializes (modulo padding bytes).
3. ``edge_vlm_play`` (the installed console script) in a subprocess with
   ``--wait-for-subscribers 1``; this test's node receives every message and
   decodes the EventPackets back to the original events.

Runs with the workspace sourced or from plain pytest (tests/rosenv.py); an
unbuilt workspace is a failure, never a skip.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import rosenv  # noqa: E402

EVENT_PACKET_HASH = "RIHS01_d6fa176260b1f37e5a40845305315e150a0f18191241eb64f407442aa29844aa"
WIDTH, HEIGHT = 128, 128
PACKET_NS = 2_000_000
T0 = 5_000_123_457              # not on the packet grid on purpose
DURATION_NS = 60_000_000
N_EVENTS = 3000
FRAME_STAMPS = [T0 + 20_000_000, T0 + 45_000_000]
PLAYER = os.path.join(rosenv.INSTALL, "edge_vlm_tools", "lib", "edge_vlm_tools", "edge_vlm_play")


# ----------------------------------------------------------------- fixtures/data
def synthetic_events():
    from edge_vlm.events import make_events

    rng = np.random.default_rng(1234)
    t = np.sort(rng.integers(T0, T0 + DURATION_NS, N_EVENTS))
    t[-1] = T0 + DURATION_NS - 1
    return make_events(t, rng.integers(0, WIDTH, N_EVENTS), rng.integers(0, HEIGHT, N_EVENTS),
                       rng.integers(0, 2, N_EVENTS))


def synthetic_frames():
    rng = np.random.default_rng(99)
    return [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in FRAME_STAMPS]


GROUND_TRUTH = [
    {"clip_id": "user01_fluorescent#3", "label": 2, "class_name": "right_hand_wave",
     "t_start_ns": T0 + 1_000_000, "t_end_ns": T0 + 30_000_000,
     "attributes": {"hand": "right", "speed": "fast"},
     "references": [f"a person waves the right hand ({i})" for i in range(5)]},
    {"clip_id": "user01_fluorescent#4", "label": 11, "class_name": "other_gestures",
     "t_start_ns": T0 + 30_000_000, "t_end_ns": T0 + 59_000_000, "attributes": {},
     "references": [f"an unusual gesture \u00e9 {i}" for i in range(5)]},
]


def _typestore():
    try:
        from edge_vlm.io.bag_reader import typestore  # the project's helper, once it exists
        return typestore()
    except ImportError:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        ts = get_typestore(Stores.ROS2_KILTED)
        with open(os.path.join(rosenv.WS, "src", "event_camera_msgs", "msg",
                               "EventPacket.msg")) as f:
            ts.register(get_types_from_msg(f.read(), "event_camera_msgs/msg/EventPacket"))
        return ts


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def bag(request, tmp_path_factory):
    from edge_vlm.io.bag_writer import write_bag

    path = tmp_path_factory.mktemp("bags") / f"synthetic_{request.param}"
    ev = synthetic_events()
    out = write_bag(path, events=ev, width=WIDTH, height=HEIGHT, packet_ns=PACKET_NS,
                    frames=synthetic_frames(), frame_stamps_ns=FRAME_STAMPS,
                    ground_truth=GROUND_TRUTH, storage=request.param)
    assert out == path
    return {"path": path, "storage": request.param, "events": ev}


def _read_all(path):
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        conns = {c.topic: c for c in reader.connections}
        msgs = [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in reader.messages()]
        meta = {"storage": {".db3": "sqlite3", ".mcap": "mcap"}[
                    next(p.suffix for p in path.iterdir() if p.suffix in (".db3", ".mcap"))],
                "hashes": {c.topic: c.digest for c in reader.connections}}
    return conns, msgs, meta


def expected_packet_count():
    return (T0 + DURATION_NS - 1) // PACKET_NS - T0 // PACKET_NS + 1


# ----------------------------------------------------------------- 1. read back
def test_bag_reads_back_with_rosbags(bag):
    from edge_vlm.io.codecs.mono import decode_mono
    from edge_vlm.events import concat_events

    ts = _typestore()
    conns, msgs, meta = _read_all(bag["path"])
    assert meta["storage"] == bag["storage"]
    assert set(conns) == {"/event_camera/events", "/camera/image_raw", "/edge_vlm/ground_truth"}
    assert conns["/event_camera/events"].msgtype == "event_camera_msgs/msg/EventPacket"
    assert conns["/camera/image_raw"].msgtype == "sensor_msgs/msg/Image"
    assert conns["/edge_vlm/ground_truth"].msgtype == "std_msgs/msg/String"
    assert meta["hashes"]["/event_camera/events"] == EVENT_PACKET_HASH
    for topic, c in conns.items():       # every connection names its type hash
        assert c.digest.startswith("RIHS01_"), topic
    stamps = [t for _, _, t, _ in msgs]
    assert stamps == sorted(stamps), "messages not in bag-time order"

    # events: grid-aligned packets, seq from 0, stamp = packet end = bag time
    packets = [(t, ts.deserialize_cdr(raw, typ)) for top, typ, t, raw in msgs
               if top == "/event_camera/events"]
    assert len(packets) == expected_packet_count()
    decoded = []
    for seq, (bag_t, p) in enumerate(packets):
        assert p.seq == seq
        assert p.time_base % PACKET_NS == 0
        end = p.time_base + PACKET_NS
        assert p.header.stamp.sec * 1_000_000_000 + p.header.stamp.nanosec == end == bag_t
        assert p.header.frame_id == "dvs128"
        assert (p.width, p.height, p.encoding, p.is_bigendian) == (WIDTH, HEIGHT, "mono", False)
        ev = decode_mono(p.events, p.time_base, p.width, p.height)
        assert ev.size == 0 or (ev["t"].min() >= p.time_base and ev["t"].max() < end)
        decoded.append(ev)
    got = concat_events(decoded)
    np.testing.assert_array_equal(got, bag["events"])

    # frames: rgb8, bytes equal, stamps
    frames = [(t, ts.deserialize_cdr(raw, typ)) for top, typ, t, raw in msgs
              if top == "/camera/image_raw"]
    assert [t for t, _ in frames] == FRAME_STAMPS
    for (t, img), ref in zip(frames, synthetic_frames()):
        assert img.header.stamp.sec * 1_000_000_000 + img.header.stamp.nanosec == t
        assert (img.height, img.width, img.encoding, img.step) == (24, 32, "rgb8", 32 * 3)
        assert bytes(img.data) == ref.tobytes()

    # ground truth: one JSON object per segment at t_start_ns
    gts = [(t, json.loads(ts.deserialize_cdr(raw, typ).data)) for top, typ, t, raw in msgs
           if top == "/edge_vlm/ground_truth"]
    assert [t for t, _ in gts] == [g["t_start_ns"] for g in GROUND_TRUTH]
    assert [g for _, g in gts] == GROUND_TRUTH

    for top, typ, _, raw in msgs:
        assert ts.serialize_cdr(ts.deserialize_cdr(raw, typ), typ) == raw, top


def test_bag_metadata_is_rosbag2(bag):
    """metadata.yaml as rosbag2 (Kilted) reads it: version, storage, QoS, hashes."""
    import yaml

    with open(bag["path"] / "metadata.yaml") as f:
        info = yaml.safe_load(f)["rosbag2_bagfile_information"]
    assert info["version"] >= 8
    assert info["storage_identifier"] == bag["storage"]
    assert (bag["path"] / info["relative_file_paths"][0]).is_file()
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    ev = topics["/event_camera/events"]
    assert ev["message_count"] == expected_packet_count()
    assert ev["topic_metadata"]["type_description_hash"] == EVENT_PACKET_HASH
    assert ev["topic_metadata"]["offered_qos_profiles"][0]["reliability"] == "best_effort"
    gt = topics["/edge_vlm/ground_truth"]["topic_metadata"]["offered_qos_profiles"][0]
    assert gt["reliability"] == "reliable" and gt["depth"] == 50
    assert info["message_count"] == expected_packet_count() + len(FRAME_STAMPS) + len(GROUND_TRUTH)


# ----------------------------------------------------------------- ROS side
_CTX = {}


def ros_node():
    """This module's rclpy node (own context and domain); fails if the ws is not built."""
    if "node" not in _CTX:
        try:
            rosenv.require_workspace("event_camera_msgs", "edge_vlm_msgs", "edge_vlm_ros",
                                     "edge_vlm_tools")
            if not os.path.isfile(PLAYER):
                raise rosenv.WorkspaceNotBuilt(f"{PLAYER} missing: run `make setup`")
            rosenv.activate()
        except rosenv.WorkspaceNotBuilt as exc:
            pytest.fail(str(exc), pytrace=False)
        import rclpy

        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=int(rosenv.DOMAIN_ID))
        _CTX["node"] = rclpy.create_node(f"test_bag_player_{os.getpid()}", context=ctx)
    return _CTX["node"]


def teardown_module(module):
    node = _CTX.pop("node", None)
    if node is not None:
        ctx = node.context
        node.destroy_node()
        if ctx.ok():
            ctx.shutdown()


def test_bag_cdr_is_what_rclpy_serializes(bag):
    """rosbags' CDR == rclpy's CDR (up to padding), so the player can publish raw bytes."""
    ros_node()
    from event_camera_msgs.msg import EventPacket
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    classes = {"event_camera_msgs/msg/EventPacket": EventPacket,
               "sensor_msgs/msg/Image": Image, "std_msgs/msg/String": String}
    ts = _typestore()
    _, msgs, _ = _read_all(bag["path"])
    for top, typ, _, raw in msgs:
        msg = deserialize_message(raw, classes[typ])
        again = serialize_message(msg)
        # Same layout and content; Fast CDR may leave alignment padding bytes
        # uninitialised, so compare modulo padding: rosbags writes zero padding,
        # and re-serialising rclpy's bytes with rosbags gives back the bag's bytes.
        assert len(again) == len(raw), top
        assert deserialize_message(again, classes[typ]) == msg, top
        assert ts.serialize_cdr(ts.deserialize_cdr(again, typ), typ) == raw, top


def test_player_qos_choice():
    """--qos auto follows design.md: sensor data for events/images, reliable otherwise."""
    ros_node()
    from edge_vlm_tools.player import parse_remaps, qos_for, split_ros_args
    from rclpy.qos import ReliabilityPolicy

    ev = qos_for("/event_camera/events", "event_camera_msgs/msg/EventPacket")
    assert ev.reliability == ReliabilityPolicy.BEST_EFFORT and ev.depth == 100
    img = qos_for("/some/camera", "sensor_msgs/msg/Image")
    assert img.reliability == ReliabilityPolicy.BEST_EFFORT
    gt = qos_for("/edge_vlm/ground_truth", "std_msgs/msg/String")
    assert gt.reliability == ReliabilityPolicy.RELIABLE and gt.depth == 50
    assert qos_for("/x", "edge_vlm_msgs/msg/Caption").reliability == ReliabilityPolicy.RELIABLE
    assert qos_for("/event_camera/events", "event_camera_msgs/msg/EventPacket",
                   "reliable").reliability == ReliabilityPolicy.RELIABLE
    assert parse_remaps(["/a:=/b", "c:=d"]) == {"/a": "/b", "/c": "/d"}
    with pytest.raises(ValueError):
        parse_remaps(["/a=/b"])
    assert split_ros_args(["bag", "--remap", "/a:=/b", "--ros-args", "-r", "x:=y", "--",
                           "--loop"]) == (["bag", "--remap", "/a:=/b", "--loop"],
                                          ["--ros-args", "-r", "x:=y", "--"])


def test_player_waits_per_topic_subscription_counts():
    """--wait-for TOPIC=N: the demo waits until every event subscriber of the graph (3 nodes +
    the recorder) matched before playing; bad items are refused with a clear message."""
    ros_node()
    from edge_vlm_tools.player import _parse_wait_for, _wait_for_subscribers

    assert _parse_wait_for(["event_camera/events=4", "/edge_vlm/ground_truth=1"]) == {
        "event_camera/events": 4, "edge_vlm/ground_truth": 1}
    for bad in (["events"], ["events=x"], ["=3"]):
        with pytest.raises(ValueError, match="TOPIC=N"):
            _parse_wait_for(bad)

    class Pub:                       # a publisher with a fixed number of matched subscriptions
        def __init__(self, name, count):
            self.topic_name, self.count = name, count

        def get_subscription_count(self):
            return self.count

    pubs = {"/event_camera/events": Pub("/event_camera/events", 3), "/gt": Pub("/gt", 1)}
    assert _wait_for_subscribers(None, pubs, 1, 0.2, True, {"event_camera/events": 3})
    assert not _wait_for_subscribers(None, pubs, 1, 0.2, True, {"event_camera/events": 4})
    assert not _wait_for_subscribers(None, pubs, 2, 0.2, True)


def test_player_holds_until_its_file_exists(tmp_path, capsys):
    """--hold-file: the player plays once the harness created the file; without it, after the
    timeout, with a warning."""
    import threading

    ros_node()
    from edge_vlm_tools.player import _hold

    go = tmp_path / "play.go"
    t0 = time.monotonic()
    assert not _hold(str(go), 0.3, True, alive=lambda: True)
    assert time.monotonic() - t0 >= 0.3
    assert f"{go} not there after 0.3 s; playing anyway" in capsys.readouterr().err
    threading.Timer(0.5, go.touch).start()
    t0 = time.monotonic()
    assert _hold(str(go), 30.0, False, alive=lambda: True)
    assert 0.5 <= time.monotonic() - t0 < 10.0
    out = capsys.readouterr().out
    assert f"holding until {go} exists" in out and "hold released" in out


@pytest.mark.timeout(120)
def test_player_publishes_every_packet(bag):
    node = ros_node()
    from edge_vlm.io.codecs.mono import decode_mono
    from edge_vlm.events import concat_events
    from event_camera_msgs.msg import EventPacket
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    qos = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
    ns = f"/play_{bag['storage']}"
    from rosgraph_msgs.msg import Clock

    from edge_vlm_ros.conversions import time_to_ns
    from edge_vlm_tools.player import CLOCK_QOS

    got = {"events": [], "image": [], "gt": []}
    clocks: list = []
    subs = [
        node.create_subscription(Clock, "/clock", lambda m: clocks.append(time_to_ns(m.clock)),
                                 CLOCK_QOS),
        node.create_subscription(EventPacket, ns + "/events", got["events"].append, qos),
        node.create_subscription(Image, ns + "/image", got["image"].append, qos),
        node.create_subscription(String, ns + "/gt", got["gt"].append, qos),
    ]
    cmd = [PLAYER, str(bag["path"]), "--qos", "reliable", "--rate", "2",
           "--wait-for-subscribers", "1", "--wait-timeout", "30", "--clock", "1000",
           "--remap", f"/event_camera/events:={ns}/events",
           "--remap", f"/camera/image_raw:={ns}/image",
           "--ros-args", "-r", f"/edge_vlm/ground_truth:={ns}/gt"]
    proc = subprocess.Popen(cmd, env=rosenv.sourced_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    n_packets = expected_packet_count()
    try:
        def done():
            return (len(got["events"]) >= n_packets and len(got["image"]) >= 2
                    and len(got["gt"]) >= 2)

        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if proc.poll() is not None:   # player finished: drain what is in flight
                deadline = min(deadline, time.monotonic() + 3.0)
        last_clock = time.monotonic() + 3.0    # the player's last /clock follows its messages
        while time.monotonic() < last_clock and not (clocks and clocks[-1] == max(
                (time_to_ns(m.header.stamp) for m in got["events"] + got["image"]), default=0)):
            executor.spin_once(timeout_sec=0.05)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        counts = {k: len(v) for k, v in got.items()}
        assert proc.returncode == 0, f"player failed (rc={proc.returncode}):\n{out}"
        assert counts == {"events": n_packets, "image": 2, "gt": 2}, \
            f"received {counts}, expected {n_packets} packets, 2 images, 2 gt:\n{out}"
        assert f"/event_camera/events -> {ns}/events: {n_packets}" in out, out
        assert f"/camera/image_raw -> {ns}/image: 2" in out, out
        assert f"/edge_vlm/ground_truth -> {ns}/gt: 2" in out, out

        assert [p.seq for p in got["events"]] == list(range(n_packets))
        events = concat_events(
            [decode_mono(p.events, p.time_base, p.width, p.height) for p in got["events"]])
        np.testing.assert_array_equal(events, bag["events"])
        assert [json.loads(m.data) for m in got["gt"]] == GROUND_TRUTH
        for img, ref in zip(got["image"], synthetic_frames()):
            assert bytes(img.data) == ref.tobytes()
        # --clock: /clock follows the header stamps of the played messages, never backwards,
        # up to the last one (best effort: some may be lost, the last one is re-sent at the end)
        stamps = {time_to_ns(m.header.stamp) for m in got["events"] + got["image"]}
        assert clocks and clocks == sorted(clocks) and set(clocks) <= stamps, clocks[:5]
        assert clocks[-1] == max(stamps) and "/clock: " in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        executor.remove_node(node)
        executor.shutdown()
        for s in subs:
            node.destroy_subscription(s)
