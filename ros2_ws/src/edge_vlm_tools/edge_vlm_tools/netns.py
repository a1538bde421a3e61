"""The network namespaces of ``edge_vlm_multihost`` and the processes started in them: hosts
simulated on one Linux machine (root only), joined by veth pairs, discovery through
``ROS_STATIC_PEERS``; shared by the two-host runs (:mod:`edge_vlm_tools.multihost`) and the
several-camera runs (:mod:`edge_vlm_tools.multicam`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from edge_vlm_ros.frame_node import MATCHED_LINE
from edge_vlm_ros.lifeline import exec_prefix
from edge_vlm_tools.runner import find_executable, launch_file, stop_graph

#: the nodes of each half (their log files under the half's log folder)
HALVES = {"drone": ("sttf_perception", "anc_router"), "ground": ("vlm_captioner",)}
#: a ``local`` run: the whole graph on the drone (the baseline without the link)
LOCAL = {"drone": HALVES["drone"] + HALVES["ground"], "ground": ()}
#: what the recorders record: the EventPackets before the link (and the drone's outputs);
#: the captions where the captioner runs
DRONE_STREAMS = ("events", "token_mask", "route")
CAPTION_STREAMS = ("caption", "compute_cost", "ground_truth")
#: EventPacket subscriptions the player waits for: drone nodes, drone recorder, captioner
SUBSCRIBERS = len(HALVES["drone"]) + 1 + len(HALVES["ground"])
#: token bucket of a capped link: bucket size and the longest wait of a packet in its queue
TBF_BURST = "32kbit"
TBF_LATENCY = "100ms"
SAMPLE_S = 0.5
READY_TIMEOUT_S = 120.0
#: the link counter (:mod:`edge_vlm_tools.linkstat`), run as a script (standard library only)
LINKSTAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "linkstat.py")
LINKSTAT_READY_S = 10.0


@dataclass
class Link:
    """Two namespaces joined by a veth pair (the drone's end ``veth[0]``)."""

    drone: str
    ground: str
    veth: tuple[str, str]
    ips: tuple[str, str]
    created: list[str] = field(default_factory=list)     # namespaces made (to remove)


def tool(name: str) -> str:
    """An executable of this package (absolute: PATH need not hold the workspace's lib/)."""
    return find_executable("edge_vlm_tools", name)


def ros2() -> str:
    """The ``ros2`` command (PATH, else next to this interpreter, as in the venv)."""
    return shutil.which("ros2") or os.path.join(os.path.dirname(sys.executable), "ros2")


class StopRequested(Exception):
    """SIGTERM / SIGHUP while running: clean up and exit."""


def ip(*args: str, check: bool = True) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def tc(ns: str, *args: str) -> str:
    res = subprocess.run(["tc", "-n", ns, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"tc -n {ns} {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def namespaces_available() -> str:
    """Why network namespaces cannot be used here ('' when they can)."""
    if os.geteuid() != 0:
        return "not root (network namespaces need root)"
    for exe in ("ip", "tc"):
        if shutil.which(exe) is None:
            return f"`{exe}` (iproute2) not found"
    return ""


def create_link(tag: int | None = None) -> Link:
    """The namespaces and the veth pair; a /30 in 10.213.0.0/16 from ``tag`` (default the
    pid). Partial creations are removed on error."""
    tag = os.getpid() if tag is None else tag
    sub = f"10.213.{tag % 250}"
    link = Link(f"evlm-drone-{tag}", f"evlm-ground-{tag}", (f"evd{tag}", f"evg{tag}"),
                (f"{sub}.1", f"{sub}.2"))
    try:
        for ns in (link.drone, link.ground):
            ip("netns", "add", ns)
            link.created.append(ns)
        ip("link", "add", link.veth[0], "type", "veth", "peer", "name", link.veth[1])
        for ns, dev, addr in zip((link.drone, link.ground), link.veth, link.ips):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            ip("-n", ns, "link", "set", "lo", "up")
            # no multicast on the link: discovery only through the static peers
            ip("-n", ns, "link", "set", dev, "multicast", "off", "up")
    except BaseException:
        destroy_link(link)
        raise
    return link


def destroy_link(link: Link) -> list[str]:
    """Remove the namespaces this tool created (their veth ends and qdiscs go with them);
    returns what is left of them (should be [])."""
    for ns in link.created:
        ip("netns", "del", ns, check=False)
    ip("link", "del", link.veth[0], check=False)     # only when never moved into a namespace
    left = set(ip("netns", "list", check=False).split())
    return [ns for ns in link.created if ns in left]


def set_cap(link: Link, rate: str) -> None:
    """A tbf rate cap on both ends of the link ('' removes it)."""
    for ns, dev in zip((link.drone, link.ground), link.veth):
        subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"],
                       capture_output=True)
        if rate:
            tc(ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                "burst", TBF_BURST, "latency", TBF_LATENCY)


def link_counters(link: Link) -> dict:
    """Bytes and packets each end sent and received, and its qdisc's drops."""
    out = {}
    for role, ns, dev in zip(("drone", "ground"), (link.drone, link.ground), link.veth):
        st = json.loads(ip("-n", ns, "-s", "-j", "link", "show", "dev", dev))[0]
        s64 = st.get("stats64") or st.get("stats") or {}
        q = json.loads(tc(ns, "-s", "-j", "qdisc", "show", "dev", dev) or "[]")
        out[role] = {"tx_bytes": s64["tx"]["bytes"], "rx_bytes": s64["rx"]["bytes"],
                     "tx_packets": s64["tx"]["packets"],
                     "qdisc_drops": sum(int(x.get("drops", 0)) for x in q)}
    return out


def set_link_up(link: Link, up: bool) -> None:
    ip("-n", link.drone, "link", "set", link.veth[0], "up" if up else "down")


class Host:
    """The processes of one namespace: started under the lifeline, stopped with SIGINT."""

    def __init__(self, link: Link, role: str, run_dir: str, domain: int, local: bool = False):
        self.ns = link.drone if role == "drone" else link.ground
        self.role = role
        self.nodes = (LOCAL if local else HALVES)[role]
        self.local = local
        self.dir = os.path.join(run_dir, role)
        os.makedirs(self.dir, exist_ok=True)
        peer = link.ips[1] if role == "drone" else link.ips[0]
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_STATIC_PEERS=peer,
                        ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET")
        self.procs: dict[str, subprocess.Popen] = {}
        self.launch_args: list[str] = []      # more launch arguments (respawn:=true)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(os.path.join(self.dir, f"{name}.out"), "ab") as fh:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns, *exec_prefix(), *cmd],
                                 env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        p.node_name = f"{self.role}.{name}"
        self.procs[name] = p
        return p

    def launch(self) -> subprocess.Popen:
        """This host's half of the graph through the bringup's launch file."""
        nodes = "all" if self.local else self.role
        return self.start("launch", [ros2(), "launch", launch_file(), f"nodes:={nodes}",
                                     f"log_dir:={self.dir}", *self.launch_args])

    def record(self, streams: tuple[str, ...]) -> subprocess.Popen:
        return self.start("recorder", [tool("edge_vlm_record"),
                                       os.path.join(self.dir, "records.jsonl"),
                                       "--topics", *streams])

    def text(self, name: str) -> str:
        try:
            with open(os.path.join(self.dir, name), errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def stop(self, name: str, timeout: float = 20.0) -> dict[str, int]:
        p = self.procs.get(name)
        return stop_graph([p], timeout) if p is not None else {}

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for name in list(self.procs):
            codes.update(self.stop(name))
        return codes


#: the player's file it holds for (``edge_vlm_play --hold-file``), in the drone's folder
HOLD_FILE = "play.go"


def unmatched(host: Host, nodes: tuple[str, ...], topic: str) -> list[str]:
    """The ``nodes`` of ``host`` whose log does not (yet) say that their subscription to
    ``topic`` matched a publisher: the subscriber's side of the match, which the player's own
    subscription count does not see."""
    return [f"{host.role} {n}" for n in nodes
            if not any(int(k) > 0 and t == topic
                       for k, t in MATCHED_LINE.findall(host.text(f"{n}.log")))]


def release_player(drone: Host, waits: list[tuple[Host, tuple[str, ...]]], topic: str) -> bool:
    """The player of ``drone`` (started with ``--hold-file`` in its folder) may play once each
    (host, nodes) of ``waits`` logged a match on ``topic``: then create the file. True when the
    player plays (released now or before, or it stopped holding on its own timeout)."""
    hold = os.path.join(drone.dir, HOLD_FILE)
    if os.path.exists(hold) or "not there after" in drone.text("player.out"):
        return True
    if [m for h, nodes in waits for m in unmatched(h, nodes, topic)]:
        return False
    with open(hold, "w"):
        pass
    return True


def drain(host: Host, drain_s: float, max_s: float = 60.0) -> None:
    """Until no caption arrived at ``host``'s recorder for ``drain_s`` seconds."""
    path = os.path.join(host.dir, "records.jsonl")
    last, changed, end = -1, time.monotonic(), time.monotonic() + max_s
    while time.monotonic() < end:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size != last:
            last, changed = size, time.monotonic()
        elif time.monotonic() - changed >= drain_s:
            return
        time.sleep(0.2)


def start_linkstat(host: Host, dev: str, out: str) -> subprocess.Popen | None:
    """The link counter on ``dev`` in ``host``'s namespace, writing ``out`` when stopped
    (SIGINT); started before the nodes, it sees their SEDP announcements. None when it cannot
    capture (its reason in ``linkstat.out``): optional, the run goes on without it."""
    p = host.start("linkstat", [sys.executable, LINKSTAT, "-i", dev, "-o", out])
    host.procs.pop("linkstat")           # never fails the run; stopped by its caller
    end = time.monotonic() + LINKSTAT_READY_S
    while p.poll() is None and time.monotonic() < end:
        if "capturing on" in host.text("linkstat.out"):
            return p
        time.sleep(0.05)
    stop_graph([p], 2.0)
    return None


def mark_linkstat(counter: subprocess.Popen | None, close: bool) -> None:
    """Open (SIGUSR1) or ``close`` (SIGUSR2) the counter's window: sent right before the veth
    counters are read, so that both span the same time."""
    if counter is not None and counter.poll() is None:
        counter.send_signal(signal.SIGUSR2 if close else signal.SIGUSR1)
