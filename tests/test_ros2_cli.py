"""The graph driven by the ``ros2`` command itself, and the one budget knob at graph level.

launch_pytest starts the bringup's launch file (test_launch.py's ``bag_launch``, on this
module's 2.6 s simulated bag played in a loop): three nodes and the bag player, each in its own
process, in this module's own ROS_DOMAIN_ID with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST. The
test runs the real ``ros2`` command as subprocesses (``--no-daemon``: no ``ros2`` daemon is
started, and the shutdown test checks that none runs):

* ``ros2 topic echo --once /edge_vlm/caption``: a caption text arrives;
* ``ros2 node list``: the three nodes; ``ros2 param get /anc_router compute_budget``: 1.0;
* ``ros2 param set /anc_router compute_budget 0.2`` -> "Set parameter successful": from the
  next frame on anc_router's RouteDecisions say tiny at 0.2, and vlm_captioner executes them
  (issue 18, item 5; the core-level twin is tests/test_budget_knob.py): each frame's
  ComputeCost has its decision's branch and budget (0.2 can only come from the router: the
  captioner's own compute_budget stays 1.0), once one frame ran at 0.2 every later one does
  (a frame whose decision came late is routed locally under the router's last budget), with
  fewer active parameters than any frame before and fewer FLOPs than the same frame of the
  bag (same changed tokens) on the medium branch before; ``ros2 topic echo --filter`` sees it;
* ``ros2 param set`` out of range (5.0, -1.0) is rejected, the value stays 0.2, the nodes run
  on.

An in-process subscriber (its own rclpy context) records the RouteDecision and ComputeCost
streams, to pair each frame's decision with its executed cost.
"""
from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, NamedTuple

import psutil
import pytest
import yaml

import test_launch
from edge_vlm.params import defaults
from edge_vlm.stream.frames import period_ns
from test_launch import ROS2, _node_procs, _wait_gone

# the launch_pytest graph of test_launch.py with the module-scoped fixtures it needs (reused;
# module scope: one graph for this module, on this module's ``sim_bag``)
bag_launch = test_launch.bag_launch
event_loop = test_launch.event_loop
launch_service = test_launch.launch_service
ros_env = test_launch.ros_env

NODES = ("/sttf_perception", "/anc_router", "/vlm_captioner")
LOW_BUDGET = 0.2                        # <= 1/3: the router's rule caps the route to tiny
CLI_TIMEOUT_S = 30.0
GET_BUDGET = ("param", "get", "--no-daemon", "--timeout", "10", "/anc_router", "compute_budget")
PERIOD_NS = period_ns(defaults("anc_router"))   # the frame grid (graph.yaml keeps the default)
LOOP_S = 2.6                            # the bag's length: it is played in a loop
#: a cost is paired with the latest route of its frame received at most this long before it:
#: frame indices repeat every loop (2.6 s); backpressure (max_pending_frames 30) bounds the
#: captioner's lag to about 1 s, and a late route (local routing) comes after its cost
PAIR_WINDOW_S = 1.5
_seen: list[psutil.Process] = []        # the node processes, for the shutdown test


class Received(NamedTuple):
    t: float            # time.monotonic() at arrival
    kind: str           # "route" or "cost"
    msg: Any            # RouteDecision or ComputeCost


class Executed(NamedTuple):
    """One frame: the RouteDecision anc_router published and the ComputeCost of its execution."""

    route: Any
    cost: Any
    t: float            # arrival of the cost


class Recorder:
    """RouteDecision and ComputeCost messages in arrival order (a node in a context of its own,
    spun in a thread)."""

    def __init__(self, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from edge_vlm_msgs.msg import ComputeCost, RouteDecision
        from edge_vlm_ros.qos import subscription

        self._rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("edge_vlm_ros2_cli_test", context=self.ctx)
        self.log: list[Received] = []
        self._lock = threading.Lock()
        subscription(self.node, RouteDecision, "route", lambda m: self._add("route", m))
        subscription(self.node, ComputeCost, "compute_cost", lambda m: self._add("cost", m))
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _add(self, kind: str, msg) -> None:
        with self._lock:
            self.log.append(Received(time.monotonic(), kind, msg))

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.log)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.ctx)
        self._thread.join(5.0)


def _ns(t) -> int:
    return t.sec * 1_000_000_000 + t.nanosec


def _frame(msg) -> int:
    """The frame index a RouteDecision (its window start in sensor time) or a ComputeCost is
    about: the key vlm_captioner matches them by (header stamps are in the packets' clock)."""
    if hasattr(msg, "frame_index"):
        return int(msg.frame_index)
    return round(_ns(msg.window_start) / PERIOD_NS)


