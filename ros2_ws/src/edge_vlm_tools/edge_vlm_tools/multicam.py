"""Several cameras into one ground host (a run of ``edge_vlm_multihost`` with ``cameras``).

The plan's run ``{"name", "cameras": [{"ns": "cam1", "bag": ...}, ...], "drain_s"}``: one
network namespace per camera (``evlm-cam<k>-<pid>``, the drone of that camera) and one ground
namespace (``evlm-hub-<pid>``), each camera's namespace joined to the ground's by its own veth
pair whose ground ends are ports of a bridge in the ground namespace (a /24 in 10.214.0.0/16:
cameras ``.1``, ``.2``, ..., the ground ``.254``), multicast off everywhere (discovery through
``ROS_STATIC_PEERS`` only: each camera names the ground, the ground names every camera). One
ROS domain for all; the cameras are told apart by ROS namespaces (``/cam1``, ``/cam2``, ...):

* camera ``k``'s namespace: ``ros2 launch edge_vlm_bringup edge_vlm.launch.py nodes:=drone
  namespace:=camk events_topic:=/camk/event_camera/events image_topic:=/camk/camera/image_raw``,
  a recorder of ``/camk``'s EventPackets, masks and routes, and the player of its bag with every
  bag topic moved under ``/camk`` (held until the camera's nodes and its ground captioner logged
  that their subscriptions matched it: ``netns.release_player``);
* the ground: per camera the same launch file with ``nodes:=ground`` and that camera's
  namespace and input topics (one captioner per camera: a failing one takes no other camera
  down) and a recorder of ``/camk``'s captions; plus a probe recorder of the un-namespaced
  ``/edge_vlm/caption`` (nothing may arrive there).

Everything created is removed at the end, also on failure and on a stop signal (the caller's
``cleanup`` dict collects what was created and what was left). Run folder: ``<name>/camk/``
(drone), ``<name>/ground/camk/``, ``<name>/ground/probe.jsonl`` and ``run.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from edge_vlm.bench.e2e import shutdown_counters
from edge_vlm_tools.netns import (CAPTION_STREAMS, DRONE_STREAMS, HALVES, HOLD_FILE,
                                  READY_TIMEOUT_S, SAMPLE_S, Host, Link, StopRequested, drain, ip,
                                  link_counters, release_player, ros2, tool)
from edge_vlm_tools.proc import graph_memory
from edge_vlm_tools.runner import launch_file

__all__ = ["create_star", "destroy_star", "run_cameras"]

#: the ground's address on the cameras' /24 (the cameras: 1, 2, ...)
GROUND_IP = 254


@dataclass
class Star:
    """The cameras' namespaces joined to the ground's through a bridge there."""

    ground: str
    bridge: str
    ground_ip: str
    links: dict[str, Link] = field(default_factory=dict)    # camera ns -> its Link
    created: list[str] = field(default_factory=list)


def create_star(cameras: list[str], tag: int, cleanup: dict) -> Star:
    """The namespaces, veth pairs and bridge; what is made is listed in ``cleanup['created']``
    at once, and removed again when a step fails."""
    sub = f"10.214.{tag % 250}"
    star = Star(f"evlm-hub-{tag}", f"evbr{tag}", f"{sub}.{GROUND_IP}")
    try:
        _build(star, cameras, tag, sub, cleanup)
    except BaseException:
        destroy_star(star, cleanup)
        raise
    return star


def _build(star: Star, cameras: list[str], tag: int, sub: str, cleanup: dict) -> None:
    def add_ns(ns: str) -> None:
        ip("netns", "add", ns)
        star.created.append(ns)
        cleanup.setdefault("created", []).append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    add_ns(star.ground)
    g = ("-n", star.ground)
    ip(*g, "link", "add", star.bridge, "type", "bridge")
    ip(*g, "addr", "add", f"{star.ground_ip}/24", "dev", star.bridge)
    ip(*g, "link", "set", star.bridge, "multicast", "off", "up")
    for k, cam in enumerate(cameras, 1):
        ns, veth = f"evlm-{cam}-{tag}", (f"evc{k}{tag}", f"evh{k}{tag}")
        add_ns(ns)
        star.links[cam] = Link(ns, star.ground, veth, (f"{sub}.{k}", star.ground_ip))
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        ip("link", "set", veth[0], "netns", ns)
        ip("link", "set", veth[1], "netns", star.ground)
        ip("-n", ns, "addr", "add", f"{sub}.{k}/24", "dev", veth[0])
        ip("-n", ns, "link", "set", veth[0], "multicast", "off", "up")
        ip(*g, "link", "set", veth[1], "master", star.bridge, "multicast", "off", "up")


def destroy_star(star: Star, cleanup: dict) -> None:
    """Remove the namespaces (their veths and the bridge go with them); ``cleanup['left']``
    gets what could not be removed."""
    for ns in star.created:
        ip("netns", "del", ns, check=False)
    for link in star.links.values():
        ip("link", "del", link.veth[0], check=False)    # only when never moved
    listed = set(ip("netns", "list", check=False).split())
    cleanup.setdefault("left", []).extend(ns for ns in star.created if ns in listed)
    star.created = []


class NsHost(Host):
    """The processes of one camera's half (drone or ground) in a namespace."""

    def __init__(self, ns: str, role: str, folder: str, env: dict, nodes: tuple[str, ...],
                 cam: str):
        self.ns, self.role, self.nodes, self.local, self.dir = ns, role, nodes, False, folder
        os.makedirs(folder, exist_ok=True)
        self.env, self.cam, self.procs = env, cam, {}
        self.bag = ""           # a drone's recording (the plan's)

    def launch(self):
        c = self.cam
        half = "drone" if "drone" in self.role else "ground"
        return self.start("launch", [
            ros2(), "launch", launch_file(), f"nodes:={half}", f"namespace:={c}",
            f"events_topic:=/{c}/event_camera/events", f"image_topic:=/{c}/camera/image_raw",
            f"log_dir:={self.dir}"])

    def record(self, streams: tuple[str, ...], name: str = "records") -> None:
        self.start("recorder", [tool("edge_vlm_record"), os.path.join(self.dir, f"{name}.jsonl"),
                                "--topics", *streams, "--ros-args", "-r", f"__ns:=/{self.cam}"])

    def play(self, bag: str, subscribers: int) -> None:
        c = self.cam
        remaps = [x for t in ("event_camera/events", "camera/image_raw", "edge_vlm/ground_truth")
                  for x in ("--remap", f"/{t}:=/{c}/{t}")]
        self.start("player", [tool("edge_vlm_play"), bag, "--rate", "1.0", *remaps,
                              "--wait-for", f"/{c}/event_camera/events={subscribers}",
                              # the ground recorder's ground-truth subscription matched too
                              # (the segments are published once; an unmatched one is lost)
                              "--wait-for", f"/{c}/edge_vlm/ground_truth=1",
                              "--wait-timeout", "90",
                              # until its nodes' side of the match (release_player)
                              "--hold-file", os.path.join(self.dir, HOLD_FILE)])

    def missing(self) -> list[str]:
        """What of this half is not ready: node ``ready:`` lines, the recorder."""
        out = [f"{self.role} {n}" for n in self.nodes if "]: ready:" not in self.text(f"{n}.log")]
        want = "recording" if "drone" in self.role else "publisher of caption"
        if want not in self.text("recorder.out"):
            out.append(f"{self.role} recorder")
        return out


