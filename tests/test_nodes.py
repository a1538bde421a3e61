"""Each node alone, in its own process, driven by a test node in this process.

The launch_pytest shape without ``launch``: the node processes are started
with the same command lines the runner uses (``edge_vlm_tools.runner.node_command``),
every node gets its own input topics (remapped) so the nodes do not feed each
other, and all assertions wait with timeouts. The module uses its own
ROS_DOMAIN_ID. An unbuilt workspace is a failure (WorkspaceNotBuilt), not a skip.
"""
from __future__ import annotations

import array
import os
import subprocess
import time

import numpy as np
import pytest

import rosenv

PKGS = ("edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros", "edge_vlm_tools", "sttf_perception",
        "anc_router", "vlm_captioner")
DOMAIN = 1 + os.getpid() % 115                    # test_integration uses 116..230
P = 33_333_333                                    # frame period of the default parameters (ns)
K0 = 3000                                         # first frame index of the synthetic stream
W = H = 128
GOOD_STAMP_OFFSET = 12_345                        # EventPacket header.stamp = time_base + this


def stamp_of(k: int) -> int:
    """``header.stamp`` of every output about frame k: its end in the EventPacket header clock
    (the packets' header.stamp - time_base is GOOD_STAMP_OFFSET; edge_vlm.stream.clock)."""
    return (k + 1) * P + GOOD_STAMP_OFFSET

pytestmark = pytest.mark.timeout(120)


# ----------------------------------------------------------------------------- helpers
def make_test_checkpoint(path: str) -> str:
    """A small untrained joint STTF+ANC model rigged for the ROS tests.

    * its last decoder LayerNorm outputs a word embedding, so captions are never empty
      (untrained models usually emit <eos> first);
    * the change-mask net is untrained, i.e. exactly the event-count rule (k = 3);
    * the complexity estimator always says "medium" (so a budget <= 1/3 visibly routes to tiny).
    """
    import torch

    from edge_vlm.model.anc import AncModel
    from edge_vlm.model.config import ModelConfig
    from edge_vlm.model.sttf import CaptionModel
    from edge_vlm.model.checkpoint import save_checkpoint
    from edge_vlm.model.tokenizer import Tokenizer

    tok = Tokenizer.build(["a person waves the right hand", "a person claps both hands"])
    torch.manual_seed(0)
    model = CaptionModel(ModelConfig(dim=32, heads=2, depth=2, vocab=tok.vocab))
    emb = model.decoder.tok.weight.detach()
    specials = {tok.pad, tok.bos, tok.eos, tok.unk}
    for wid in range(len(tok.vocab)):
        if wid in specials:
            continue
        bias = emb[wid] * 50.0
        if int(torch.argmax(emb @ bias)) == wid:
            break
    with torch.no_grad():
        model.decoder.ln.weight.zero_()
        model.decoder.ln.bias.copy_(bias)
    joint = AncModel.grow_from(model)
    with torch.no_grad():
        joint.estimator.fc.weight.zero_()
        joint.estimator.fc.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    save_checkpoint(path, joint, extra={"model_id": "test-rigged"}, half=False)
    return path


def blob_events(k: int, n: int = 600, x0: int = 20, y0: int = 40, size: int = 16,
                seed: int = 0) -> np.ndarray:
    """``n`` events of a square blob moving right, inside frame ``k``, time sorted."""
    from edge_vlm.events import make_events

    rng = np.random.default_rng(seed + k)
    t = np.sort(rng.integers(k * P, (k + 1) * P, n))
    x = (x0 + 3 * (k - K0)) % (W - size) + rng.integers(0, size, n)
    y = y0 + rng.integers(0, size, n)
    return make_events(t, x, y, rng.integers(0, 2, n))


