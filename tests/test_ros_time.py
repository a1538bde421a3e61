"""ROS time and messages a consumer can use (issue 18, deliver 6 and 7).

* The mapping sensor time -> EventPacket header clock (``edge_vlm.stream.clock``): a packet's
  reference sensor time (``time_base`` of mono / libcaer_cmp, the first event of evt3), the
  offset of the last packet that fed a frame, counted jumps; through the nodes' intake.
* The captioner's scheduler matches images in the header clock (nearest within a period) and
  counts the frames that find none (``images_unmatched``, ``image_gap_ns``).
* The change mask at the sensor's resolution (``sensor_mask_image``): a 640x480 sensor gives a
  640x480 image whose patch (c, r) lights exactly the sensor pixels binned into that patch.
* ``edge_vlm_play --clock``: the header stamp read from CDR, ``/clock`` advancing, throttled.
* Node level (launch_pytest: sttf_perception, anc_router and vlm_captioner, each in its own
  process, ``use_sim_time:=true``, this module's own ROS domain, LOCALHOST discovery): packets of
  a 640x480 sensor with header stamps in 2023 and event times near 0 -> TokenMask,
  RouteDecision, change-mask image, Caption and ComputeCost stamped in 2023 (never 1970), the
  masks and routes matched to the captioner's frames, an image stamped in 2023 fused, one
  stamped in sensor time counted as unmatched, diagnostics stamped by ``/clock``, and the last
  frame closed by the idle flush after ``/clock`` stopped.
"""
from __future__ import annotations

import array
import shlex

import launch_pytest
import numpy as np
import pytest
from launch import LaunchDescription
from launch.actions import SetEnvironmentVariable

import rosenv
from test_nodes import Harness, make_test_checkpoint

P = 33_333_333                                  # frame period of the default parameters (ns)
OFF = 1_690_000_000 * 10**9                     # header clock - sensor time: 2023-07-22
SW, SH = 640, 480                               # the sensor of the node-level test
PKGS = ("edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros", "edge_vlm_tools", "sttf_perception",
        "anc_router", "vlm_captioner")
EVENTS, IMAGE = "/t/time/events", "/t/time/image"