@dataclass
class CamState:
    """What a several-camera run measured (``run.json``)."""

    name: str
    cameras: list[str]
    play_ns: dict = field(default_factory=dict)       # camera -> [start, end] (wall clock)
    link_start: dict = field(default_factory=dict)
    link_end: dict = field(default_factory=dict)
    rss_mb_ground: list = field(default_factory=list)
    counters: dict = field(default_factory=dict)      # camera -> node -> shutdown counters
    exit_codes: dict = field(default_factory=dict)
    player_rc: dict = field(default_factory=dict)
    load_avg_1m: dict = field(default_factory=dict)
    error: str = ""


def _hosts(run: dict, star: Star, run_dir: str, domain: int) -> tuple[list, list]:
    base = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET")
    peers = ";".join(link.ips[0] for link in star.links.values())
    drones, grounds = [], []
    for cam in (c["ns"] for c in run["cameras"]):
        link = star.links[cam]
        drones.append(NsHost(link.drone, f"{cam}.drone", os.path.join(run_dir, cam),
                             dict(base, ROS_STATIC_PEERS=star.ground_ip), HALVES["drone"], cam))
        grounds.append(NsHost(star.ground, f"{cam}.ground", os.path.join(run_dir, "ground", cam),
                              dict(base, ROS_STATIC_PEERS=peers), HALVES["ground"], cam))
    return drones, grounds