class Harness:
    """The test node: publishers, collectors, spin helpers."""

    def __init__(self):
        import rclpy
        from rclpy.node import Node

        self.rclpy = rclpy
        self.node = Node("edge_vlm_test_harness")
        self.received: dict[str, list] = {}
        self.pubs = {}
        self.seq: dict[str, int] = {}

    def publisher(self, msg_type, topic, qos):
        if topic not in self.pubs:
            self.pubs[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self.pubs[topic]

    def collect(self, msg_type, topic, qos) -> list:
        if topic not in self.received:
            lst = self.received[topic] = []
            self.node.create_subscription(msg_type, topic, lst.append, qos)
        return self.received[topic]

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.01)

    def spin_until(self, pred, timeout: float, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            self.rclpy.spin_once(self.node, timeout_sec=0.02)
        assert pred(), f"timed out after {timeout} s waiting for {what}"

    def wait_subscribers(self, topic: str, proc=None, timeout: float = 40.0) -> None:
        pub = self.pubs[topic]

        def ready():
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{proc.name} exited with {proc.returncode}:\n"
                                     f"{proc.output()[-3000:]}")
            return pub.get_subscription_count() >= 1

        self.spin_until(ready, timeout, f"a subscriber on {topic}")
        self.spin_for(0.3)   # let the subscriber side match too

    def wait_publishers(self, topic: str, timeout: float = 20.0) -> None:
        """Until a publisher of ``topic`` is seen (a collector subscribed to a volatile topic
        gets nothing published before it matched)."""
        self.spin_until(lambda: self.node.count_publishers(topic) >= 1, timeout,
                        f"a publisher on {topic}")
        self.spin_for(0.3)

    def send_packet(self, topic: str, *, events=None, time_base: int = 0, encoding: str = "mono",
                    width: int = W, height: int = H, payload: bytes | None = None,
                    seq: int | None = None):
        from edge_vlm.io.codecs.mono import encode_mono
        from edge_vlm_ros.conversions import ns_to_time
        from edge_vlm_ros.qos import SENSOR
        from event_camera_msgs.msg import EventPacket

        pub = self.publisher(EventPacket, topic, SENSOR)
        s = self.seq.get(topic, 0) if seq is None else seq
        self.seq[topic] = s + 1
        m = EventPacket()
        m.header.stamp = ns_to_time(time_base + GOOD_STAMP_OFFSET)
        m.header.frame_id = "dvs_test"
        m.width, m.height = width, height
        m.seq = s
        m.time_base = time_base
        m.encoding = encoding
        m.is_bigendian = False
        data = payload if payload is not None else encode_mono(events, time_base)
        m.events = array.array("B", data)
        pub.publish(m)
        return m

    def send_frames(self, topic: str, k_from: int, k_to: int, n: int = 600, close: bool = True,
                    between=None) -> list[int]:
        """Events of frames k_from..k_to-1 in two packets per frame; an empty packet closes the
        last frame.

        Returns the header stamps (ns) of the packets sent. ``between(k)`` runs before frame k.
        """
        stamps = []
        for k in range(k_from, k_to):
            if between is not None:
                between(k)
            ev = blob_events(k, n)
            half = (k * P + P // 2)
            for lo, hi in ((k * P, half), (half, (k + 1) * P)):
                part = ev[(ev["t"] >= lo) & (ev["t"] < hi)]
                self.send_packet(topic, events=part, time_base=lo)
                stamps.append(lo + GOOD_STAMP_OFFSET)
            self.spin_for(0.02)
        if close:
            self.send_packet(topic, events=blob_events(0, 0), time_base=k_to * P)
        return stamps


class NodeProc:
    """One node executable in its own process, output to a log file."""

    def __init__(self, package: str, log_dir, params=None, remaps=None, env=None):
        from edge_vlm.cores.graph import NodeSpec
        from edge_vlm_tools.runner import find_executable, node_command

        self.name = package
        self.env = env
        exe = find_executable(package, package, env)
        spec = NodeSpec(package, package, package, "", dict(params or {}), dict(remaps or {}))
        self.cmd = node_command(spec, exe)
        self.log_path = os.path.join(str(log_dir), f"{package}.log")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def poll(self):
        return self.proc.poll()

    @property
    def returncode(self):
        return self.proc.returncode

    def output(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def stop(self, timeout: float = 15.0) -> int:
        from edge_vlm_tools.runner import stop_graph
        self.proc.name = self.name
        stop_graph([self.proc], timeout)
        return self.proc.returncode


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env():
    return rosenv.node_test_env(DOMAIN, *PKGS)


@pytest.fixture(scope="module")
def harness(env):
    import rclpy

    rclpy.init(domain_id=DOMAIN)
    h = Harness()
    yield h
    h.node.destroy_node()
    rclpy.try_shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_test_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "rigged.pt"))


