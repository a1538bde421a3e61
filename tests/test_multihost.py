"""The graph split across two hosts (issue 20), short profile: a drone and a ground network
namespace joined by a veth pair (multicast off: discovery through ROS_STATIC_PEERS only), the
two halves started by the bringup's launch file (``nodes:=drone`` / ``nodes:=ground``), a
simulated DVS128 bag played at 1x on the drone (``edge_vlm_multihost``, figures by
``edge_vlm.bench.multihost``).

Asserts: captions arrive on the ground host, made from the drone's EventPackets that crossed
the link (the link's byte counters carry at least their payload); nothing crosses between the
namespaces and the machine's own network (a recorder on the same ROS_DOMAIN_ID outside the
namespaces receives no caption and no EventPacket); every namespace the run created is gone
afterwards. Three cameras (issue 20, item 5: three network namespaces, ROS namespaces /cam1,
/cam2, /cam3, one captioner per camera on one ground namespace): every camera's captions
arrive on its own ROS namespace, none on another's (each camera's sensor clock starts 100 s
after the previous one's, so every stamp names its camera; the check is shown to catch a
foreign stamp). Needs root and ``ip netns`` (CI runs as root): skipped, with the reason, otherwise.
The launch file's ``nodes`` selection is checked without ROS processes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import rosenv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "ros2_ws", "src", "edge_vlm_bringup", "launch", "edge_vlm.launch.py")
PKGS = ("edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros", "edge_vlm_tools", "edge_vlm_bringup",
        "sttf_perception", "anc_router", "vlm_captioner", "composition_interfaces")
#: this test's domain (the multi-host task's range, 181..199)
DOMAIN_ID = "182"


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "not root: network namespaces (ip netns) need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns unavailable: {probe.stderr.strip()}"
    return ""


@pytest.fixture(scope="module")
def multihost_run(tmp_path_factory):
    """One short run: the tool's folder, its exit code, the figures, the outside probe."""
    why = _skip_reason()
    if why:
        pytest.skip(why)
    rosenv.require_workspace(*PKGS)
    rosenv.activate()
    from edge_vlm.bench.multihost import make_plan, multihost_bag, run_figures
    from edge_vlm_tools.runner import find_executable

    work = tmp_path_factory.mktemp("multihost")
    env = rosenv.sourced_env(ROS_DOMAIN_ID=DOMAIN_ID)
    exe = find_executable("edge_vlm_tools", "edge_vlm_multihost", env)
    bags = {e: multihost_bag(work, e, quick=True) for e in ("libcaer_cmp", "mono")}
    plan = make_plan(bags, quick=True)
    assert [r["name"] for r in plan] == ["link_libcaer_cmp", "link_active", "cameras"]
    with open(work / "plan.json", "w") as fh:
        json.dump({"runs": plan}, fh)
    # outside the namespaces, same domain, discovery on every interface of this machine
    probe_out = work / "probe.jsonl"
    probe = subprocess.Popen(
        [find_executable("edge_vlm_tools", "edge_vlm_record", env), str(probe_out),
         "--topics", "caption", "events"],
        env={**env, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        tool = subprocess.run([exe, str(work / "plan.json"), "--out-dir", str(work / "out"),
                               "--domain-id", DOMAIN_ID], env=env, capture_output=True,
                              text=True, timeout=420)
    finally:
        probe.send_signal(2)
        probe.wait(15)
    if tool.returncode == 3:
        pytest.skip(f"network namespaces unavailable: {tool.stderr.strip()}")
    run_dir = work / "out" / plan[0]["name"]
    return {"tool": tool, "dir": work / "out", "figures": run_figures(str(run_dir)),
            "cameras": run_figures(str(work / "out" / "cameras")),
            "active": run_figures(str(work / "out" / "link_active")),
            "probe": probe_out.read_text().splitlines() if probe_out.exists() else [],
            "plan": plan}


def test_captions_arrive_on_the_ground_host(multihost_run):
    tool, fig = multihost_run["tool"], multihost_run["figures"]
    assert tool.returncode == 0, tool.stdout[-3000:] + tool.stderr[-3000:]
    assert fig["error"] is None and fig["player_rc"] == 0
    frames = fig["frames_replayed"]
    assert frames and frames > 40, fig           # the 1.9 s bag closes ~57 frames on the drone
    # loaded CI machines drop a few frames by backpressure; most must be captioned
    assert fig["captions_ground"] >= 0.5 * frames, fig
    assert fig["caption_latency_ms_p50"] is not None
    counters = json.loads((multihost_run["dir"] / multihost_run["plan"][0]["name"]
                           / "run.json").read_text())["counters"]
    # the captioner (ground) decoded every EventPacket the drone's perception node saw
    assert counters["vlm_captioner"]["packets"] == counters["sttf_perception"]["packets"] > 0
    assert counters["vlm_captioner"]["rejected"] == 0
    # ... because the player held until the ground's side of the match was logged
    for name in ("link_libcaer_cmp", "link_active"):
        out = (multihost_run["dir"] / name / "drone" / "player.out").read_text()
        assert "hold released" in out and "playing anyway" not in out, out


def test_the_events_crossed_the_link(multihost_run):
    fig = multihost_run["figures"]
    # drone -> ground bytes on the veth while the bag played hold at least the events' payload
    assert fig["link_bytes_per_s_drone_to_ground"] >= fig["payload_bytes_per_s"] > 0, fig
    assert fig["bytes_per_mev"] >= 1e6, fig       # >= 1 byte per event (libcaer_cmp ~6 B)


def test_the_link_counter_accounts_for_every_byte_by_topic(multihost_run):
    """edge_vlm_linkstat on the drone's veth end (AF_PACKET, started before the nodes): the
    EventPackets carry most of the serialized payload, and the per-row bytes add up to what
    the veth counted while the bag played."""
    by = multihost_run["figures"]["link_by_topic"]
    assert by is not None, "the link counter did not run (root and AF_PACKET are here)"
    rows = by["rows"]
    payload = sum(r["payload"] for r in rows.values())
    assert rows["rt/event_camera/events"]["payload"] > 0.5 * payload > 0, rows
    assert by["socket_drops"] == 0
    # the rows split the captured bytes (the counter's invariant, tested in test_linkstat.py);
    # captured == the veth's own counter read (sysfs) at the two marks: exact but for a frame
    # tapped and not yet counted at a mark (microseconds): 1 %
    assert abs(by["bytes"] - by["device_bytes"]) <= 0.01 * by["device_bytes"], by
    state = json.loads((multihost_run["dir"] / multihost_run["plan"][0]["name"]
                        / "run.json").read_text())
    veth = state["link_end"]["drone"]["tx_bytes"] - state["link_start"]["drone"]["tx_bytes"]
    # run.json's `ip -s link` reads come a few ms after the marks (one `ip` start-up; up to
    # ~100 ms on a loaded 2-core machine); at ~100 kB/s over the >= 2 s window that is at
    # most ~5 % of the bytes
    assert abs(by["bytes"] - veth) <= 0.05 * veth, (by["bytes"], veth)


def test_no_cross_talk_with_the_machine(multihost_run):
    probe = [json.loads(line) for line in multihost_run["probe"] if line.strip()]
    assert multihost_run["figures"]["captions_ground"] > 0
    assert not [r for r in probe if r.get("stream") in ("caption", "events")], probe[:3]


def test_namespaces_removed(multihost_run):
    cleanup = json.loads((multihost_run["dir"] / "cleanup.json").read_text())
    # the two hosts, then the three cameras' namespaces and the ground's (the cameras run)
    assert len(cleanup["created"]) == 6 and cleanup["left"] == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in cleanup["created"] if ns in listed.split()]
    pid = cleanup["created"][0].rsplit("-", 1)[1]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"evd{pid}" not in links and f"evg{pid}" not in links
    assert not [k for k in (1, 2, 3) if f"evc{k}{pid}" in links or f"evh{k}{pid}" in links]


# ------------------------------------------------- three cameras into one ground host
def _records(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_every_camera_captions_on_its_own_namespace(multihost_run):
    fig = multihost_run["cameras"]
    assert fig["error"] is None, fig
    assert sorted(fig["cameras"]) == ["cam1", "cam2", "cam3"]
    for ns, cam in fig["cameras"].items():
        # a string, not a tuple: pytest would cut the figures short
        why = f"{ns}: {json.dumps(cam)}"
        assert cam["player_rc"] == 0, why
        assert cam["frames"] and cam["frames"] > 40, why      # the 1.9 s bag: ~57 frames
        # three captioners share 2 loaded cores: backpressure drops frames; most are captioned
        assert cam["captions"] >= 0.3 * cam["frames"], why
        assert cam["caption_latency_ms_p95"] is not None, why
        # the player held until the camera's nodes and its captioner logged that they matched
        # it (a best-effort packet sent before the ground's side matched is lost) ...
        out = (multihost_run["dir"] / "cameras" / ns / "player.out").read_text()
        assert "hold released" in out and "playing anyway" not in out, out
        # ... so each captioner decoded exactly its own camera's packets (no other camera's)
        assert cam["packets_ground"] == cam["packets_drone"] > 0, why
        assert cam["cross_talk"] == 0, why
    assert fig["cross_talk"] == 0 and fig["captions_unnamespaced"] == 0, fig
    assert all(code == 0 for code in fig["exit_codes"].values()), fig["exit_codes"]


def test_each_camera_namespace_carries_its_own_recording(multihost_run):
    """The stamps of every caption on /camK are camera K's clock, and the ground truth on /camK
    is camera K's gestures (the cameras' label sets differ)."""
    run = next(r for r in multihost_run["plan"] if r["name"] == "cameras")
    labels = {}
    for cam in run["cameras"]:
        recs = _records(multihost_run["dir"] / "cameras" / "ground" / cam["ns"]
                        / "records.jsonl")
        stamps = [r["stamp_ns"] for r in recs if r["stream"] == "caption"]
        lo, hi = cam["window_ns"]
        assert stamps and all(lo <= t <= hi for t in stamps), cam["ns"]
        labels[cam["ns"]] = {r["json"]["label"] for r in recs if r["stream"] == "ground_truth"}
    assert labels == {"cam1": {2, 8}, "cam2": {3, 9}, "cam3": {4, 10}}, labels


class _Half:
    """A host's folder as ``release_player`` reads it (role, dir, text)."""

    def __init__(self, folder, role: str):
        self.dir, self.role = str(folder), role
        os.makedirs(self.dir, exist_ok=True)

    def text(self, name: str) -> str:
        path = os.path.join(self.dir, name)
        return open(path).read() if os.path.exists(path) else ""

    def log(self, name: str, line: str) -> None:
        with open(os.path.join(self.dir, name), "a") as fh:
            fh.write(line + "\n")


def test_player_released_once_every_node_matched_it(tmp_path):
    """netns.release_player: the hold file appears only once each waited-for node logged a
    match (count > 0) on the played topic; another topic's line, or a '0' line, is not one."""
    rosenv.activate()
    from edge_vlm_tools.netns import HOLD_FILE, release_player

    drone, ground = _Half(tmp_path / "drone", "drone"), _Half(tmp_path / "ground", "ground")
    waits = [(drone, ("sttf_perception", "anc_router")), (ground, ("vlm_captioner",))]
    topic, hold = "/cam1/event_camera/events", tmp_path / "drone" / HOLD_FILE
    line = "[INFO] [1.5] [cam1.{}]: events: {} publisher(s) matched on {}"
    assert not release_player(drone, waits, topic)
    for n in ("sttf_perception", "anc_router"):
        drone.log(f"{n}.log", line.format(n, 1, topic))
    ground.log("vlm_captioner.log", line.format("vlm_captioner", 1, "/cam2/event_camera/events"))
    ground.log("vlm_captioner.log", line.format("vlm_captioner", 0, topic))
    assert not release_player(drone, waits, topic) and not hold.exists()
    ground.log("vlm_captioner.log", line.format("vlm_captioner", 1, topic))
    assert release_player(drone, waits, topic) and hold.exists()
    assert release_player(drone, waits, topic)            # released: stays so
    # a player that stopped holding on its own timeout plays: nothing to wait for
    late = _Half(tmp_path / "late", "drone")
    late.log("player.out", f"edge_vlm_play: WARNING: {late.dir}/{HOLD_FILE} not there after "
                           "90.0 s; playing anyway")
    assert release_player(late, [(ground, ("anc_router",))], topic)


def test_star_removed_when_a_step_fails():
    """A several-camera topology that fails half way (the third camera's namespace name is not
    valid) leaves no namespace, bridge or veth behind."""
    why = _skip_reason()
    if why:
        pytest.skip(why)
    rosenv.require_workspace(*PKGS)
    rosenv.activate()
    from edge_vlm_tools.multicam import create_star

    tag, cleanup = 4242000 + os.getpid() % 1000, {}
    with pytest.raises(RuntimeError):
        create_star(["cam1", "cam2", "bad/name"], tag, cleanup)
    assert len(cleanup["created"]) == 3 and cleanup["left"] == []     # hub, cam1, cam2
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in cleanup["created"] if ns in listed.split()]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not [k for k in (1, 2, 3) if f"evc{k}{tag}" in links or f"evh{k}{tag}" in links]


def test_cross_talk_check_catches_a_foreign_caption(multihost_run, tmp_path):
    """The cross-talk figure is not 0 by construction: one caption of cam2's clock written into
    cam1's records, and one on the un-namespaced topic, are both counted."""
    from edge_vlm.bench.multihost import camera_figures

    copy = tmp_path / "cameras"
    shutil.copytree(multihost_run["dir"] / "cameras", copy)
    cam1 = copy / "ground" / "cam1" / "records.jsonl"
    foreign = next(r for r in _records(copy / "ground" / "cam2" / "records.jsonl")
                   if r["stream"] == "caption")
    with open(cam1, "a") as fh:
        fh.write(json.dumps(foreign) + "\n")
    with open(copy / "ground" / "probe.jsonl", "a") as fh:
        fh.write(json.dumps(foreign) + "\n")
    fig = camera_figures(str(copy))
    assert fig["cameras"]["cam1"]["cross_talk"] == 1 and fig["captions_unnamespaced"] == 1
    assert fig["cross_talk"] == 2


# ------------------------------------------------- link mode 'active' (sends less)
def test_link_active_sends_fewer_bytes_and_still_captions(multihost_run):
    """Same bag, same link: per frame one EventPacket of the active patches' events crosses
    instead of the raw 10 ms packets; the ground still captions the drone's frames."""
    raw, act = multihost_run["figures"], multihost_run["active"]
    assert act["error"] is None and act["player_rc"] == 0, act
    frames = act["frames_replayed"]
    assert frames and frames > 40 and act["captions_ground"] >= 0.5 * frames, act
    assert act["caption_latency_ms_p50"] is not None
    # the events' topic on the drone's veth end (the link counter), else the whole veth
    events = {k: _events_topic_bytes(multihost_run["dir"] / name)
              for k, name in (("raw", "link_libcaer_cmp"), ("active", "link_active"))}
    if None in events.values():
        events = {k: f["link_bytes_per_s_drone_to_ground"] for k, f in (("raw", raw),
                                                                          ("active", act))}
    assert 0 < events["active"] < events["raw"], (events, raw, act)
    assert 0 < act["relay_events_kept_share"] < 1, act
    c = json.loads((multihost_run["dir"] / "link_active" / "run.json").read_text())["counters"]
    per, cap = c["sttf_perception"], c["vlm_captioner"]
    # one relay packet per frame, each decoded by the ground's captioner: exactly the kept events
    assert cap["packets"] == per["link_frames"] == per["frames"], (per, cap)
    assert cap["events"] == per["link_events_kept"] < per["events"], (per, cap)
    assert cap["rejected"] == 0 and per["link_decode_errors"] == 0


def _events_topic_bytes(run_dir) -> float | None:
    """Bytes/s of the EventPacket topic (raw or relayed) that crossed the drone's veth end
    while the bag played (``linkstat.json``; None without it)."""
    try:
        topics = json.loads((run_dir / "linkstat.json").read_text())["in_window"]["tx"]
    except (OSError, ValueError, KeyError):
        return None
    for name in ("rt/edge_vlm/link_events", "rt/event_camera/events"):
        if name in topics.get("by_topic", {}):
            return topics["by_topic"][name]["bytes_per_s"]
    return None


def _params(action) -> dict:
    from launch import LaunchContext
    from launch_ros.utilities import evaluate_parameters

    out = {}
    for p in evaluate_parameters(LaunchContext(), action._Node__parameters):
        out.update(p if isinstance(p, dict) else {})
    return out


def test_launch_link_active_relays_on_the_drone_and_follows_it_on_the_ground():
    drone = _entities({"nodes": "drone", "source": "bag", "bag": "/tmp/x", "link": "active"})
    per = [a for a in drone if a.node_executable == "sttf_perception"][0]
    assert _params(per)["link_relay"] is True
    player = [a for a in drone if a.node_executable == "edge_vlm_play"][0]
    args = [str(a) for a in player._Node__arguments]
    # the drone's two nodes: the ground's captioner takes the relay's topic, not the raw events
    assert args[args.index("--wait-for") + 1] == "/event_camera/events=2", args
    cap = _entities({"nodes": "ground", "link": "active", "namespace": "cam1"})[0]
    assert _params(cap)["link_frames"] is True
    remaps = {"".join(x.text for x in k): "".join(x.text for x in v)
              for k, v in cap._Node__remappings}
    assert remaps["event_camera/events"] == "edge_vlm/link_events", remaps
    raw = _entities({"nodes": "all"})
    assert not any(_params(a).get("link_relay") or _params(a).get("link_frames") for a in raw)


def test_launch_bag_link_active_relay_waits_for_a_captioner():
    """source:=bag: sttf_perception subscribes to the events once its relay matched a captioner
    (this launch's, or the ground's with nodes:=drone), for at most wait_timeout; the player
    waits for that subscription. Without a bag (a camera, or the player started by hand) the
    relay does not wait."""
    def relay_params(args: dict) -> dict:
        per = [a for a in _entities(args) if a.node_executable == "sttf_perception"][0]
        return _params(per)

    bag = {"source": "bag", "bag": "/tmp/x", "link": "active"}
    for nodes in ("all", "drone"):
        p = relay_params({**bag, "nodes": nodes, "wait_timeout": "7"})
        assert (p["link_wait_subscribers"], p["link_wait_timeout"]) == (1, 7.0), (nodes, p)
    for args in ({"nodes": "all", "link": "active"}, {**bag, "link": "raw"},
                 {"nodes": "drone", "source": "camera", "link": "active"}):
        assert "link_wait_subscribers" not in relay_params(args), args


@pytest.mark.parametrize("args", [{"link": "fast"},
                                  {"link": "active", "single_process": "true"}])
def test_launch_bad_link_argument_is_an_error(args):
    with pytest.raises(ValueError, match="link"):
        _entities(args)


# ----------------------------------------------------------- launch file: nodes:= selection
def _launch_module():
    rosenv.require_workspace(*PKGS)
    rosenv.activate()
    import importlib.util

    spec = importlib.util.spec_from_file_location("edge_vlm_launch_mh", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _entities(args: dict) -> list:
    from launch import LaunchContext

    mod = _launch_module()
    ctx = LaunchContext()
    for a in mod.generate_launch_description().entities:
        if hasattr(a, "default_value") and a.default_value is not None:
            ctx.launch_configurations[a.name] = "".join(s.perform(ctx) for s in a.default_value)
    ctx.launch_configurations.update(args)
    return mod._nodes(ctx)


def _names(actions) -> list[str]:
    return sorted(a.node_executable for a in actions)


@pytest.mark.parametrize("nodes, expected", [
    ("all", ["anc_router", "sttf_perception", "vlm_captioner"]),
    ("drone", ["anc_router", "sttf_perception"]),
    ("ground", ["vlm_captioner"]),
    ("vlm_captioner,anc_router", ["anc_router", "vlm_captioner"]),
])
def test_launch_nodes_selects_the_hosts_half(nodes, expected):
    assert _names(_entities({"nodes": nodes})) == expected


def test_launch_drone_player_waits_for_the_ground_captioner():
    actions = _entities({"nodes": "drone", "source": "bag", "bag": "/tmp/x"})
    player = [a for a in actions if a.node_executable == "edge_vlm_play"][0]
    args = [str(a) for a in player._Node__arguments]       # the player's command line
    # the two drone nodes and the ground's vlm_captioner
    assert args[args.index("--wait-for") + 1] == "/event_camera/events=3", args


def test_launch_camera_namespace_keeps_the_bag_in_it():
    """nodes:=drone for camera cam2 (docs/deploy.md): its nodes in /cam2, its inputs there,
    and the player moves the bag's events and ground truth under /cam2."""
    actions = _entities({"nodes": "drone", "source": "bag", "bag": "/tmp/x", "namespace": "cam2",
                         "events_topic": "/cam2/event_camera/events",
                         "image_topic": "/cam2/camera/image_raw"})
    nodes = [a for a in actions if a.node_executable != "edge_vlm_play"]
    assert sorted(a.node_executable for a in nodes) == ["anc_router", "sttf_perception"]
    assert {a._Node__node_namespace for a in nodes} == {"/cam2"}, nodes
    player = [a for a in actions if a.node_executable == "edge_vlm_play"][0]
    args = [str(a) for a in player._Node__arguments]
    remaps = [args[i + 1] for i, a in enumerate(args) if a == "--remap"]
    assert remaps == ["/event_camera/events:=/cam2/event_camera/events",
                      "/camera/image_raw:=/cam2/camera/image_raw",
                      "/edge_vlm/ground_truth:=/cam2/edge_vlm/ground_truth"], args
    assert args[args.index("--wait-for") + 1] == "/cam2/event_camera/events=3", args


def _respawn(action) -> bool:
    from launch.utilities.type_utils import perform_typed_substitution
    from launch import LaunchContext

    return perform_typed_substitution(LaunchContext(), action._ExecuteLocal__respawn, bool)


def test_launch_respawn_restarts_the_ground_captioner():
    """respawn:=true (the bench's crash run): launch starts a dead node process again."""
    assert [_respawn(a) for a in _entities({"nodes": "ground", "respawn": "true"})] == [True]
    assert not any(_respawn(a) for a in _entities({"nodes": "all"}))


@pytest.mark.parametrize("args", [{"nodes": "ground", "source": "bag", "bag": "/tmp/x"},
                                  {"nodes": "nosuchnode"},
                                  {"nodes": "drone", "single_process": "true"}])
def test_launch_bad_nodes_argument_is_an_error(args):
    with pytest.raises(ValueError):
        _entities(args)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
