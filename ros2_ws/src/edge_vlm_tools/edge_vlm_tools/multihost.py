"""edge_vlm_multihost: the graph split across two hosts (drone, ground) joined by a network
link, simulated on one Linux machine with network namespaces (root only).

Usage::

    edge_vlm_multihost PLAN.json --out-dir DIR [--domain-id N]

The plan (written by ``edge-vlm bench multihost``, :mod:`edge_vlm.bench.multihost`) lists
runs: ``{"name", "bag", "rate", "cap", "loop_s", "partition_at_s", "partition_s",
"restart_at_s", "drain_s"}``. For the whole plan this tool creates two network namespaces
(``evlm-drone-<pid>``, ``evlm-ground-<pid>``) joined by a veth pair on a private /30, with
multicast off on the link (discovery only through ``ROS_STATIC_PEERS`` +
``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET``), and removes them at the end, also on failure,
SIGINT and SIGTERM. Per run, in the namespaces:

* drone: ``ros2 launch edge_vlm_bringup edge_vlm.launch.py nodes:=drone`` (sttf_perception,
  anc_router), a recorder of the EventPackets (arrival times before the link) and the bag
  player (``edge_vlm_play``, once the drone's nodes, its recorder and the ground's captioner
  subscribed to the events; it then holds, ``--hold-file``, until every node's log says that
  its subscription matched the player too: a best-effort packet that crosses the link before
  the ground's side of the match is lost);
* ground: the same launch file with ``nodes:=ground`` (vlm_captioner) and a recorder of the
  captions and compute costs;
* ``cap``: a ``tbf`` qdisc on both ends of the link (``2mbit``, ...), from the start or
  ``cap_after_s`` after the bag started (a link that degrades in flight); ``loop_s``: the bag loops
  for that long; ``partition_at_s`` / ``partition_s``: the link goes down then up again;
  ``restart_at_s``: the ground's launch is stopped (SIGINT) and started again; ``crash_at_s``:
  the ground's captioner is killed (SIGKILL) and its launch (``respawn:=true``) starts it
  again; ``dds_profile``: ``"rediscovery"``: every process of both hosts runs with the bringup's
  ``config/fastdds_rediscovery.xml`` (``FASTDDS_DEFAULT_PROFILES_FILE``);
* ``link``: ``"active"``: both launches get ``link:=active`` (the drone's sttf_perception
  relays the active patches' events on ``edge_vlm/link_events``, the ground's captioner bins
  those); the player waits for the drone's nodes and recorder on the raw events, and the run
  for the captioner's subscription to the relay (sttf_perception logs it).

A run with ``cameras`` (a list of ``{"ns", "bag"}``) is several cameras, each in its own
namespace, feeding one ground host: :mod:`edge_vlm_tools.multicam` (its own namespaces).

Each run leaves ``DIR/<name>/``: the two recorders' JSON lines, the node logs
(``drone/``, ``ground/``) and ``run.json``: the link's byte counters (from ``ip -s link``)
while the bag played, qdisc drops, the resident memory of each host's processes (sampled
every 0.5 s), the nodes' shutdown counters, exit codes and the wall-clock times (ns) of the
partition and restart; beside it (two-host runs) ``linkstat.json``: what crossed the drone's
veth end per DDS topic (:mod:`edge_vlm_tools.linkstat`, started before the nodes; its window
is the play time; absent when it cannot capture, the run goes on). Exit code 0 when every
run ran, 1 when one failed, 3 when network namespaces are unavailable (not root, no ``ip``):
one ``error:`` line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

from edge_vlm.bench.e2e import shutdown_counters
from edge_vlm_tools.multicam import run_cameras
from edge_vlm_tools.netns import (CAPTION_STREAMS, DRONE_STREAMS, HALVES, HOLD_FILE,
                                  READY_TIMEOUT_S, SAMPLE_S, SUBSCRIBERS, Host, Link,
                                  StopRequested, create_link, destroy_link, drain, link_counters,
                                  mark_linkstat, namespaces_available, release_player, set_cap,
                                  set_link_up, start_linkstat, tool)
from edge_vlm_tools.proc import descendants, graph_memory
from edge_vlm_tools.runner import bringup_file, stop_graph

PROG = "edge_vlm_multihost"
#: the played EventPacket topic (the drone's nodes, no ROS namespace)
EVENTS_TOPIC = "event_camera/events"
LINKSTAT_JSON = "linkstat.json"

def _caption_host(drone: Host, ground: Host) -> Host:
    return drone if drone.local else ground


def _ready(drone: Host, ground: Host) -> list[str]:
    """What is not ready yet: nodes that did not log ``ready:``, recorders that are not
    recording or lack the captioner's publisher."""
    missing = [node for host in (drone, ground) for node in host.nodes
               if "]: ready:" not in host.text(f"{node}.log")]
    if "recording" not in drone.text("recorder.out"):
        missing.append("drone recorder")
    if "publisher of caption" not in _caption_host(drone, ground).text("recorder.out"):
        missing.append("recorder <- caption")
    return missing