@pytest.fixture(scope="module")
def nodes(env, harness, checkpoint, tmp_path_factory):
    """The three nodes, isolated on their own input topics, started in parallel."""
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "sttf_perception": NodeProc("sttf_perception", logs,
                                    {"publish_mask_image": True, "checkpoint": checkpoint},
                                    {"event_camera/events": "/t/sttf/events"}, env),
        "anc_router": NodeProc("anc_router", logs,
                               {"compute_budget": 1.0, "checkpoint": checkpoint},
                               {"event_camera/events": "/t/router/events"}, env),
        "vlm_captioner": NodeProc("vlm_captioner", logs,
                                  {"checkpoint": checkpoint, "mask_source": "topic",
                                   "mask_timeout_ms": 100.0},
                                  {"event_camera/events": "/t/cap/events",
                                   "edge_vlm/token_mask": "/t/cap/mask",
                                   "edge_vlm/route": "/t/cap/route",
                                   "camera/image_raw": "/t/cap/image"}, env),
    }
    yield procs
    for p in procs.values():
        p.stop()


def _grid_ok(stamps_ns) -> bool:
    return all((s - GOOD_STAMP_OFFSET) % P == 0 for s in stamps_ns)


# ----------------------------------------------------------------------------- sttf_perception
def test_perception_publishes_token_masks(harness, nodes):
    from sensor_msgs.msg import Image

    from edge_vlm_msgs.msg import TokenMask
    from edge_vlm_ros.conversions import time_to_ns
    from edge_vlm_ros.qos import RELIABLE_10, SENSOR

    masks = harness.collect(TokenMask, "/edge_vlm/token_mask", RELIABLE_10)
    images = harness.collect(Image, "/edge_vlm/change_mask", SENSOR)
    # creates the publisher
    harness.send_packet("/t/sttf/events", events=blob_events(0, 0), time_base=(K0 - 10) * P)
    harness.wait_subscribers("/t/sttf/events", nodes["sttf_perception"])
    harness.send_frames("/t/sttf/events", K0, K0 + 6)
    want = {stamp_of(k) for k in range(K0, K0 + 6)}
    harness.spin_until(lambda: want <= {time_to_ns(m.header.stamp) for m in masks}, 15.0,
                       "6 token masks")
    harness.spin_until(lambda: len(images) >= 5, 5.0, "change mask images")
    for m in masks:
        stamp = time_to_ns(m.header.stamp)
        if stamp not in want:
            continue
        assert time_to_ns(m.window_start) == stamp - GOOD_STAMP_OFFSET - P   # sensor time
        assert (m.grid_width, m.grid_height, m.patch_size) == (16, 16, 8)
        assert m.total_tokens == 256 and (m.image_width, m.image_height) == (W, H)
        assert (m.sensor_width, m.sensor_height) == (W, H)
        assert 0 < len(m.active_indices) <= 16, "the 16x16 blob covers at most 9 patches (+ edge)"
        assert len(m.scores) == len(m.active_indices)
        assert list(m.active_indices) == sorted(m.active_indices) and max(m.active_indices) < 256
        assert all(0.0 < s <= 1.0 for s in m.scores)
        assert m.active_fraction == pytest.approx(len(m.active_indices) / 256)
        # the rigged checkpoint's (untrained) change-mask net is the event-count rule
        assert m.event_count == 600 and m.method == "learned" and m.threshold == 0.5
        assert m.header.frame_id == "dvs_test"
    img = images[-1]
    assert (img.encoding, img.width, img.height) == ("mono8", W, H)
    px = np.frombuffer(bytes(img.data), dtype=np.uint8)
    assert set(np.unique(px)) <= {0, 255} and (px == 255).any()
    assert _grid_ok(time_to_ns(i.header.stamp) for i in images)


