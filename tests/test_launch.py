"""``ros2 launch edge_vlm_bringup edge_vlm.launch.py`` and nodes that never outlive their launcher.

* launch_pytest: the bringup's launch file with ``source:=bag bag:=<simulated bag> loop:=true``
  (the three nodes of config/graph.yaml and the bag player, each in its own process started by
  launch_ros); a caption arrives through the ``ros2`` command itself (``ros2 topic echo
  --once``); after launch_pytest shut the launch down, no node process is left.
* single_process: ``ros2 launch ... single_process:=true source:=bag``: ONE node process
  (``edge_vlm_graph``) next to the player, yet ``ros2 node list`` shows the three nodes,
  ``ros2 param set /anc_router compute_budget`` reaches the published RouteDecision and
  captions arrive; the events are received once and masks/routes handed over in the process.
* Orphans: the runner (``edge_vlm_run``, a thin wrapper over the same launch file, in both
  modes) and ``ros2 launch`` on a one-node graph, killed with SIGINT, SIGTERM, SIGHUP and
  SIGKILL: the node process is gone within seconds (``edge_vlm_ros.lifeline``: the kernel
  sends SIGTERM to a node whose launcher died).

Every graph runs in this module's own ROS_DOMAIN_ID (``lifeline.free_domain_id``) with
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST. An unbuilt workspace is a failure, not a skip.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import launch_pytest
import psutil
import pytest
import yaml
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource

import rosenv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = os.path.join(ROOT, "ros2_ws", "src", "edge_vlm_bringup", "config", "graph.yaml")
PKGS = ("edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros", "edge_vlm_tools", "edge_vlm_bringup",
        "sttf_perception", "anc_router", "vlm_captioner", "composition_interfaces")
#: executables of the processes the launch file starts
EXES = ("sttf_perception", "anc_router", "vlm_captioner", "edge_vlm_play")
#: the node names of graph.yaml
NODE_NAMES = ("/sttf_perception", "/anc_router", "/vlm_captioner")
#: the environment the launched processes need (the sourced workspace, the test's domain)
ENV_KEYS = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH",
            "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
            "PYTHONUNBUFFERED", "RCUTILS_LOGGING_BUFFERED_STREAM")
ROS2 = os.path.join(os.path.dirname(sys.executable), "ros2")
GONE_WITHIN_S = 20.0
_launched: list[psutil.Process] = []      # the node processes of the launch_pytest graph


@pytest.fixture(scope="module")
def ros_env() -> dict[str, str]:
    """The sourced workspace in a free domain of its own (fails when the workspace or the ROS 2
    tools are missing)."""
    rosenv.require_workspace(*PKGS)
    rosenv.activate()
    from edge_vlm_ros.lifeline import free_domain_id

    assert os.access(ROS2, os.X_OK), f"{ROS2} missing: `make setup` installs the ROS 2 tools"
    return rosenv.sourced_env(ROS_DOMAIN_ID=str(free_domain_id()),
                              ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                              RCUTILS_LOGGING_BUFFERED_STREAM="0")


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory, ros_env) -> str:
    """A 1.2 s simulated bag (one gesture): events, RGB frames, ground truth."""
    from edge_vlm_tools.demo import make_sim_bag

    path = str(tmp_path_factory.mktemp("launch") / "bag")
    return make_sim_bag(path, labels=(2,), seed=1, clip_duration_s=1.0, gap_s=0.2)


def _node_procs(root: psutil.Process, exes=EXES) -> list[psutil.Process]:
    """The descendants of ``root`` running one of ``exes`` (after the lifeline's exec)."""
    out = []
    for p in root.children(recursive=True):
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(os.path.basename(c) in exes for c in cmd[:2]):   # not lifeline.py before exec
            out.append(p)
    return out


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(procs: list[psutil.Process], timeout: float = GONE_WITHIN_S) -> list[str]:
    """Wait until every process of ``procs`` ended; the command lines of those left."""
    end = time.monotonic() + timeout
    while _alive(procs) and time.monotonic() < end:
        time.sleep(0.2)
    left = []
    for p in _alive(procs):             # do not leave them to the next test
        try:
            name = " ".join(p.cmdline()[:2])
            p.kill()
        except psutil.Error:            # ended (or became a zombie) in the meantime
            continue
        left.append(name)
    return left


def _wait_text(path, needle: str, timeout: float = 30.0) -> str:
    """The text of ``path`` once it holds ``needle`` (launch writes a process's lines as its
    loop gets to them: late on a loaded machine), or its text at the timeout."""
    end = time.monotonic() + timeout
    text = path.read_text()
    while needle not in text and time.monotonic() < end:
        time.sleep(0.5)
        text = path.read_text()
    return text


# ------------------------------------------------------------------- launch_pytest: captions
@launch_pytest.fixture(scope="module")
def bag_launch(ros_env, sim_bag):
    """The bringup's launch file playing the simulated bag in a loop."""
    from ament_index_python.packages import get_package_share_directory

    path = os.path.join(get_package_share_directory("edge_vlm_bringup"), "launch",
                        "edge_vlm.launch.py")
    args = {"source": "bag", "bag": sim_bag, "loop": "true", "rate": "1.0",
            "use_rgb": "auto"}
    return LaunchDescription(
        [SetEnvironmentVariable(k, ros_env[k]) for k in ENV_KEYS if k in ros_env]
        + [IncludeLaunchDescription(PythonLaunchDescriptionSource(path),
                                    launch_arguments=list(args.items())),
           launch_pytest.actions.ReadyToTest()])


@pytest.mark.timeout(180)
@pytest.mark.launch(fixture=bag_launch)
def test_launch_bag_captions_reach_ros2_topic_echo(ros_env):
    me = psutil.Process()
    end = time.monotonic() + 30
    while len(_node_procs(me)) < len(EXES) and time.monotonic() < end:
        time.sleep(0.2)
    _launched[:] = _node_procs(me)
    names = sorted(os.path.basename(n) for p in _launched for n in p.cmdline()[1:2])
    assert names == sorted(EXES), names
    out = subprocess.run([ROS2, "topic", "echo", "--once", "--no-daemon",
                          "/edge_vlm/caption_text", "std_msgs/msg/String"],
                         env=ros_env, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = yaml.safe_load(out.stdout.split("---")[0])["data"]
    assert isinstance(text, str) and text.strip(), out.stdout


@pytest.mark.timeout(60)
@pytest.mark.launch(fixture=bag_launch, shutdown=True)
def test_launch_shutdown_leaves_no_node():
    assert _launched, "the caption test did not see the launched nodes"
    assert _wait_gone(_launched) == []


# ------------------------------------------------------------------------ single process
def _ros2(env, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([ROS2, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _route_budget(env) -> float | None:
    """compute_budget of the next RouteDecision (``ros2 topic echo --once``)."""
    out = _ros2(env, "topic", "echo", "--once", "--no-daemon", "/edge_vlm/route",
                "edge_vlm_msgs/msg/RouteDecision", timeout=60)
    if out.returncode != 0:
        return None
    return float(yaml.safe_load(out.stdout.split("---")[0])["compute_budget"])


@pytest.mark.timeout(240)
def test_single_process_graph_keeps_names_params_and_captions(ros_env, sim_bag, tmp_path):
    log = tmp_path / "launch.log"
    with open(log, "wb") as fh:
        launcher = subprocess.Popen(
            [ROS2, "launch", "edge_vlm_bringup", "edge_vlm.launch.py", "single_process:=true",
             "source:=bag", f"bag:={sim_bag}", "loop:=true"],
            env=ros_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    procs = []
    try:
        root = psutil.Process(launcher.pid)
        end = time.monotonic() + 60
        while len(procs) < 2 and time.monotonic() < end and launcher.poll() is None:
            procs = _node_procs(root, ("edge_vlm_graph", "edge_vlm_play"))
            time.sleep(0.2)
        names = sorted(os.path.basename(p.cmdline()[1]) for p in procs)
        assert names == ["edge_vlm_graph", "edge_vlm_play"], (names, log.read_text()[-2000:])
        echo = _ros2(ros_env, "topic", "echo", "--once", "--no-daemon", "/edge_vlm/caption_text",
                     "std_msgs/msg/String", timeout=150)
        assert echo.returncode == 0, echo.stderr[-2000:] + log.read_text()[-2000:]
        needle = ("events received once: /event_camera/events -> sttf_perception, anc_router, "
                  "vlm_captioner")
        text = _wait_text(log, needle)
        assert needle in text, text[-2000:]
        assert "sttf_perception -> vlm_captioner: /edge_vlm/token_mask" in text
        for _ in range(3):             # a loaded machine's discovery can take longer than 3 s
            nodes = _ros2(ros_env, "node", "list", "--no-daemon", "--spin-time",
                          "3").stdout.split()
            if set(NODE_NAMES) <= set(nodes):
                break
        assert set(NODE_NAMES) <= set(nodes), nodes
        for _ in range(5):             # the CLI's first discovery can miss the node
            out = _ros2(ros_env, "param", "set", "--no-daemon", "/anc_router",
                        "compute_budget", "0.3")
            if "successful" in out.stdout:
                break
        assert "successful" in out.stdout, out.stdout + out.stderr
        budgets = []                    # float32 in the message; "from the next frame"
        while len(budgets) < 5 and not any(b is not None and abs(b - 0.3) < 1e-6
                                            for b in budgets):
            budgets.append(_route_budget(ros_env))
        # (once seen in CI: [1.0, 1.0, 1.0] after a successful set; not reproduced: say which
        # nodes answered and whether the graph's anc_router logged the change)
        applied = _wait_text(log, "compute_budget -> 0.3", timeout=5.0)
        assert any(b is not None and abs(b - 0.3) < 1e-6 for b in budgets), (
            budgets, out.stdout, _ros2(ros_env, "node", "list", "--no-daemon").stdout,
            "compute_budget -> 0.3" in applied, applied[-1500:])
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
        assert _wait_gone(procs) == []
        try:
            launcher.wait(GONE_WITHIN_S)
        except subprocess.TimeoutExpired:
            launcher.kill()


# ---------------------------------------------------------------------------- orphans
def _one_node_graph(path) -> str:
    """A graph file with anc_router only (the node of config/graph.yaml that starts fastest)."""
    with open(GRAPH) as fh:
        doc = yaml.safe_load(fh)
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] == "anc_router"]
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh)
    return str(path)


def _launcher_cmd(kind: str, graph: str, env: dict) -> list[str]:
    if kind.startswith("runner"):
        from edge_vlm_tools.runner import find_executable

        return [find_executable("edge_vlm_tools", "edge_vlm_run", env), "--graph", graph] + (
            ["--single-process"] if kind == "runner-single" else [])
    return [ROS2, "launch", "edge_vlm_bringup", "edge_vlm.launch.py", f"graph:={graph}"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("kind", ["runner", "runner-single", "launch"])
def test_no_orphan_node_after_launcher_signal(kind, sig, ros_env, tmp_path):
    graph = _one_node_graph(tmp_path / "graph.yaml")
    # own session: the signal reaches the launcher only, as a `kill PID` would
    launcher = subprocess.Popen(_launcher_cmd(kind, graph, ros_env), env=ros_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        root = psutil.Process(launcher.pid)
        end = time.monotonic() + 30
        nodes = []
        exe = "edge_vlm_graph" if kind == "runner-single" else "anc_router"
        while not nodes and time.monotonic() < end and launcher.poll() is None:
            nodes = _node_procs(root, (exe,))
            time.sleep(0.1)
        assert nodes, f"{kind}: the node did not start (launcher rc {launcher.poll()})"
        time.sleep(1.0)                 # the node is past its exec, importing or spinning
        launcher.send_signal(sig)
        assert _wait_gone(nodes) == [], f"{kind}: node left after {signal.Signals(sig).name}"
        launcher.wait(GONE_WITHIN_S)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(5)
