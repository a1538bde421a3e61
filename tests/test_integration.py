"""The whole graph on a short simulated bag, plus static checks of the graph description.

* config/graph.yaml of edge_vlm_bringup: every parameter is known to edge_vlm.params
  (resolve); the runner builds valid command lines; the bringup's launch/edge_vlm.launch.py
  parses (Python ``ast``; ``launch`` itself is not installed here) and reads graph.yaml the
  way the runner does (edge_vlm.cores.graph); the built package installs both in its share.
* end to end: a simulated bag (edge_vlm.sim) written with write_bag, played by
  edge_vlm_play into the three nodes started by the runner from graph.yaml
  (via ``edge_vlm_demo``), recorded by edge_vlm_record; captions and compute
  costs are checked. Own ROS_DOMAIN_ID; an unbuilt workspace is a failure.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess

import pytest
import yaml

import rosenv
from edge_vlm.evaluation.trust import caption_class

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRINGUP = os.path.join(ROOT, "ros2_ws", "src", "edge_vlm_bringup")
GRAPH = os.path.join(BRINGUP, "config", "graph.yaml")
LAUNCH = os.path.join(BRINGUP, "launch", "edge_vlm.launch.py")
DOMAIN = 116 + os.getpid() % 115                  # test_nodes uses 1..115
P = 33_333_333
PKGS = ("edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros", "edge_vlm_tools", "edge_vlm_bringup",
        "sttf_perception", "anc_router", "vlm_captioner")


# ----------------------------------------------------------------------------- static checks
def test_graph_yaml_parameters_are_known_to_params():
    from edge_vlm.params import NODE_PARAMS, resolve

    doc = yaml.safe_load(open(GRAPH))
    nodes = doc["nodes"]
    assert {n["package"] for n in nodes} == {"sttf_perception", "anc_router", "vlm_captioner"}
    for n in nodes:
        assert n["package"] in NODE_PARAMS and n["executable"] == n["package"]
        resolve(n["package"], n.get("parameters") or {})   # raises on unknown names / bad values
    assert doc["inputs"]["events"] == "/event_camera/events"


def test_runner_builds_node_commands():
    from edge_vlm.cores.graph import load_graph, parse_overrides
    from edge_vlm_tools.runner import node_command

    overrides = parse_overrides(["compute_budget=0.5", "vlm_captioner.checkpoint=/x/1.pt"])
    specs = load_graph(GRAPH, overrides, namespace="robot1", inputs={"events": "/cam/events"})
    by = {s.name: s for s in specs}
    assert by["anc_router"].parameters["compute_budget"] == 0.5
    assert by["vlm_captioner"].parameters["compute_budget"] == 0.5
    assert "compute_budget" not in by["sttf_perception"].parameters
    assert by["vlm_captioner"].parameters["checkpoint"] == "/x/1.pt"
    cmd = node_command(by["vlm_captioner"], "exe")
    assert cmd[:2] == ["exe", "--ros-args"]
    assert "__ns:=/robot1" in cmd and "event_camera/events:=/cam/events" in cmd
    assert "checkpoint:='/x/1.pt'" in cmd and "compute_budget:=0.5" in cmd
    assert "mask_timeout_ms:=150.0" in cmd
    with pytest.raises(ValueError, match="unknown parameter"):
        load_graph(GRAPH, {"vlm_captioner.no_such_param": 1})
    with pytest.raises(ValueError, match="unknown parameter 'bogus'"):
        load_graph(GRAPH, {"bogus": 1})
    with pytest.raises(ValueError, match="no node 'nosuchnode'"):
        load_graph(GRAPH, {"nosuchnode.checkpoint": "x"})
    with pytest.raises(ValueError, match="compute_budget"):
        load_graph(GRAPH, {"compute_budget": 7.0})


def test_launch_file_parses_and_uses_graph_yaml():
    src = open(LAUNCH).read()
    tree = ast.parse(src, LAUNCH)
    funcs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    assert "config" in src and "graph.yaml" in src and "load_graph" in src
    assert "default_graph_path" in src
    declared = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    assert {"graph", "namespace", "compute_budget", "checkpoint", "events_topic"} <= declared


def test_graph_is_found_in_the_bringup_package(monkeypatch):
    from edge_vlm.cores.graph import default_graph_path

    monkeypatch.delenv("EDGE_VLM_GRAPH", raising=False)
    assert os.path.samefile(default_graph_path(), GRAPH)
    monkeypatch.setenv("EDGE_VLM_GRAPH", "/x/g.yaml")
    assert default_graph_path() == "/x/g.yaml"


def test_bringup_installs_launch_file_and_graph():
    rosenv.require_workspace("edge_vlm_bringup")
    share = os.path.join(rosenv.INSTALL, "edge_vlm_bringup", "share", "edge_vlm_bringup")
    for rel, src in (("launch/edge_vlm.launch.py", LAUNCH), ("config/graph.yaml", GRAPH)):
        path = os.path.join(share, rel)
        assert os.path.isfile(path) and open(path).read() == open(src).read(), path


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def env():
    rosenv.require_workspace(*PKGS)   # raises WorkspaceNotBuilt: a failure with a clear message
    return rosenv.sourced_env(ROS_DOMAIN_ID=str(DOMAIN), RCUTILS_LOGGING_BUFFERED_STREAM="0",
                              RCUTILS_COLORIZED_OUTPUT="0")


@pytest.mark.timeout(150)
def test_graph_on_simulated_bag(env, tmp_path):
    from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT
    from edge_vlm_tools.demo import make_sim_bag
    from edge_vlm_tools.runner import find_executable
    from test_nodes import make_test_checkpoint

    bag = make_sim_bag(str(tmp_path / "bag"), labels=[2], seed=3, clip_duration_s=1.0, gap_s=0.3)
    # the trained checkpoint when it is there (realistic captions), else a rigged untrained one
    ckpt = DEFAULT_CHECKPOINT if os.path.isfile(DEFAULT_CHECKPOINT) else \
        make_test_checkpoint(str(tmp_path / "rigged.pt"))
    out = tmp_path / "out"
    demo = find_executable("edge_vlm_tools", "edge_vlm_demo", env)
    r = subprocess.run([demo, bag, "--checkpoint", ckpt, "--out-dir", str(out), "--drain", "2.5"],
                       env=env, capture_output=True, text=True, timeout=140)
    logs = "".join(f"\n--- {f}\n" + open(out / "logs" / f, errors="replace").read()[-1500:]
                   for f in sorted(os.listdir(out / "logs"))) if (out / "logs").is_dir() else ""
    assert r.returncode == 0, \
        f"demo failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}{logs}"

    records = [json.loads(line) for line in open(out / "records.jsonl")]
    caps = [x for x in records if x["stream"] == "caption"]
    costs = [x for x in records if x["stream"] == "compute_cost"]
    masks = {x["stamp_ns"]: x["data"] for x in records if x["stream"] == "token_mask"}
    gts = [x for x in records if x["stream"] == "ground_truth"]
    assert len(caps) >= 30, f"only {len(caps)} captions{logs}"   # 1.6 s of sensor time = 48 frames
    assert len(costs) == len(caps)
    assert [c["stamp_ns"] for c in caps] == [c["stamp_ns"] for c in costs]
    assert len(gts) == 1 and gts[0]["json"]["label"] == 2
    stamps = [c["stamp_ns"] for c in caps]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # outputs are stamped in the EventPackets' header clock (edge_vlm.stream.clock): the bag
    # stamps a mono packet at its end, one packet period after its time_base, so every output is
    # stamped that one constant offset after its sensor-time frame end
    offsets = {c["stamp_ns"] - c["data"]["window_end"] for c in caps}
    assert len(offsets) == 1 and 0 < min(offsets) <= 100_000_000, offsets
    for c, k in zip(caps, costs):
        d, cost = c["data"], k["data"]
        assert d["text"].strip(), "empty caption"
        assert 0 <= d["gesture_label"] <= 11
        assert bool(d["gesture_name"]) == (d["gesture_label"] > 0)
        assert caption_class(d["text"]) == d["gesture_label"], d   # grounded captions
        assert d["window_end"] % P == 0
        assert d["window_end"] - d["window_start"] == P
        assert d["frame_index"] * P == d["window_start"]
        assert d["input_stamps"], "no input stamps"
        assert d["input_mode"] in ("events", "rgb+events")
        assert 0 <= cost["active_tokens"] <= cost["total_tokens"] == 256
        m = masks.get(c["stamp_ns"])
        if m is not None and m["active_indices"]:
            assert cost["active_tokens"] > 0
        # the reference is Medium-only dense; a frame routed to Medium that runs it densely (its
        # first run) pays the router on top, and a caption draft that turns out wrong a few decoder
        # positions: at most ~0.2% more
        assert 0 < cost["flops_executed"] <= 1.01 * cost["flops_dense"]
        assert cost["frame_index"] == d["frame_index"] and cost["params_active"] > 0
        assert cost["branch"] in ("tiny", "small", "medium", "base")
    assert any(x["data"]["active_tokens"] > 0 for x in costs)
    assert any(x["data"]["branch"] != "base" for x in costs), \
        "no RouteDecision reached the captioner"
    # the change masks used by the captioner came from sttf_perception with the same stamps
    assert set(stamps) <= set(masks)

    summary = json.load(open(out / "summary.json"))
    assert summary["frames_processed"] == len(caps)
    assert summary["gesture_frames_scored"] > 0 and summary["gesture_accuracy"] is not None
    assert summary["latency_ms_p50"] > 0
    assert all(code == 0 for code in summary["exit_codes"].values()), summary["exit_codes"]
    assert "summary" in r.stdout and "gesture accuracy" in r.stdout