def _wait_ready(drone: Host, ground: Host, timeout: float = READY_TIMEOUT_S) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for host in (drone, ground):
            for name, p in host.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{host.role} {name} exited with code {p.returncode}")
        if not _ready(drone, ground):
            return
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f} s: {_ready(drone, ground)}")


#: sttf_perception's log line once the ground's captioner subscribed to the relay
LINK_MATCHED = "link_events subscribers: 1"


def _wait_link(drone: Host, timeout: float = READY_TIMEOUT_S) -> None:
    """Link mode 'active': until the ground's captioner subscribed to the drone's relay."""
    end = time.monotonic() + timeout
    while LINK_MATCHED not in drone.text("sttf_perception.log"):
        if time.monotonic() > end:
            raise RuntimeError(f"link mode active: no subscriber on the relay after "
                               f"{timeout:.0f} s")
        time.sleep(0.2)


@dataclass
class RunState:
    """What a run measured while the bag played (``run.json``)."""

    name: str
    play_start_ns: int | None = None
    play_end_ns: int | None = None
    link_start: dict = field(default_factory=dict)
    link_end: dict = field(default_factory=dict)
    rss_mb: dict = field(default_factory=lambda: {"drone": [], "ground": []})
    events: dict = field(default_factory=dict)      # partition / restart wall times (ns)
    counters: dict = field(default_factory=dict)
    counters_before_restart: dict = field(default_factory=dict)    # the first captioner's
    exit_codes: dict = field(default_factory=dict)
    player_rc: int | None = None
    load_avg_1m: dict = field(default_factory=dict)     # the machine's, at play start / end
    linkstat: str = ""      # the link counter's JSON beside run.json ('' when it did not run)
    error: str = ""


def _sample(state: RunState, hosts: list[Host]) -> None:
    for h in hosts:
        launch = h.procs.get("launch")
        if launch is not None and launch.poll() is None:
            state.rss_mb[h.role].append(round(graph_memory(launch.pid).rss_mb, 1))


def _restart_ground(ground: Host, state: RunState) -> None:
    """Stop the ground's launch (SIGINT: the captioner's clean stop) and start it again."""
    state.events["restart_stop_ns"] = time.time_ns()
    state.exit_codes.update(ground.stop("launch"))
    for n in HALVES["ground"]:           # launch truncates the node log: keep the first one
        src = os.path.join(ground.dir, f"{n}.log")
        if os.path.exists(src):
            os.replace(src, os.path.join(ground.dir, f"{n}.before_restart.log"))
    state.events["restart_start_ns"] = time.time_ns()
    ground.launch()


def _crash_ground(ground: Host, state: RunState) -> None:
    """SIGKILL the ground's captioner process (a crash); its launch (``respawn:=true``)
    starts it again."""
    launch = ground.procs["launch"]
    pids = [p for p in descendants(launch.pid) if "vlm_captioner" in _cmdline(p)]
    state.events["crash_ns"] = time.time_ns()
    state.events["crash_log_len"] = len(ground.text("vlm_captioner.log"))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _respawned_ready(ground: Host, state: RunState) -> bool:
    """The respawned captioner logged ``ready:``: its log was truncated (seen shorter than at
    the crash; the new process writes nothing for seconds), then written anew."""
    text, ev = ground.text("vlm_captioner.log"), state.events
    if len(text) < ev["crash_log_len"]:
        ev["crash_log_truncated"] = 1
    return bool(ev.get("crash_log_truncated")) and "]: ready:" in text