# ------------------------------------------------------------------------------ the mapping
def test_header_clock_maps_frames_with_their_last_packet():
    from edge_vlm.stream.clock import HeaderClock, packet_reference
    from edge_vlm.stream.frames import FedPacket, Frame

    assert packet_reference("mono", 1000, 1500) == 1000            # time_base-relative events
    assert packet_reference("libcaer_cmp", 1000, 1500) == 1000
    assert packet_reference("evt3", 123, 1500) == 1500              # time_base undefined
    hc = HeaderClock(P)
    assert hc.frame_offset(0) == 0 and hc.offset is None            # nothing seen: one clock
    # frame 3 is fed by two packets (offsets OFF+5 and OFF+7), frame 4 by the second only
    hc.packet(FedPacket("a", 3, 3, 3 * P + 10), OFF + 3 * P + 5, "mono", 3 * P)
    assert hc.packet(FedPacket("b", 3, 4, 3 * P + P // 2), OFF + 3 * P + P // 2 + 7, "mono",
                     3 * P + P // 2) == OFF + 7
    frames = [Frame(k, k * P, (k + 1) * P, None, SW, SH) for k in (3, 4, 5)]
    hc.stamp(frames)
    assert [f.stamp_offset for f in frames] == [OFF + 7] * 3        # frame 5: the latest offset
    assert frames[0].stamp_end == 4 * P + OFF + 7 and frames[0].stamp_start == 3 * P + OFF + 7
    assert frames[0].t_end == 4 * P                                 # still cut on sensor time
    # evt3: the first event is the reference
    assert hc.packet(FedPacket("c", 6, 6, 6 * P + 99), OFF + 6 * P + 99 + 3, "evt3", 0) == OFF + 3
    assert hc.jumps == 0
    hc.packet(FedPacket("d", 7, 7, 7 * P), 7 * P, "mono", 7 * P)    # a driver restamped: a jump
    assert hc.jumps == 1
    for k in range(10, 10 + 2 * HeaderClock.MAX_FRAMES):            # bounded memory
        hc.packet(FedPacket(k, k, k, k * P), k * P, "mono", k * P)
    assert len(hc._frames) <= HeaderClock.MAX_FRAMES


def _mono(events, time_base: int) -> bytes:
    from edge_vlm.io.codecs.mono import encode_mono
    return encode_mono(events, time_base)


def _patch_events(k: int, col: int, row: int, n: int = 400, seed: int = 0):
    """``n`` events of frame k inside model patch (col, row) of a 640x480 sensor (8-px patches
    of the 128x128 model image = 40x30 sensor pixels)."""
    from edge_vlm.events import make_events

    rng = np.random.default_rng(seed + k)
    t = np.sort(rng.integers(k * P, (k + 1) * P, n))
    return make_events(t, col * 40 + rng.integers(0, 40, n), row * 30 + rng.integers(0, 30, n),
                       rng.integers(0, 2, n))


@pytest.mark.parametrize("backend", ["numpy", None])
def test_intake_frames_from_2023_packets_are_stamped_in_2023(backend):
    from edge_vlm.stream.binner import FrameBinner
    from edge_vlm.stream.clock import HeaderClock
    from edge_vlm.stream.intake import PacketIntake

    intake = PacketIntake(FrameBinner(P, track_packets=True, backend=backend))
    hc, frames = HeaderClock(P), []
    for k in range(1, 6):                      # sensor time near 0, header stamps in 2023
        ev = _patch_events(k, 2, 3)
        for lo, hi in ((k * P, k * P + P // 2), (k * P + P // 2, (k + 1) * P)):
            part = ev[(ev["t"] >= lo) & (ev["t"] < hi)]
            res = intake.push("mono", _mono(part, lo), SW, SH, lo, k, tag=(lo + OFF, lo))
            for f in intake.binner.pop_fed():
                hc.packet(f, f.tag[0], "mono", f.tag[1])
            hc.stamp(res.frames)
            frames += res.frames
    res = intake.flush()
    hc.stamp(res.frames)
    frames += res.frames
    assert [f.index for f in frames] == [1, 2, 3, 4, 5]
    for f in frames:
        assert f.t_end == (f.index + 1) * P                          # cut on sensor time
        assert f.stamp_end == f.t_end + OFF and f.stamp_end // 10**9 >= 1_690_000_000


# ------------------------------------------------------------------------------ RGB matching
def _scheduler(use_rgb: str = "auto"):
    from edge_vlm.cores.schedule import CaptionScheduler
    from edge_vlm.params import resolve

    params = resolve("vlm_captioner", {"mask_source": "local", "use_rgb": use_rgb,
                                       "checkpoint": "unused.pt"})
    return CaptionScheduler(params, 256, P)


def _image(stamp: int):
    from edge_vlm.cores.images import RawImage
    return RawImage(stamp, 2, 2, "rgb8", 6, bytes(12))


def test_images_are_matched_in_the_header_clock_and_mismatches_counted():
    from edge_vlm.stream.frames import Frame
    from edge_vlm.stream.intake import FrameInput

    s = _scheduler()
    frames = [Frame(k, k * P, (k + 1) * P, None, SW, SH, stamp_offset=OFF) for k in (30, 31, 32)]
    # a camera stamped with ROS time: the image nearest to the frame end (within P) is fused
    near, far = _image(OFF + 31 * P + 2_000_000), _image(OFF + 31 * P - P // 2)
    s.add_image(far)
    s.add_image(near)
    s.add_frames(frames[:1], [FrameInput()], 0.0)
    ready = s.next_ready(0.0)
    assert ready.image is near and s.images_unmatched == 0
    # a camera stamped in sensor time (1970): never fused, counted, the gap says why
    s = _scheduler()
    s.add_image(_image(32 * P))
    s.add_frames(frames[1:2], [FrameInput()], 0.0)
    ready = s.next_ready(0.0)
    assert ready.image is None and s.images_unmatched == 1
    assert s.image_gap_ns == 32 * P - frames[1].stamp_end             # about -OFF
    s.add_frames(frames[2:], [FrameInput()], 0.0)                    # no image left: not counted
    assert s.next_ready(0.0).image is None and s.images_unmatched == 1


# ------------------------------------------------------------------------------ change mask
def test_change_mask_image_at_the_sensor_resolution():
    from edge_vlm.cores.perception import PerceptionCore, sensor_mask_image
    from edge_vlm.stream.frames import Frame
    from edge_vlm.stream.histogram import scale_coords

    core = PerceptionCore({"mask_method": "event_count"})
    ev = _patch_events(7, col=5, row=11)
    r = core.process(Frame(7, 7 * P, 8 * P, ev, SW, SH))
    assert list(r.active_indices) == [11 * 16 + 5]
    img = sensor_mask_image(r.mask_image, SW, SH)
    assert img.shape == (SH, SW) and img.dtype == np.uint8
    want = np.zeros((SH, SW), np.uint8)
    want[11 * 30:12 * 30, 5 * 40:6 * 40] = 255                      # patch (5, 11): 40x30 pixels
    assert np.array_equal(img, want)
    # any sensor size: a pixel is lit iff the model pixel its events are binned into is
    for w, h in ((346, 260), (1280, 720), (64, 48)):
        rng = np.random.default_rng(w)
        small = (rng.random((16, 16)) < 0.3)
        mask = (np.repeat(np.repeat(small, 8, 0), 8, 1) * 255).astype(np.uint8)
        big = sensor_mask_image(mask, w, h)
        xs, ys = scale_coords(np.arange(w), np.arange(h), w, h, 128, 128)
        assert big.shape == (h, w)
        assert np.array_equal(big > 0, small[ys[:, None] // 8, xs[None, :] // 8])


# ------------------------------------------------------------------------------ --clock
@pytest.fixture(scope="module")
def ros_process():
    rosenv.require_workspace(*PKGS)
    rosenv.activate()


def test_player_clock_from_header_stamps(ros_process):
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    from edge_vlm_ros.conversions import ns_to_time, time_to_ns
    from edge_vlm_tools.player import SimClock, has_header, header_stamp_ns
    from event_camera_msgs.msg import EventPacket

    m = EventPacket()
    m.header.stamp = ns_to_time(OFF + 123_456_789)
    m.encoding, m.events = "mono", array.array("B", bytes(16))
    raw = serialize_message(m)
    assert header_stamp_ns(raw) == OFF + 123_456_789
    assert has_header(EventPacket) and not has_header(String)

    class Pub:
        def __init__(self):
            self.sent = []

        def publish(self, msg):
            self.sent.append(time_to_ns(msg.clock))

    def packet(ns: int) -> bytes:
        m.header.stamp = ns_to_time(ns)
        return serialize_message(m)

    clock = SimClock(Pub(), 3600.0, conns={1})                       # at most one per hour
    clock.message(1, packet(OFF + 5))
    clock.message(1, packet(OFF + 9))                                # throttled
    clock.message(1, packet(OFF + 7))                                # never backwards
    clock.message(2, serialize_message(String(data="no header")))    # not a clock source
    assert clock.pub.sent == [OFF + 5] and clock.now_ns == OFF + 9
    clock.flush()
    assert clock.pub.sent == [OFF + 5, OFF + 9] and clock.published == 2
    clock.restart()                                                   # --loop: from the start
    clock.sent_at = float("-inf")
    clock.message(1, packet(OFF + 1))
    assert clock.pub.sent[-1] == OFF + 1


# ------------------------------------------------------------------------------ node level
@pytest.fixture(scope="module")
def graph_env():
    """The sourced workspace in a free ROS domain of its own (LOCALHOST discovery)."""
    rosenv.require_workspace(*PKGS)      # an unbuilt workspace: a failure with a clear message
    from edge_vlm_ros.lifeline import free_domain_id

    return rosenv.node_test_env(free_domain_id(), *PKGS)


@pytest.fixture(scope="module")
def harness(graph_env):
    import rclpy

    rclpy.init(domain_id=int(graph_env["ROS_DOMAIN_ID"]))
    h = Harness()
    yield h
    h.node.destroy_node()
    rclpy.try_shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_test_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "rigged.pt"))


@launch_pytest.fixture(scope="module")
def sim_time_graph(graph_env, checkpoint):
    """The three nodes under use_sim_time, fed by this test (events, image, /clock)."""
    from launch_ros.actions import Node

    from edge_vlm_ros.lifeline import exec_prefix

    prefix = shlex.join(exec_prefix())
    remaps = [("event_camera/events", EVENTS), ("camera/image_raw", IMAGE)]
    params = {"sttf_perception": {"mask_method": "event_count", "publish_mask_image": True},
              "anc_router": {"router_method": "density"},
              "vlm_captioner": {"checkpoint": checkpoint, "mask_source": "topic",
                                "mask_timeout_ms": 2000.0, "use_rgb": "auto"}}
    nodes = [Node(package=n, executable=n, name=n, parameters=[{"use_sim_time": True, **p}],
                  remappings=remaps, output="screen", prefix=prefix)
             for n, p in params.items()]
    env = [SetEnvironmentVariable(k, v) for k, v in graph_env.items()
           if k in ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH", "ROS_DOMAIN_ID",
                    "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                    "RCUTILS_LOGGING_BUFFERED_STREAM")]
    return LaunchDescription(env + nodes + [launch_pytest.actions.ReadyToTest()])


class Feed:
    """The test's inputs: 640x480 mono EventPackets stamped OFF + time_base, images, /clock."""

    def __init__(self, harness: Harness):
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image

        from edge_vlm_ros.qos import SENSOR
        from edge_vlm_tools.player import CLOCK_QOS
        from event_camera_msgs.msg import EventPacket

        self.h = harness
        self.Clock, self.EventPacket = Clock, EventPacket
        self.events = harness.publisher(EventPacket, EVENTS, SENSOR)
        self.image = harness.publisher(Image, IMAGE, SENSOR)
        self.clock = harness.publisher(Clock, "/clock", CLOCK_QOS)
        self.seq = 0

    def frames(self, k_from: int, k_to: int, before=None) -> None:
        """Frames k_from..k_to-1, two packets each, /clock = each packet's header stamp; no
        closing packet (the idle flush closes the last frame)."""
        from edge_vlm_ros.conversions import ns_to_time

        for k in range(k_from, k_to):
            if before is not None:
                before(k)
            ev = _patch_events(k, col=5, row=11)
            for lo, hi in ((k * P, k * P + P // 2), (k * P + P // 2, (k + 1) * P)):
                m = self.EventPacket()
                m.header.stamp, m.header.frame_id = ns_to_time(lo + OFF), "dvs_time"
                m.width, m.height, m.seq, m.time_base = SW, SH, self.seq, lo
                m.encoding, m.is_bigendian = "mono", False
                part = ev[(ev["t"] >= lo) & (ev["t"] < hi)]
                m.events = array.array("B", _mono(part, lo))
                self.clock.publish(self.Clock(clock=m.header.stamp))
                self.events.publish(m)
                self.seq += 1
            self.h.spin_for(0.03)

    def publish_image(self, stamp: int) -> None:
        from edge_vlm_ros.conversions import numpy_to_image
        self.image.publish(numpy_to_image(np.full((48, 64, 3), 90, np.uint8), "rgb8", stamp))


def _diag_values(diags, node: str) -> dict:
    """The latest status values of ``edge_vlm/<node>`` (with the array's stamp in ns)."""
    from edge_vlm_ros.conversions import time_to_ns

    for arr in reversed(diags):
        for st in arr.status:
            if st.name == f"edge_vlm/{node}":
                return {**{kv.key: kv.value for kv in st.values},
                        "stamp_ns": time_to_ns(arr.header.stamp)}
    return {}


def _stamp(k: int) -> int:
    """Every output about frame k: its end in the header clock."""
    return (k + 1) * P + OFF


@pytest.mark.timeout(150)
@pytest.mark.launch(fixture=sim_time_graph)
def test_outputs_are_stamped_in_the_packets_clock_under_sim_time(harness):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from edge_vlm_msgs.msg import Caption, ComputeCost, RouteDecision, TokenMask
    from edge_vlm_ros.conversions import time_to_ns
    from edge_vlm_ros.qos import DIAGNOSTICS_QOS, RELIABLE_10, RELIABLE_50, SENSOR

    masks = harness.collect(TokenMask, "/edge_vlm/token_mask", RELIABLE_10)
    change = harness.collect(Image, "/edge_vlm/change_mask", SENSOR)
    routes = harness.collect(RouteDecision, "/edge_vlm/route", RELIABLE_10)
    caps = harness.collect(Caption, "/edge_vlm/caption", RELIABLE_50)
    costs = harness.collect(ComputeCost, "/edge_vlm/compute_cost", RELIABLE_50)
    diags = harness.collect(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
    feed = Feed(harness)
    n = harness.node
    harness.spin_until(lambda: feed.events.get_subscription_count() >= 3
                       and feed.image.get_subscription_count() >= 1
                       and n.count_publishers("/edge_vlm/token_mask") >= 1
                       and n.count_subscribers("/edge_vlm/token_mask") >= 2
                       and n.count_publishers("/edge_vlm/route") >= 1
                       and n.count_subscribers("/edge_vlm/route") >= 2, 90.0, "the three nodes")
    harness.spin_for(0.5)

    k0, k_rgb = 30, 33                        # sensor time ~1 s, header clock 2023
    feed.frames(k0, k0 + 6, before=lambda k: feed.publish_image(_stamp(k))
                if k == k_rgb else None)
    want = [_stamp(k) for k in range(k0, k0 + 6)]

    def stamps(msgs):
        return {time_to_ns(m.header.stamp) for m in msgs}

    # the last frame: closed by the idle flush (steady clock) although /clock stopped
    harness.spin_until(lambda: set(want) <= stamps(caps) and set(want) <= stamps(costs)
                       and set(want) <= stamps(masks) and set(want) <= stamps(routes), 40.0,
                       "outputs of 6 frames")
    for k, stamp in zip(range(k0, k0 + 6), want):
        m = next(x for x in masks if time_to_ns(x.header.stamp) == stamp)
        assert time_to_ns(m.window_start) == k * P                   # sensor time
        assert (m.sensor_width, m.sensor_height) == (SW, SH)
        assert (m.image_width, m.image_height, m.grid_width, m.patch_size) == (128, 128, 16, 8)
        assert list(m.active_indices) == [11 * 16 + 5] and m.header.frame_id == "dvs_time"
        r = next(x for x in routes if time_to_ns(x.header.stamp) == stamp)
        assert time_to_ns(r.window_start) == k * P
        c = next(x for x in caps if time_to_ns(x.header.stamp) == stamp)
        assert c.header.stamp.sec >= 1_690_000_000                    # 2023, not 1970
        assert (time_to_ns(c.window_start), time_to_ns(c.window_end)) == (k * P, (k + 1) * P)
        assert c.frame_index == k and c.input_mode == ("rgb+events" if k == k_rgb else "events")
        assert {k * P + OFF, k * P + P // 2 + OFF} <= {time_to_ns(s) for s in c.input_stamps}
    assert _stamp(k_rgb) in {time_to_ns(s) for s in
                             next(c for c in caps if c.frame_index == k_rgb).input_stamps}
    harness.spin_until(lambda: set(want[:-1]) <= stamps(change), 5.0, "change-mask images")
    img = next(i for i in change if time_to_ns(i.header.stamp) == want[0])
    assert (img.encoding, img.width, img.height, img.header.frame_id) == \
        ("mono8", SW, SH, "dvs_time")
    px = np.frombuffer(bytes(img.data), np.uint8).reshape(SH, SW)
    lit = np.zeros((SH, SW), bool)
    lit[11 * 30:12 * 30, 5 * 40:6 * 40] = True                        # patch (5, 11) only
    assert np.array_equal(px == 255, lit) and set(np.unique(px)) == {0, 255}

    # a camera stamped in sensor time (1970) is never fused: counted, with the gap
    feed.publish_image((k0 + 8) * P)
    harness.spin_for(0.1)
    feed.frames(k0 + 6, k0 + 9)
    want2 = [_stamp(k) for k in range(k0 + 6, k0 + 9)]
    harness.spin_until(lambda: set(want2) <= stamps(caps), 30.0, "captions of 3 more frames")
    assert all(c.input_mode == "events" for c in caps if time_to_ns(c.header.stamp) in want2)

    def settled():
        v = _diag_values(diags, "vlm_captioner")
        return v and int(v["captions"]) >= 9 and int(v["images_unmatched"]) >= 1

    harness.spin_until(settled, 10.0, "the captioner's diagnostics")
    v = _diag_values(diags, "vlm_captioner")
    assert int(v["masks_used"]) == 9 and int(v["mask_fallbacks"]) == 0, v   # matched by window
    assert int(v["route_fallbacks"]) == 0 and int(v["rgb_frames"]) == 1, v
    assert float(v["image_gap_ms"]) < -1e12, v                       # ~ -OFF: 1970 vs 2023
    assert OFF <= v["stamp_ns"] <= _stamp(k0 + 9), v                 # diagnostics: /clock time