def executed(log: list[Received]) -> list[Executed]:
    """Each ComputeCost with the RouteDecision of its frame (received shortly before it); costs
    without one (a late decision: the captioner routed locally) are left out."""
    last: dict[int, Received] = {}
    out = []
    for r in log:
        if r.kind == "route":
            last[_frame(r.msg)] = r
            continue
        route = last.get(_frame(r.msg))
        if route is not None and r.t - route.t <= PAIR_WINDOW_S:
            out.append(Executed(route.msg, r.msg, r.t))
    return out


class Cli(NamedTuple):
    rc: int
    out: str            # stdout
    err: str            # stderr


def ros2_all(env: dict, *commands: tuple[str, ...], timeout: float = CLI_TIMEOUT_S) -> list[Cli]:
    """Run ``ros2 ARGS`` for each ``commands`` entry at the same time; their results."""
    procs = [subprocess.Popen([ROS2, *c], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(Cli(p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def ros2(env: dict, *args: str, timeout: float = CLI_TIMEOUT_S) -> str:
    """Run ``ros2 ARGS``; its stdout and stderr, asserting exit status 0."""
    (r,) = ros2_all(env, args, timeout=timeout)
    assert r.rc == 0, f"ros2 {' '.join(args)}: rc {r.rc}\n{r.out[-2000:]}{r.err[-2000:]}"
    return r.out + r.err


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory, ros_env) -> str:
    """A 2.6 s simulated bag (two gestures; test_launch's 1.2 s bag would repeat frame indices
    within the captioner's lag)."""
    from edge_vlm_tools.demo import make_sim_bag

    path = str(tmp_path_factory.mktemp("ros2_cli") / "bag")
    return make_sim_bag(path, labels=(2, 8), seed=1, clip_duration_s=1.0, gap_s=0.3)


@pytest.fixture(scope="module")
def recorder(ros_env):
    rec = Recorder(int(ros_env["ROS_DOMAIN_ID"]))
    yield rec
    rec.close()


@pytest.mark.timeout(180)
@pytest.mark.launch(fixture=bag_launch)
def test_ros2_cli_drives_the_graph_and_the_budget_knob(ros_env, recorder):
    t0 = time.monotonic()
    # a caption through `ros2 topic echo --once` (the type given: it may not be advertised yet)
    out = ros2(ros_env, "topic", "echo", "--once", "--no-daemon", "/edge_vlm/caption",
               "edge_vlm_msgs/msg/Caption", timeout=120)
    caption = yaml.safe_load(out.split("---")[0])
    assert isinstance(caption["text"], str) and caption["text"].strip(), out
    _seen[:] = _node_procs(psutil.Process())
    print(f"first caption after {time.monotonic() - t0:.1f} s: {caption['text']!r}")

    nodes, budget = ros2_all(ros_env, ("node", "list", "--no-daemon", "--spin-time", "5"),
                             GET_BUDGET)
    assert set(NODES) <= set(nodes.out.split()), nodes
    assert "Double value is: 1.0" in budget.out, budget

    # baseline at budget 1.0, a loop of the bag: the router picks medium for most frames
    def baseline() -> bool:
        log = recorder.snapshot()
        first = next((r.t for r in log if r.kind == "cost"), time.monotonic())
        medium = [e for e in executed(log) if list(e.route.branches_run) == ["medium"]]
        return len(medium) >= 10 and time.monotonic() - first > LOOP_S
    wait_for(baseline, 30, "a loop of the bag with 10 frames executed on the medium branch")
    t_set = time.monotonic()
    out = ros2(ros_env, "param", "set", "--no-daemon", "--timeout", "10", "/anc_router",
               "compute_budget", str(LOW_BUDGET))
    assert "Set parameter successful" in out, out
    t_done = time.monotonic()

    # a loop of the bag executed at the low budget
    after = wait_for(lambda: switched(recorder.snapshot(), t_set), 30,
                     "a loop of the bag executed after the change")
    log = recorder.snapshot()
    check_router_switched(log, t_set, t_done)
    check_executed(log, t_set, t_done, [e for e in executed(log) if e.t < t_set], after)

    # the same through the CLI: a ComputeCost at the low budget says tiny
    out = ros2(ros_env, "topic", "echo", "--once", "--no-daemon", "--filter",
               f"m.compute_budget < {LOW_BUDGET + 0.01}", "/edge_vlm/compute_cost",
               "edge_vlm_msgs/msg/ComputeCost")
    assert yaml.safe_load(out.split("---")[0])["branch"] == "tiny", out

    check_invalid_values_rejected(ros_env, recorder)
    print(f"whole test {time.monotonic() - t0:.1f} s")


def first_low_cost(log: list[Received], t_set: float) -> float | None:
    """Arrival of the first ComputeCost at the low budget after ``t_set``."""
    return next((r.t for r in log if r.kind == "cost" and r.t > t_set
                 and r.msg.compute_budget < LOW_BUDGET + 0.01), None)


def switched(log: list[Received], t_set: float) -> list[Executed] | None:
    """The frames executed on their RouteDecision in the loop of the bag from the first cost at
    the low budget on (None until that loop is over; frames that fell back to local routing
    are not paired, so not there)."""
    first = first_low_cost(log, t_set)
    if first is None or log[-1].t < first + LOOP_S:
        return None
    return [e for e in executed(log) if first <= e.t <= first + LOOP_S]


def check_router_switched(log: list[Received], t_set: float, t_done: float) -> None:
    """anc_router decides at the low budget from the next frame on, tiny, and stays there."""
    routes = [r for r in log if r.kind == "route" and r.t > t_set]
    budgets = [round(r.msg.compute_budget, 3) for r in routes]
    first = budgets.index(LOW_BUDGET)
    assert set(budgets[first:]) == {LOW_BUDGET}, budgets
    assert routes[first].t <= t_done + 1.0, "the router switched late"
    assert all(list(r.msg.branches_run) == ["tiny"] for r in routes[first:])


def check_executed(log: list[Received], t_set: float, t_done: float, before: list[Executed],
                   after: list[Executed]) -> None:
    """vlm_captioner executes the router's decisions: budget 0.2 comes only from anc_router
    (the captioner's own compute_budget stays 1.0). Once a frame ran at 0.2, every later frame
    runs tiny at 0.2 (frames are captioned in order; a frame whose decision came late is
    routed locally under the router's last budget); each runs its decision's branch. At the
    low budget fewer parameters and FLOPs than the same frames on the medium branch before."""
    assert all(r.msg.compute_budget == pytest.approx(1.0) for r in log
               if r.kind == "cost" and r.t < t_set)
    first = first_low_cost(log, t_set)
    # the captioner lags the router by at most ~1 s (backpressure) plus a frame's wait
    assert first - t_done < 4.0, f"first cost at {LOW_BUDGET} {first - t_done:.1f} s late"
    later = [r.msg for r in log if r.kind == "cost" and r.t >= first]
    assert {(c.branch, round(c.compute_budget, 3)) for c in later} == {("tiny", LOW_BUDGET)}
    for e in after:
        assert list(e.route.branches_run) == [e.cost.branch] == ["tiny"], (e.route, e.cost)
        assert e.route.compute_budget == pytest.approx(LOW_BUDGET)

    assert max(e.cost.params_active for e in after) < min(e.cost.params_active for e in before)
    # FLOPs: the same frame of the looping bag with the same changed tokens (a frame's FLOPs
    # also count its caption's decoding, so only the medium -> tiny change is compared)
    medium: dict[tuple[int, int], float] = {}
    for e in before:
        if e.cost.branch == "medium":
            key = (e.cost.frame_index, e.cost.active_tokens)
            medium[key] = min(e.cost.flops_executed, medium.get(key, float("inf")))
    same = [(medium[k], e.cost.flops_executed) for e in after
            if (k := (e.cost.frame_index, e.cost.active_tokens)) in medium]
    print(f"{len(same)} frames, FLOPs medium at 1.0 -> tiny at {LOW_BUDGET}: "
          + ", ".join(f"{hi / 1e6:.0f}M -> {lo / 1e6:.0f}M" for hi, lo in same[:6]))
    assert len(same) >= 3, (len(before), len(after))
    assert all(lo < hi for hi, lo in same), same


def check_invalid_values_rejected(env: dict, recorder: Recorder) -> None:
    bad = ("5.0", "-1.0")
    for value, r in zip(bad, ros2_all(env, *[("param", "set", "--no-daemon", "--timeout", "10",
                                              "/anc_router", "compute_budget", v)
                                             for v in bad])):
        text = r.out + r.err
        assert "Setting parameter failed" in text and "successful" not in text, (value, r)
    assert f"Double value is: {LOW_BUDGET}" in ros2(env, *GET_BUDGET)
    # the nodes run on: decisions and costs keep coming, at the budget that was accepted
    t = time.monotonic()

    def fresh():
        new = [r for r in recorder.snapshot() if r.t > t]
        return new if {"route", "cost"} <= {r.kind for r in new} else None
    later = wait_for(fresh, 20, "decisions and costs after the rejected values")
    assert all(r.msg.compute_budget == pytest.approx(LOW_BUDGET) for r in later)
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in _seen)


@pytest.mark.timeout(60)
@pytest.mark.launch(fixture=bag_launch, shutdown=True)
def test_ros2_cli_shutdown_leaves_no_node_and_no_daemon(ros_env):
    assert _seen, "the CLI test did not see the launched nodes"
    assert _wait_gone(_seen) == []
    out = subprocess.run([ROS2, "daemon", "status"], env=ros_env, capture_output=True,
                         text=True, timeout=CLI_TIMEOUT_S)
    assert "not running" in out.stdout, out.stdout + out.stderr