def _wait_ready(hosts: list[NsHost], timeout: float = READY_TIMEOUT_S) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for h in hosts:
            for name, p in h.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{h.role} {name} exited with code {p.returncode}")
        if not [m for h in hosts for m in h.missing()]:
            return
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f} s: "
                       f"{[m for h in hosts for m in h.missing()]}")


def _play(drones: list[NsHost], grounds: list[NsHost], star: Star, state: CamState) -> None:
    """Every camera's player at once; until they all ended: play start / end times, the link
    counters, the ground's memory."""
    for d in drones:            # the camera's two nodes, its recorder, its ground captioner
        d.play(d.bag, len(HALVES["drone"]) + 1 + len(HALVES["ground"]))
    state.load_avg_1m["start"] = round(os.getloadavg()[0], 2)
    next_sample = 0.0
    while any(d.procs["player"].poll() is None for d in drones):
        for d, g in zip(drones, grounds):
            if d.cam not in state.play_ns and release_player(
                    d, [(d, d.nodes), (g, g.nodes)], f"/{d.cam}/event_camera/events"):
                state.play_ns[d.cam] = [time.time_ns(), None]
                state.link_start[d.cam] = link_counters(star.links[d.cam])
            if d.cam in state.play_ns and state.play_ns[d.cam][1] is None \
                    and d.procs["player"].poll() is not None:
                state.play_ns[d.cam][1] = time.time_ns()
                state.link_end[d.cam] = link_counters(star.links[d.cam])
        if state.play_ns and time.monotonic() >= next_sample:
            state.rss_mb_ground.append(round(sum(
                graph_memory(g.procs["launch"].pid).rss_mb for g in grounds
                if g.procs["launch"].poll() is None), 1))
            next_sample = time.monotonic() + SAMPLE_S
        time.sleep(0.05)
    for d in drones:
        if d.cam in state.play_ns and state.play_ns[d.cam][1] is None:
            state.play_ns[d.cam][1] = time.time_ns()
            state.link_end[d.cam] = link_counters(star.links[d.cam])
        state.player_rc[d.cam] = d.procs["player"].returncode
    state.load_avg_1m["end"] = round(os.getloadavg()[0], 2)


def _run_graph(run: dict, star: Star, run_dir: str, domain: int, state: CamState) -> None:
    drones, grounds = _hosts(run, star, run_dir, domain)
    probe = NsHost(star.ground, "ground.probe", os.path.join(run_dir, "ground"),
                   grounds[0].env if grounds else {}, (), "")
    try:
        for g in grounds:          # the ground first (docs/deploy.md)
            g.launch()
            g.record(CAPTION_STREAMS)
        probe.start("recorder", [tool("edge_vlm_record"),
                                 os.path.join(probe.dir, "probe.jsonl"), "--topics", "caption"])
        for d, cam in zip(drones, run["cameras"]):
            d.bag = cam["bag"]
            d.launch()
            d.record(DRONE_STREAMS)
        _wait_ready(drones + grounds)
        _play(drones, grounds, star, state)
        for g in grounds:
            drain(g, float(run.get("drain_s", 3.0)))
    finally:
        for h in drones + grounds + [probe]:
            state.exit_codes.update(h.stop_all())
    for d, g in zip(drones, grounds):
        state.counters[d.cam] = {
            n: shutdown_counters(os.path.join(h.dir, f"{n}.log"), n)
            for h in (d, g) for n in h.nodes}


def run_cameras(run: dict, out_dir: str, domain: int, cleanup: dict,
                tag: int | None = None) -> CamState:
    """One several-camera run (see the module doc); its namespaces are removed on return."""
    cams = [c["ns"] for c in run["cameras"]]
    state = CamState(run["name"], cams)
    run_dir = os.path.join(out_dir, run["name"])
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    star = Star("", "", "")
    try:
        star = create_star(cams, os.getpid() if tag is None else tag, cleanup)
        _run_graph(run, star, run_dir, domain, state)
    except (RuntimeError, OSError, ValueError) as exc:
        state.error = str(exc)
    except (KeyboardInterrupt, StopRequested) as exc:
        state.error = f"stopped ({type(exc).__name__})"
        raise
    finally:
        made = list(star.created)
        destroy_star(star, cleanup)
        with open(os.path.join(run_dir, "run.json"), "w") as fh:
            json.dump({**asdict(state), "dir": run_dir, "run": run, "namespaces": made}, fh,
                      indent=1)
    return state