def test_perception_rejects_malformed_packets_and_keeps_running(harness, nodes):
    from edge_vlm_msgs.msg import TokenMask
    from edge_vlm_ros.conversions import time_to_ns
    from edge_vlm_ros.qos import RELIABLE_10

    topic = "/t/sttf/events"
    masks = harness.collect(TokenMask, "/edge_vlm/token_mask", RELIABLE_10)
    if topic not in harness.pubs:
        harness.send_packet(topic, events=blob_events(0, 0), time_base=(K0 - 10) * P)
    harness.wait_subscribers(topic, nodes["sttf_perception"])
    k = K0 + 20
    good = blob_events(k)
    tb = k * P
    harness.send_packet(topic, events=good, time_base=tb, encoding="bogus_enc")  # unknown encoding
    harness.send_packet(topic, payload=b"\x01" * 13, time_base=tb)              # truncated payload
    bad = good.copy()
    bad["x"][5] = 200
    from edge_vlm.io.codecs.mono import encode_mono
    harness.send_packet(topic, payload=encode_mono(bad, tb), time_base=tb)      # x outside 128
    harness.send_packet(topic, events=good, time_base=tb, width=0, height=0)    # zero size
    harness.spin_for(0.2)
    proc = nodes["sttf_perception"]
    harness.spin_until(lambda: proc.output().count("rejected packet seq=") >= 4, 10.0,
                       "4 rejection log lines")
    assert proc.poll() is None, "node died on malformed input"
    out = proc.output()
    assert "bogus_enc" in out and "truncated" in out and "outside sensor" in out and "0x0" in out
    # good packets afterwards are still processed
    n0 = len(masks)
    harness.send_frames(topic, k + 1, k + 4)
    want = {stamp_of(j) for j in range(k + 1, k + 4)}
    harness.spin_until(lambda: want <= {time_to_ns(m.header.stamp) for m in masks[n0:]}, 10.0,
                       "token masks after the malformed packets")
    assert proc.poll() is None


# ----------------------------------------------------------------------------- anc_router
def test_router_decisions_and_runtime_budget(harness, nodes):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    from edge_vlm_msgs.msg import RouteDecision
    from edge_vlm_ros.conversions import time_to_ns
    from edge_vlm_ros.qos import RELIABLE_10

    topic = "/t/router/events"
    routes = harness.collect(RouteDecision, "/edge_vlm/route", RELIABLE_10)
    harness.wait_publishers("/edge_vlm/route")
    harness.send_packet(topic, events=blob_events(0, 0), time_base=(K0 - 10) * P)
    harness.wait_subscribers(topic, nodes["anc_router"])
    harness.send_frames(topic, K0, K0 + 4, n=2000)          # the rigged estimator says "medium"
    want = {stamp_of(k) for k in range(K0, K0 + 4)}
    harness.spin_until(lambda: want <= {time_to_ns(r.header.stamp) for r in routes}, 15.0,
                       "4 route decisions")
    for r in routes:
        assert list(r.levels) == ["tiny", "small", "medium"]
        assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-4)
        assert r.complexity_level == 2 and 0.0 <= r.complexity_score <= 1.0
        assert r.compute_budget == pytest.approx(1.0)
        assert list(r.branches_run) == ["medium"]
        assert list(r.branch_weights) == [pytest.approx(1.0)]
        assert 0.0 < r.estimated_flops < r.estimated_flops_dense
    assert _grid_ok(time_to_ns(r.header.stamp) for r in routes)

    client = harness.node.create_client(SetParameters, "/anc_router/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0), "anc_router parameter service missing"

    def set_param(name, value: float):
        req = SetParameters.Request()
        req.parameters = [Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE, double_value=value))]
        fut = client.call_async(req)
        harness.spin_until(fut.done, 10.0, "SetParameters response")
        return fut.result().results[0]

    bad = set_param("compute_budget", 5.0)
    assert not bad.successful and "compute_budget" in bad.reason
    ro = set_param("frame_period_ms", 10.0)
    assert not ro.successful
    ok = set_param("compute_budget", 0.3)
    assert ok.successful, ok.reason

    n0 = len(routes)
    harness.send_frames(topic, K0 + 10, K0 + 13, n=2000)
    want = {stamp_of(k) for k in range(K0 + 10, K0 + 13)}
    harness.spin_until(lambda: want <= {time_to_ns(r.header.stamp) for r in routes[n0:]}, 15.0,
                       "route decisions after the budget change")
    after = [r for r in routes[n0:] if time_to_ns(r.header.stamp) in want]
    assert all(r.compute_budget == pytest.approx(0.3) for r in after)
    assert all(list(r.branches_run) == ["tiny"] and r.complexity_level == 2 for r in after)


