"""The pieces that start a graph through launch, in one process per node or in one process, and
what the demo and the bench report about it (no graph is started here; test_launch.py and
test_integration.py run the graphs).

* ``edge_vlm_tools.graph`` (single process): node-specific rcl rules give each node class its
  graph name, namespace, parameters and remappings; the events of every frame node come from
  one subscription (placeholders until then); in-process hand-over of TokenMask/RouteDecision;
* ``edge_vlm_tools.runner``: options -> the bringup launch file's arguments;
* ``edge_vlm_ros.lifeline --log``: a node's output to its own file;
* ``edge_vlm_tools.proc``: the graph's RSS and CPU from /proc;
* the demo's dropped-work summary, the bench's node counters and its 1 ms / RSS report keys;
* ``edge_vlm.inference.factory.shared_model``: one model per checkpoint file and process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import rosenv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = os.path.join(ROOT, "ros2_ws", "src", "edge_vlm_bringup", "config", "graph.yaml")


# ------------------------------------------------------------------ overrides as one YAML line
def test_overrides_yaml_round_trip_and_errors():
    from edge_vlm.cores.graph import overrides_from_yaml, overrides_to_yaml

    ov = {"compute_budget": 0.5, "vlm_captioner.checkpoint": "/a b/007.pt", "x.flag": True}
    assert overrides_from_yaml(overrides_to_yaml(ov)) == ov
    assert overrides_from_yaml("  ") == {}
    for bad, says in (("[1, 2]", "expected a YAML mapping"), ("a: [", "not valid YAML")):
        with pytest.raises(ValueError, match=says):
            overrides_from_yaml(bad, "params:=")


# ------------------------------------------------------------------ runner -> launch arguments
def test_runner_options_become_launch_arguments(tmp_path):
    from edge_vlm.cores.graph import overrides_from_yaml
    from edge_vlm_tools.runner import GraphOptions, launch_arguments, launch_file

    assert launch_arguments(GraphOptions()) == {"source": "none", "single_process": "false"}
    args = launch_arguments(GraphOptions(GRAPH, {"compute_budget": 0.5}, "robot1",
                                         {"events": "/cam/events"}, True, str(tmp_path)))
    assert args["single_process"] == "true" and args["namespace"] == "robot1"
    assert args["events_topic"] == "/cam/events" and args["graph"] == GRAPH
    assert args["log_dir"] == str(tmp_path)
    assert overrides_from_yaml(args["params"]) == {"compute_budget": 0.5}
    assert launch_file().endswith(os.path.join("edge_vlm_bringup", "launch",
                                               "edge_vlm.launch.py"))


def test_runner_print_and_bad_input(tmp_path):
    from edge_vlm_tools.runner import main

    assert main(["--print", "--single-process", "-p", "compute_budget=0.25"]) == 0
    assert main(["--print", "--params", "[1]"]) == 2
    assert main(["--print", "-p", "no_such_param=1"]) == 2
    assert main(["--graph", str(tmp_path / "missing.yaml")]) == 2


# ------------------------------------------------------------------ single-process graph
@pytest.fixture(scope="module")
def graph_mod():
    rosenv.require_workspace("edge_vlm_msgs", "event_camera_msgs")
    rosenv.activate()
    from edge_vlm_tools import graph

    return graph


def test_graph_process_rules_params_and_placeholders(graph_mod, tmp_path):
    from edge_vlm.cores.graph import load_graph

    specs = load_graph(GRAPH, {"compute_budget": 0.4}, namespace="robot1",
                       inputs={"events": "/cam/events"})
    specs[1].name = "router2"                      # a renamed node keeps its class
    g = graph_mod.graph_process(specs, str(tmp_path))
    args = g.ros_args
    assert args[0] == "--ros-args"
    pairs = {args[i + 1] for i, a in enumerate(args) if a == "-r"}
    assert "anc_router:__node:=router2" in pairs
    assert {"sttf_perception:__ns:=/robot1", "router2:__ns:=/robot1"} <= pairs
    assert "vlm_captioner:event_camera/events:=/_edge_vlm_graph/vlm_captioner/unused_events" \
        in pairs
    assert "vlm_captioner:camera/image_raw:=/camera/image_raw" in pairs
    assert g.event_topics == {"sttf_perception": "/cam/events", "router2": "/cam/events",
                              "vlm_captioner": "/cam/events"}
    params = yaml.safe_load(open(g.params_file))
    assert params["/robot1/router2"]["ros__parameters"]["compute_budget"] == 0.4
    assert params["/robot1/vlm_captioner"]["ros__parameters"]["compute_budget"] == 0.4
    assert "compute_budget" not in params["/robot1/sttf_perception"]["ros__parameters"]


def test_graph_process_refuses_what_one_process_cannot_hold(graph_mod, tmp_path):
    from edge_vlm.cores.graph import NodeSpec

    twice = [NodeSpec("a", "anc_router", "anc_router"), NodeSpec("b", "anc_router", "anc_router")]
    with pytest.raises(ValueError, match="two nodes of package 'anc_router'"):
        graph_mod.graph_process(twice, str(tmp_path))
    with pytest.raises(ValueError, match="cannot run in one process"):
        graph_mod.graph_process([NodeSpec("c", "edge_vlm_cameras", "x")], str(tmp_path))
    assert graph_mod.main(["--params", "5"]) == 2


def test_fanout_drains_queued_packets_in_order(graph_mod):
    from edge_vlm_ros.qos import GATHER_WINDOW_S

    seen = []

    class Sub:                     # a subscription with three more packets queued
        msg_type, raw = object, False

        def __init__(self):
            self.queue = ["p2", "p3", "p4"]
            self.handle = self

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def take_message(self, _type, _raw):
            if callable(self.queue):
                m = self.queue()
                return None if m is None else (m, None)
            return (self.queue.pop(0), None) if self.queue else None

    fan = graph_mod.FanOut((lambda m: seen.append(("perception", m)),
                            lambda m: seen.append(("captioner", m))))
    fan.sub = Sub()
    fan("p1")
    assert [m for _, m in seen] == ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4"]
    assert [n for n, _ in seen[:2]] == ["perception", "captioner"]

    arrivals = iter(["late1", "late2"])           # packets that arrive while the window is open

    def later():
        time.sleep(0.0004)
        return next(arrivals, None)

    fan.sub.queue = later
    seen.clear()
    fan("q")
    assert [m for _, m in seen][::2] == ["q", "late1", "late2"]
    fan.sub.queue = lambda: "again"               # a stream that never pauses
    seen.clear()
    t0 = time.monotonic()
    fan("r")
    took = time.monotonic() - t0
    assert len(seen) > 2 and took < GATHER_WINDOW_S + 0.05   # bounded: timers still run


# ------------------------------------------------------------------ one frame source, shared
P_NS = 33_333_333


def _packets(n_frames: int = 12, k0: int = 3000, per_frame: int = 8) -> list:
    """Mono EventPackets of about 4 ms over frames k0..k0+n_frames-1 (a blob per frame), with
    a sequence gap, a malformed packet and an empty one, stamped 12345 ns after time_base."""
    import array

    from edge_vlm.events import make_events
    from edge_vlm.io.codecs.mono import encode_mono
    from edge_vlm_ros.conversions import ns_to_time
    from event_camera_msgs.msg import EventPacket

    rng = np.random.default_rng(5)
    n = 40 * n_frames
    t = np.sort(rng.integers(k0 * P_NS, (k0 + n_frames) * P_NS, n))
    ev = make_events(t, rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n))
    step = P_NS // per_frame
    msgs = []
    for seq, tb in enumerate(range(k0 * P_NS, (k0 + n_frames) * P_NS, step)):
        sel = ev[(ev["t"] >= tb) & (ev["t"] < tb + step)]
        m = EventPacket()
        m.header.stamp = ns_to_time(tb + 12_345)
        m.header.frame_id = "dvs"
        m.width = m.height = 128
        m.seq = seq + (5 if seq > 30 else 0)                   # a gap of 5
        m.time_base, m.encoding, m.is_bigendian = tb, "mono", False
        m.events = array.array("B", encode_mono(sel, tb) if seq != 20 else b"\x01" * 7)
        msgs.append(m)
    return msgs


class _Frames:
    """A FrameNode that records what it gets (frame, its inputs) in a shared log."""

    def __init__(self, graph_mod, name: str, ctx, log: list, track: bool, model: int = 128):
        from rclpy.node import Node

        from edge_vlm_ros.frame_node import FrameNode

        class Sink(FrameNode, Node):
            def on_frames(self, frames):
                for f in frames:
                    fi = self.inputs.pop(f.index) if self.inputs is not None else None
                    log.append((self.get_name(), f.index, f.stamp_end, f.n_events,
                                f.hist.tobytes(), None if fi is None else tuple(fi.stamps)))

        self.node = Sink(name, context=ctx)
        self.node.setup_frames({"frame_period_ms": P_NS / 1e6, "model_width": model,
                                "model_height": model}, track_inputs=track)


def test_single_process_nodes_decode_each_packet_once_with_the_same_frames(graph_mod):
    """share_sources: the frame nodes of one grid take the frames of ONE FrameSource (each
    packet decoded and binned once), and get what they got decoding every packet themselves:
    the same frames (index, header-clock stamp, events, histogram), the same inputs per frame,
    the same counters (sequence gaps, rejected packets), in graph order."""
    import rclpy
    from rclpy.serialization import serialize_message

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, domain_id=161)
    msgs = _packets()
    logs: dict[str, list] = {"own": [], "shared": []}
    try:
        sets = {mode: [_Frames(graph_mod, f"{mode}_{name}", ctx, logs[mode], name != "perc")
                       for name in ("perc", "route", "cap")] for mode in logs}
        own, shared = ([f.node for f in sets[m]] for m in ("own", "shared"))
        owners = graph_mod.share_sources(shared)
        assert owners == [shared[0]]
        assert all(n.source is shared[0].source for n in shared)
        assert shared[1]._events is None and shared[0].source.sinks == shared
        fan = graph_mod.FanOut(tuple(n._on_packet for n in owners))
        for m in msgs:
            for n in own:                      # one process per node: each decodes the packet
                n._on_packet(m)
            fan._hand(serialize_message(m))    # the raw subscription of the graph
        fan._hand(b"\x00\x01\x00\x00\x01")          # not an EventPacket: skipped, counted
        assert fan.unreadable == 1
        for n in own + [shared[0]]:            # end of the stream: the idle rule
            n.source.last_packet = -1e9
            n._idle_check()
        assert shared[0].binner.packets == len(msgs)              # decoded once
        assert sum(n.binner.packets for n in own) == 3 * len(msgs)
        frames = {m: [e[1:] for e in logs[m]] for m in logs}
        assert len(frames["own"]) == 3 * 12 and frames["shared"] == frames["own"]
        assert [e[0] for e in logs["shared"][:3]] == ["shared_perc", "shared_route",
                                                      "shared_cap"]
        # two nodes that track inputs: each its own record, the same stamps
        assert logs["shared"][2][-1] and logs["shared"][2][-1] == logs["shared"][1][-1]
        assert logs["shared"][0][-1] is None
        for a, b in zip(own, shared):
            assert a.counters() == b.counters()
        c = shared[2].counters()
        assert (c["packets"], c["rejected"], c["seq_gaps"], c["missing_packets"]) == \
            (len(msgs), 1, 1, 5)
        other = _Frames(graph_mod, "grid64", ctx, [], False, model=64).node
        assert graph_mod.share_sources([own[0], own[1], other]) == [own[0], other]
    finally:
        rclpy.try_shutdown(context=ctx)


def test_raw_event_packets_parse_as_rclpy_deserializes_them(graph_mod):
    """edge_vlm_ros.intake.parse_event_packet (the graph's raw event subscription) reads every
    field as rclpy does, whatever the string lengths (CDR alignment); other encapsulations go
    through rclpy."""
    import array

    from edge_vlm_ros.intake import RawEventPacket, parse_event_packet
    from event_camera_msgs.msg import EventPacket
    from rclpy.serialization import deserialize_message, serialize_message

    def fields(m):
        return (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id, m.height,
                m.width, m.seq, m.time_base, m.encoding, bool(m.is_bigendian), bytes(m.events))

    for fid in ("", "a", "abc", "dvs128", "camera_frame_x"):
        for enc in ("", "m", "mono", "evt3", "libcaer_cmp"):
            for n in (0, 1, 7, 64):
                m = EventPacket()
                m.header.stamp.sec, m.header.stamp.nanosec = 1_700_000_000, 123_456_789
                m.header.frame_id, m.encoding, m.is_bigendian = fid, enc, bool(n % 2)
                m.height, m.width, m.seq, m.time_base = 480, 640, 2**40 + 3, 2**63 + 5
                m.events = array.array("B", bytes(range(n)))
                raw = serialize_message(m)
                r = parse_event_packet(raw)
                assert type(r) is RawEventPacket
                assert fields(r) == fields(m) == fields(deserialize_message(raw, EventPacket))
    big_endian = b"\x00\x00" + raw[2:]                     # not parsed here: rclpy's verdict
    with pytest.raises(Exception):
        parse_event_packet(big_endian)


# ------------------------------------------------------------------ lifeline --log, /proc
def test_lifeline_log_holds_stdout_and_stderr(tmp_path):
    from edge_vlm_ros.lifeline import exec_prefix

    log = tmp_path / "logs" / "node.log"
    cmd = exec_prefix(log=str(log)) + [sys.executable, "-c",
                                       "import sys; print('out'); print('err', file=sys.stderr)"]
    assert "--log" in cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert log.read_text().split() == ["out", "err"]


def test_graph_memory_sums_the_launchers_descendants():
    from edge_vlm_tools.proc import cpu_seconds, descendants, graph_memory

    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(30 << 20); "
                              "time.sleep(30)"])
    try:
        end = time.monotonic() + 10
        mem = graph_memory(os.getpid())
        while mem.rss_mb < 30 and time.monotonic() < end:
            time.sleep(0.1)
            mem = graph_memory(os.getpid())
        assert child.pid in descendants(os.getpid()) and child.pid in mem.processes
        assert mem.rss_mb >= 30 and cpu_seconds(os.getpid()) > 0
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------------------------ what the demo reports
def test_demo_reports_dropped_frames_lost_packets_and_rss(graph_mod):
    import io

    from edge_vlm_tools.demo import dropped_summary, print_report

    counters = {"sttf_perception": {"packets": 90, "missing_packets": 10},
                "vlm_captioner": {"packets": 95, "missing_packets": 5, "dropped": 3}}
    s = dropped_summary(counters)
    assert s["frames_dropped"] == 3 and s["packets_lost"] == 10
    summary = {"frames_processed": 0, "compute_costs": 0, "mean_active_token_fraction": None,
               "flops_saved_fraction": None, "latency_ms_p50": None, "latency_ms_p95": None,
               "packet_to_caption_ms_p50": None, "packet_to_caption_ms_p95": None,
               "gesture_accuracy": None, "gesture_frames_correct": 0, "gesture_frames_scored": 0,
               "ground_truth_segments": 0, "input_modes": {}, "distinct_captions": 0,
               "graph_memory": {"rss_mb": 400.2, "processes": {"1": "edge_vlm_graph"}},
               "single_process": True, **s}
    out = io.StringIO()
    print_report([], summary, out=out)
    text = out.getvalue()
    assert "frames dropped            3 by the captioner's backpressure; packets lost 10 " \
           "(sttf_perception 10, vlm_captioner 5)" in text
    assert "graph RSS                 400 MB in 1 process(es) (single process); CPU s" in text


def test_shutdown_counters_of_one_node_in_a_shared_log(tmp_path):
    from edge_vlm.bench.e2e import shutdown_counters

    log = tmp_path / "edge_vlm_graph.log"
    log.write_text("[INFO] [1.0] [sttf_perception]: shutdown: packets=5 dropped=0\n"
                   "[INFO] [1.0] [robot1.vlm_captioner]: shutdown: packets=10 dropped=3\n")
    assert shutdown_counters(log, "sttf_perception") == {"packets": 5, "dropped": 0}
    assert shutdown_counters(log, "vlm_captioner") == {"packets": 10, "dropped": 3}
    assert shutdown_counters(log, "anc_router") == {}


def test_bench_report_has_the_1ms_and_rss_keys():
    from edge_vlm.bench import report

    keys = ("frame_latency_ms_p95_1ms_packets", "caption_latency_ms_p95_1ms_packets",
            "frames_dropped_1ms_packets", "graph_rss_mb_multi", "graph_rss_mb_single")
    assert set(keys) <= set(report.SUMMARY_KEYS) and all(report.DESCRIPTIONS[k] for k in keys)
    e2e = {"packet_ms": 10.0, "frames_processed": 80, "graph_rss_mb": 1050.0,
           "one_ms_packets": {"packet_ms": 1.0, "frames_processed": 78, "packets_lost": 0,
                              "graph_rss_mb": 380.0, "graph_cpu_s": {"edge_vlm_graph": 4.5}}}
    text = report.markdown({"details": {"e2e": e2e}, **{k: 1.0 for k in keys}}, "cmd")
    assert "### The same recording in 1 ms EventPackets, single process" in text
    assert "edge_vlm_graph 4.5" in text and "| `graph_rss_mb` | 380 |" in text


# ------------------------------------------------------------------ one model per checkpoint
def test_shared_model_loads_a_checkpoint_once(tmp_path):
    import shutil

    from edge_vlm.inference.factory import load_model, shared_model
    from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT

    a, meta = shared_model("")
    b, _ = shared_model(DEFAULT_CHECKPOINT)
    assert a is b and isinstance(meta, dict)
    assert load_model("")[0] is not a                  # training code gets its own copy
    copy = tmp_path / "c.pt"
    shutil.copy(DEFAULT_CHECKPOINT, copy)
    c, _ = shared_model(str(copy))
    assert c is not a and shared_model(str(copy))[0] is c
    os.utime(copy, ns=(1, 1))                           # the file changed: loaded again
    assert shared_model(str(copy))[0] is not c