def _partition(link: Link, state: RunState, due: bool, seconds: float) -> None:
    """Take the link down once ``due``; up again ``seconds`` after it went down."""
    ev = state.events
    if due and "link_down_ns" not in ev:
        set_link_up(link, False)
        ev["link_down_ns"] = time.time_ns()
    elif ("link_down_ns" in ev and "link_up_ns" not in ev
          and time.time_ns() - ev["link_down_ns"] >= seconds * 1e9):
        set_link_up(link, True)
        ev["link_up_ns"] = time.time_ns()


def _event_nodes(run: dict, drone: Host, ground: Host) -> list[tuple[Host, tuple[str, ...]]]:
    """The nodes whose subscription to the played events must have matched the player before
    it plays: every node of both halves (link 'active': the ground's captioner subscribes to
    the drone's relay instead)."""
    active = run.get("link") == "active" and not run.get("local")
    return [(drone, drone.nodes), (ground, () if active else ground.nodes)]


def _timeline(run: dict, link: Link, drone: Host, ground: Host, state: RunState,
              counter=None) -> None:
    """While the player runs: sample memory (every 0.5 s once the bag plays); partition,
    restart, cap and stop the loop on time; the link counter's window spans the play."""
    player = drone.procs["player"]
    loop_s, t_part = float(run.get("loop_s") or 0), float(run.get("partition_at_s") or 0)
    part_s, t_restart = float(run.get("partition_s") or 0), float(run.get("restart_at_s") or 0)
    t_crash = float(run.get("crash_at_s") or 0)
    t0, next_sample = None, 0.0
    while player.poll() is None:
        now = time.monotonic()
        if t0 is None and release_player(drone, _event_nodes(run, drone, ground),
                                         "/" + EVENTS_TOPIC):
            t0, state.play_start_ns = now, time.time_ns()
            state.load_avg_1m["start"] = round(os.getloadavg()[0], 2)
            mark_linkstat(counter, False)
            state.link_start = link_counters(link)
        if t0 is not None:
            el = now - t0
            if t_part:
                _partition(link, state, el >= t_part, part_s)
            if t_restart and "restart_stop_ns" not in state.events and el >= t_restart:
                _restart_ground(ground, state)
            if ("restart_start_ns" in state.events and "restart_ready_ns" not in state.events
                    and "]: ready:" in ground.text("vlm_captioner.log")):
                state.events["restart_ready_ns"] = time.time_ns()
            if t_crash and "crash_ns" not in state.events and el >= t_crash:
                _crash_ground(ground, state)
            if ("crash_ns" in state.events and "crash_ready_ns" not in state.events
                    and _respawned_ready(ground, state)):
                state.events["crash_ready_ns"] = time.time_ns()
            if run.get("cap_after_s") and "cap_on_ns" not in state.events \
                    and el >= float(run["cap_after_s"]):
                set_cap(link, run["cap"])
                state.events["cap_on_ns"] = time.time_ns()
            if loop_s and el >= loop_s:
                stop_graph([player], 5.0)
                break
        if t0 is not None and now >= next_sample:      # memory while the bag plays
            _sample(state, [drone, ground])
            next_sample = now + SAMPLE_S
        time.sleep(0.05)
    if "link_down_ns" in state.events and "link_up_ns" not in state.events:
        set_link_up(link, True)
        state.events["link_up_ns"] = time.time_ns()
    state.play_end_ns = time.time_ns()
    state.load_avg_1m["end"] = round(os.getloadavg()[0], 2)
    mark_linkstat(counter, True)
    state.link_end = link_counters(link)
    state.player_rc = player.returncode