# ----------------------------------------------------------------------------- vlm_captioner
def test_captioner_captions_and_costs(harness, nodes):
    from std_msgs.msg import String

    from edge_vlm_msgs.msg import Caption, ComputeCost, RouteDecision, TokenMask
    from edge_vlm_ros.conversions import ns_to_time, numpy_to_image, time_to_ns
    from edge_vlm_ros.qos import RELIABLE_10, RELIABLE_50, SENSOR
    from sensor_msgs.msg import Image

    topic = "/t/cap/events"
    caps = harness.collect(Caption, "/edge_vlm/caption", RELIABLE_50)
    texts = harness.collect(String, "/edge_vlm/caption_text", RELIABLE_50)
    costs = harness.collect(ComputeCost, "/edge_vlm/compute_cost", RELIABLE_50)
    mask_pub = harness.publisher(TokenMask, "/t/cap/mask", RELIABLE_10)
    route_pub = harness.publisher(RouteDecision, "/t/cap/route", RELIABLE_10)
    image_pub = harness.publisher(Image, "/t/cap/image", SENSOR)
    harness.send_packet(topic, events=blob_events(0, 0), time_base=(K0 - 10) * P)
    harness.wait_subscribers(topic, nodes["vlm_captioner"], timeout=60.0)
    harness.wait_subscribers("/t/cap/mask", nodes["vlm_captioner"])
    harness.wait_subscribers("/t/cap/route", nodes["vlm_captioner"])
    harness.wait_subscribers("/t/cap/image", nodes["vlm_captioner"])

    k_mask, k_route, k_rgb = K0 + 1, K0 + 2, K0 + 3

    def before(k):
        end = stamp_of(k)           # masks and routes are matched by window_start (sensor time)
        if k in (k_mask, K0 + 4):   # the mask for this frame arrives before the frame closes
            m = TokenMask()
            m.header.stamp, m.window_start = ns_to_time(end), ns_to_time(k * P)
            m.total_tokens, m.grid_width, m.grid_height, m.patch_size = 256, 16, 16, 8
            m.active_indices = [1, 2, 3]
            m.scores = [1.0, 1.0, 1.0]
            mask_pub.publish(m)
        if k == k_route:
            r = RouteDecision()
            r.header.stamp, r.window_start = ns_to_time(end), ns_to_time(k * P)
            r.levels = ["tiny", "small", "medium"]
            r.branches_run, r.branch_weights = ["small"], [1.0]
            route_pub.publish(r)
        if k == k_rgb:
            image_pub.publish(numpy_to_image(np.full((64, 96, 3), 128, np.uint8), "rgb8", end))
        harness.spin_for(0.05)

    sent = harness.send_frames(topic, K0, K0 + 6, between=before)
    want = [stamp_of(k) for k in range(K0, K0 + 6)]
    harness.spin_until(lambda: set(want) <= {time_to_ns(c.header.stamp) for c in caps}
                       and set(want) <= {time_to_ns(c.header.stamp) for c in costs}, 30.0,
                       "6 captions + costs")
    harness.spin_for(0.3)
    by_stamp = {time_to_ns(c.header.stamp): c for c in caps}
    cost_by_stamp = {time_to_ns(c.header.stamp): c for c in costs}
    cap_stamps = [time_to_ns(c.header.stamp) for c in caps]
    assert cap_stamps == sorted(cap_stamps), "captions out of order"
    assert len(texts) >= len(want)
    for k, stamp in zip(range(K0, K0 + 6), want):
        c, cost = by_stamp[stamp], cost_by_stamp[stamp]
        assert c.text.strip(), "empty caption"
        # an untrained head: a gesture only above gesture_threshold, else 0 without a name
        assert 0 <= c.gesture_label <= 11 and bool(c.gesture_name) == (c.gesture_label > 0)
        assert 0.0 <= c.gesture_confidence <= 1.0
        assert time_to_ns(c.window_start) == k * P and time_to_ns(c.window_end) == (k + 1) * P
        assert c.frame_index == k and cost.frame_index == k
        assert c.model_id == "test-rigged" and c.header.frame_id == "dvs_test"
        in_stamps = {time_to_ns(s) for s in c.input_stamps}
        assert {k * P + GOOD_STAMP_OFFSET, k * P + P // 2 + GOOD_STAMP_OFFSET} <= in_stamps
        assert c.input_mode == ("rgb+events" if k == k_rgb else "events")
        assert 0 < cost.active_tokens <= cost.total_tokens == 256
        # dense reference = Medium-only dense without a router: a dense Medium frame costs the
        # router more
        assert 0 < cost.flops_executed <= 1.01 * cost.flops_dense
        saved = max(0.0, 1 - cost.flops_executed / cost.flops_dense)
        assert cost.flops_saved_fraction == pytest.approx(saved, abs=1e-6)
        assert len(cost.stage_names) == len(cost.stage_latency_ms)
        assert cost.stage_names[0] == "decode" and cost.stage_names[-1] == "total"
        assert {"encoder", "decoder"} <= set(cost.stage_names)
        assert all(v >= 0.0 for v in cost.stage_latency_ms)
        assert cost.params_active > 0 and cost.compute_budget == pytest.approx(1.0)
        assert cost.branch == "medium"   # the joint model routes itself (rigged estimator: medium)
    assert stamp_of(k_rgb) in {time_to_ns(s) for s in by_stamp[stamp_of(k_rgb)].input_stamps}
    assert sent  # packet stamps were checked above

    # compute_budget changed on the running node: the published compute cost changes from the
    # next frame
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    client = harness.node.create_client(SetParameters, "/vlm_captioner/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    req = SetParameters.Request()
    req.parameters = [Parameter(name="compute_budget", value=ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE, double_value=0.3))]
    fut = client.call_async(req)
    harness.spin_until(fut.done, 10.0, "SetParameters response")
    assert fut.result().results[0].successful
    harness.send_frames(topic, K0 + 8, K0 + 12)
    want2 = [stamp_of(k) for k in range(K0 + 8, K0 + 12)]
    harness.spin_until(lambda: set(want2) <= {time_to_ns(c.header.stamp) for c in costs}, 30.0,
                       "costs after the budget change")
    cost_by_stamp = {time_to_ns(c.header.stamp): c for c in costs}
    medium = [cost_by_stamp[st] for st in want[1:]]
    tiny = [cost_by_stamp[st] for st in want2[1:]]  # the first tiny frame is dense (branch switch)
    assert all(c.branch == "tiny" and c.compute_budget == pytest.approx(0.3) for c in tiny)
    assert max(c.params_active for c in tiny) < min(c.params_active for c in medium)
    assert np.mean([c.flops_executed for c in tiny]) < np.mean([c.flops_executed for c in medium])

    proc = nodes["vlm_captioner"]
    assert proc.poll() is None
    assert proc.stop() == 0
    out = proc.output()
    assert "shutdown:" in out and "masks_used=2" in out and "mask_fallbacks=" in out, out[-2000:]


def test_relay_subscribes_to_the_events_once_its_subscriber_matched(env, harness, checkpoint,
                                                                     tmp_path):
    """link_wait_subscribers (the launch's source:=bag with link:=active): sttf_perception
    takes no events until its relay matched a subscriber, so a player that waits for its
    subscription cannot play into a relay nobody hears; with none it subscribes after
    link_wait_timeout, with a warning."""
    from event_camera_msgs.msg import EventPacket

    from edge_vlm_ros.qos import SENSOR

    def relay(tag: str, timeout: float) -> NodeProc:
        return NodeProc("sttf_perception", tmp_path / tag,
                        {"checkpoint": checkpoint, "link_relay": True,
                         "link_wait_subscribers": 1, "link_wait_timeout": timeout},
                        {"event_camera/events": f"/t/{tag}/events",
                         "edge_vlm/link_events": f"/t/{tag}/link",
                         "edge_vlm/token_mask": f"/t/{tag}/mask",
                         "edge_vlm/change_mask": f"/t/{tag}/image"}, env)

    count = harness.node.count_subscribers
    for tag in ("wait", "late"):
        (tmp_path / tag).mkdir()
    waiting, late = relay("wait", 120.0), relay("late", 2.0)
    try:
        harness.wait_publishers("/t/wait/link", timeout=60.0)    # the node is up
        harness.spin_for(1.5)
        assert count("/t/wait/events") == 0, waiting.output()[-2000:]
        harness.collect(EventPacket, "/t/wait/link", SENSOR)     # the captioner's side
        harness.spin_until(lambda: count("/t/wait/events") == 1, 20.0,
                           "sttf_perception's subscription to the events")
        assert "link_events: 1 subscribers matched; subscribing to the events" in \
            waiting.output()
        # nobody subscribes to the other relay: it takes the events after its timeout
        harness.spin_until(lambda: count("/t/late/events") == 1, 60.0,
                           "the subscription after link_wait_timeout")
        assert "link_events: 0 of 1 subscribers after 2 s" in late.output()
    finally:
        waiting.stop()
        late.stop()


def test_node_logs_the_publishers_its_event_subscription_matched(env, harness, checkpoint,
                                                                tmp_path):
    """The subscriber's side of a match (FrameNode.subscribe_events): one line when a
    publisher of the events matched, one when it went; the multi-host harness holds its player
    until every node said the first (frame_node.MATCHED_LINE, as edge_vlm_tools.netns reads it)."""
    from event_camera_msgs.msg import EventPacket

    from edge_vlm_ros.qos import SENSOR
    from edge_vlm_ros.frame_node import MATCHED_LINE

    node = NodeProc("sttf_perception", tmp_path, {"checkpoint": checkpoint},
                    {"event_camera/events": "/t/matched/events",
                     "edge_vlm/token_mask": "/t/matched/mask",
                     "edge_vlm/change_mask": "/t/matched/image"}, env)

    def matched() -> list[tuple[str, str]]:
        return MATCHED_LINE.findall(node.output())

    try:
        harness.wait_publishers("/t/matched/mask", timeout=60.0)       # the node is up
        assert matched() == []
        pub = harness.node.create_publisher(EventPacket, "/t/matched/events", SENSOR)
        harness.spin_until(lambda: len(matched()) == 1, 20.0, "the 'matched' line")
        assert matched() == [("1", "/t/matched/events")]
        harness.node.destroy_publisher(pub)
        harness.spin_until(lambda: len(matched()) == 2, 20.0, "the 'unmatched' line")
        assert matched()[-1] == ("0", "/t/matched/events")
    finally:
        node.stop()


def test_captioner_missing_checkpoint_exits_clearly(env, tmp_path):
    from edge_vlm_tools.runner import find_executable

    exe = find_executable("vlm_captioner", "vlm_captioner", env)
    missing = str(tmp_path / "no_such_checkpoint.pt")
    r = subprocess.run([exe, "--ros-args", "-p", f"checkpoint:={missing}"], env=env,
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "checkpoint not found" in out and missing in out
    assert "Traceback" not in out

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    r = subprocess.run([exe, "--ros-args", "-p", f"checkpoint:={corrupt}"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "cannot load checkpoint" in r.stderr + r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_invalid_parameter_exits_clearly(env):
    from edge_vlm_tools.runner import find_executable

    exe = find_executable("sttf_perception", "sttf_perception", env)
    r = subprocess.run([exe, "--ros-args", "-p", "event_count_threshold:=0"], env=env,
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "event_count_threshold" in out and "Traceback" not in out