def run_one(run: dict, link: Link, out_dir: str, domain: int) -> RunState:
    """One run of the plan (see the module doc)."""
    state = RunState(run["name"])
    run_dir = os.path.join(out_dir, run["name"])
    shutil.rmtree(run_dir, ignore_errors=True)
    local = bool(run.get("local"))
    drone, ground = (Host(link, r, run_dir, domain, local) for r in ("drone", "ground"))
    if run.get("crash_at_s"):
        ground.launch_args = ["respawn:=true"]
    if run.get("dds_profile"):      # a Fast DDS XML profile of the bringup, on both hosts
        xml = bringup_file(os.path.join("config", f"fastdds_{run['dds_profile']}.xml"))
        for host in (drone, ground):
            host.env["FASTDDS_DEFAULT_PROFILES_FILE"] = xml
    active = run.get("link") == "active" and not local
    if active:
        for host in (drone, ground):
            host.launch_args = host.launch_args + ["link:=active"]
    counter = None          # the link counter (drone's veth end), before any node starts
    try:
        # ``cap_after_s``: the link degrades in flight (the cap comes that long after the bag
        # started); else it is capped from the start, discovery included
        set_cap(link, "" if run.get("cap_after_s") else (run.get("cap") or ""))
        if not local:
            counter = start_linkstat(drone, link.veth[0], os.path.join(run_dir, LINKSTAT_JSON))
            ground.launch()
            ground.record(CAPTION_STREAMS)
        drone.launch()
        drone.record(DRONE_STREAMS + (CAPTION_STREAMS if local else ()))
        _wait_ready(drone, ground)
        if active:
            _wait_link(drone)
        player = [tool("edge_vlm_play"), run["bag"], "--rate", str(run.get("rate", 1.0)),
                  "--wait-for", f"{EVENTS_TOPIC}={SUBSCRIBERS - active}",
                  "--wait-for", "edge_vlm/ground_truth=1", "--wait-timeout", "60",
                  "--hold-file", os.path.join(drone.dir, HOLD_FILE)]
        drone.start("player", player + (["--loop"] if run.get("loop_s") else []))
        _timeline(run, link, drone, ground, state, counter)
        drain(_caption_host(drone, ground), float(run.get("drain_s", 3.0)))
    except (RuntimeError, OSError, ValueError) as exc:
        state.error = str(exc)
    except (KeyboardInterrupt, StopRequested) as exc:
        state.error = f"stopped ({type(exc).__name__})"
        raise
    finally:
        for host in (drone, ground):
            state.exit_codes.update(host.stop_all())
        if counter is not None:
            state.exit_codes.update(stop_graph([counter], 10.0))
            if os.path.isfile(os.path.join(run_dir, LINKSTAT_JSON)):
                state.linkstat = LINKSTAT_JSON
        set_cap(link, "")
    for host in (drone, ground):
        for node in host.nodes:
            state.counters[node] = shutdown_counters(os.path.join(host.dir, f"{node}.log"),
                                                     node)
    for node in HALVES["ground"]:
        before = os.path.join(ground.dir, f"{node}.before_restart.log")
        if os.path.exists(before):
            state.counters_before_restart = shutdown_counters(before, node)
    with open(os.path.join(run_dir, "run.json"), "w") as fh:
        json.dump({**asdict(state), "dir": run_dir, "link": asdict(link), "run": run}, fh,
                  indent=1)
    return state


def _raise_stop(sig, _frame) -> None:
    raise StopRequested(f"signal {sig}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("plan", help="JSON plan (runs)")
    ap.add_argument("--out-dir", required=True, help="one folder per run")
    ap.add_argument("--domain-id", type=int, default=181, help="ROS_DOMAIN_ID (default 181)")
    args = ap.parse_args(argv)
    why = namespaces_available()
    if why:
        print(f"{PROG}: error: {why}", file=sys.stderr)
        return 3
    try:
        with open(args.plan) as fh:
            runs = json.load(fh)["runs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{PROG}: error: plan {args.plan}: {exc}", file=sys.stderr)
        return 2
    # SIGINT even when started in the background (which ignores it); SIGTERM / SIGHUP alike
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        link = create_link()
    except RuntimeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 3
    failed, cams = 0, {"created": [], "left": []}     # the several-camera runs' namespaces
    try:
        for run in runs:
            print(f"{PROG}: run {run['name']} ...", flush=True)
            if run.get("cameras"):
                state = run_cameras(run, args.out_dir, args.domain_id, cams)
            else:
                state = run_one(run, link, args.out_dir, args.domain_id)
            if state.error:
                failed += 1
                print(f"{PROG}: run {run['name']} failed: {state.error}", file=sys.stderr,
                      flush=True)
    except (KeyboardInterrupt, StopRequested):
        print(f"{PROG}: stopped", file=sys.stderr)
        failed += 1
    finally:
        left = destroy_link(link) + cams["left"]
        created = link.created + cams["created"]
        with open(os.path.join(args.out_dir, "cleanup.json"), "w") as fh:
            json.dump({"created": created, "left": left}, fh)
        print(f"{PROG}: removed {', '.join(created)}"
              + (f"; LEFT {left}" if left else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
