"""Fault injection: every node in its own process, asserted from a test node with timeouts.

* malformed packets (1,000 of them, four kinds, interleaved with good ones) are
  rejected and counted exactly (read back from /diagnostics), the nodes keep publishing;
* EventPacket seq gaps are counted as missing messages (seq 0..9 then 20..29 -> 10);
* a 10x event-rate burst (200k ev/s in 2 ms packets for 5 s) into vlm_captioner:
  RSS stays bounded, dropped frames are counted (closed frames = captions + dropped),
  and captions keep coming after the burst;
* vlm_captioner SIGKILLed and restarted mid-stream: captions resume, the first
  frame after the restart is a dense refresh and the outputs resync with an
  uninterrupted reference run;
* bad parameters on every node / a wrong checkpoint: one clear line, non-zero exit.

The CI profile is fast (whole file well under 120 s on 2 cores);
``EDGE_VLM_FAULTS=long`` scales the numbers up. Figures are printed
(``pytest -s`` or ``-rP`` shows them; ``EDGE_VLM_FAULTS_REPORT=path.json`` also writes them).
Own ROS_DOMAIN_ID (231/232: test_nodes uses 1..115, test_integration 116..230).
"""
from __future__ import annotations

import array
import os
import signal
import subprocess
import time

import numpy as np
import pytest

import rosenv
from test_nodes import (GOOD_STAMP_OFFSET, Harness, NodeProc, blob_events, make_test_checkpoint,
                        stamp_of)

PKGS = ("edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros", "edge_vlm_tools", "sttf_perception",
        "anc_router", "vlm_captioner")
DOMAIN = 231 + os.getpid() % 2
P = 33_333_333
W = H = 128
LONG = os.environ.get("EDGE_VLM_FAULTS", "").lower() == "long"
N_MALFORMED = 5000 if LONG else 1000
BURST_S = 20.0 if LONG else 5.0
NOMINAL_RATE = 20_000                    # ev/s: the simulator's gesture rate
BURST_RATE = 10 * NOMINAL_RATE
PACKET_NS = 2_000_000                    # 2 ms packets
RSS_GROWTH_LIMIT_MB = 300.0
REFRESH = 10                             # captioner refresh_period in these tests
FIGURES: dict[str, object] = {}

pytestmark = pytest.mark.timeout(300 if LONG else 120)


def figure(name: str, value) -> None:
    FIGURES[name] = value
    print(f"[faults] {name}: {value}", flush=True)


# ----------------------------------------------------------------------------- helpers
class Diag:
    """Collects /diagnostics; statuses by name as (arrival time, level, message, values dict)."""

    def __init__(self, harness: Harness):
        from diagnostic_msgs.msg import DiagnosticArray

        from edge_vlm_ros.qos import RELIABLE_10

        self.h = harness
        self.by_name: dict[str, list] = {}
        harness.node.create_subscription(DiagnosticArray, "/diagnostics", self._on, RELIABLE_10)

    def _on(self, msg) -> None:
        now = time.monotonic()
        for st in msg.status:
            vals = {kv.key: kv.value for kv in st.values}
            level = int.from_bytes(st.level, "little") if isinstance(st.level, bytes) \
                else int(st.level)
            self.by_name.setdefault(st.name, []).append((now, level, st.message, vals,
                                                         st.hardware_id))

    def wait(self, node: str, pred=lambda v: True, timeout: float = 15.0,
             after: float | None = None) -> dict:
        """Values of the first status of ``edge_vlm/<node>`` arriving after ``after`` that
        satisfies ``pred``."""
        name = f"edge_vlm/{node}"
        after = time.monotonic() if after is None else after
        found = {}

        def ok():
            for t, _lvl, _m, v, _hw in self.by_name.get(name, []):
                if t > after and pred(v):
                    found.update(v)
                    return True
            return False

        self.h.spin_until(ok, timeout, f"diagnostics of {name}")
        return found

    def levels(self, node: str, since: float) -> list[tuple[int, str]]:
        return [(lvl, m) for t, lvl, m, _v, _hw in self.by_name.get(f"edge_vlm/{node}", [])
                if t >= since]


def num(v: dict, key: str) -> int:
    return int(float(v[key]))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def event_packet(events, time_base: int, seq: int, *, encoding="mono", width=W, height=H,
                 payload=None):
    from edge_vlm.io.codecs.mono import encode_mono
    from edge_vlm_ros.conversions import ns_to_time
    from event_camera_msgs.msg import EventPacket

    m = EventPacket()
    m.header.stamp = ns_to_time(time_base + GOOD_STAMP_OFFSET)
    m.header.frame_id = "dvs_fault"
    m.width, m.height = width, height
    m.seq = seq
    m.time_base = time_base
    m.encoding = encoding
    m.is_bigendian = False
    m.events = array.array("B", payload if payload is not None else encode_mono(events, time_base))
    return m


def subscriber_gids(harness: Harness, topic: str) -> set:
    return {bytes(i.endpoint_gid) for i in harness.node.get_subscriptions_info_by_topic(topic)}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env():
    return rosenv.node_test_env(DOMAIN, *PKGS)


@pytest.fixture(scope="module")
def harness(env):
    import rclpy

    rclpy.init(domain_id=DOMAIN)
    h = Harness()
    h.diag = Diag(h)
    yield h
    h.node.destroy_node()
    rclpy.try_shutdown()
    if FIGURES:
        print("[faults] figures: " + ", ".join(f"{k}={v}" for k, v in FIGURES.items()), flush=True)
        report = os.environ.get("EDGE_VLM_FAULTS_REPORT")
        if report:
            import json
            with open(report, "w") as fh:
                json.dump(FIGURES, fh, indent=1, default=str)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_test_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "rigged.pt"))


CAP_TOPIC = "/f/cap/events"
CAP_REMAPS = {"event_camera/events": CAP_TOPIC, "edge_vlm/token_mask": "/f/cap/mask",
              "edge_vlm/route": "/f/cap/route", "camera/image_raw": "/f/cap/image"}


def cap_params(checkpoint):
    return {"checkpoint": checkpoint, "mask_source": "local", "refresh_period": REFRESH,
            "max_pending_frames": 8, "use_rgb": "never"}


@pytest.fixture(scope="module")
def nodes(env, harness, checkpoint, tmp_path_factory):
    """sttf_perception + anc_router on one input topic; vlm_captioner (local masks) on its own."""
    logs = tmp_path_factory.mktemp("fault_logs")
    procs = {
        "sttf_perception": NodeProc("sttf_perception", logs,
                                    {"publish_mask_image": False, "checkpoint": checkpoint},
                                    {"event_camera/events": "/f/events"}, env),
        "anc_router": NodeProc("anc_router", logs, {"checkpoint": checkpoint},
                               {"event_camera/events": "/f/events"}, env),
        "vlm_captioner": NodeProc("vlm_captioner", logs, cap_params(checkpoint), CAP_REMAPS, env),
        "_logs": logs,
    }
    yield procs
    for name, p in procs.items():
        if not name.startswith("_") and p.poll() is None:
            p.stop()


# ----------------------------------------------------------------------------- diagnostics
def test_diagnostics_published_by_every_node(harness, nodes):
    common = {"packet_rate_hz", "event_rate_hz", "packets", "rejected", "seq_gaps", "dropped",
              "late_events", "frames", "latency_p50_ms", "latency_p95_ms", "processing_errors",
              "last_input_age_s"}
    for node in ("sttf_perception", "anc_router", "vlm_captioner"):
        proc = nodes[node]
        assert proc.poll() is None, proc.output()[-2000:]
        v = harness.diag.wait(node, timeout=60.0)
        assert common <= set(v), f"{node}: missing keys {common - set(v)}"
    v = harness.diag.wait("vlm_captioner")
    assert {"mask_fallbacks", "max_pending_frames", "pending", "captions"} <= set(v)
    assert v["max_pending_frames"] == "8"
    # before any input: no error, and the status names/hardware ids are set
    st = harness.diag.by_name["edge_vlm/anc_router"][-1]
    assert st[1] in (0, 1) and st[4]


# ----------------------------------------------------------------------------- malformed packets
def _malformed(kind: str, good: np.ndarray, tb: int, seq: int, rng):
    from edge_vlm.io.codecs.mono import encode_mono

    if kind == "encoding":
        encoding = str(rng.choice(["bogus_enc", "evt9", "", "MONO"]))
        return event_packet(good, tb, seq, encoding=encoding)
    if kind == "truncated":
        data = encode_mono(good, tb)
        return event_packet(None, tb, seq, payload=data[: len(data) - int(rng.integers(1, 8))])
    if kind == "coords":
        bad = good.copy()
        i = int(rng.integers(0, len(bad)))
        if rng.random() < 0.5:
            bad["x"][i] = W + int(rng.integers(0, 500))
        else:
            bad["y"][i] = H + int(rng.integers(0, 500))
        return event_packet(bad, tb, seq)
    assert kind == "size"
    w, h = [(0, 0), (0, H), (W, 0)][int(rng.integers(0, 3))]
    return event_packet(good, tb, seq, width=w, height=h)


def test_malformed_packets_are_counted_exactly_and_nodes_keep_publishing(harness, nodes):
    from edge_vlm_msgs.msg import RouteDecision, TokenMask
    from edge_vlm_ros.conversions import time_to_ns
    from edge_vlm_ros.qos import RELIABLE_10, SENSOR
    from event_camera_msgs.msg import EventPacket

    topic = "/f/events"
    masks = harness.collect(TokenMask, "/edge_vlm/token_mask", RELIABLE_10)
    routes = harness.collect(RouteDecision, "/edge_vlm/route", RELIABLE_10)
    pub = harness.publisher(EventPacket, topic, SENSOR)
    harness.wait_subscribers(topic, nodes["sttf_perception"])
    harness.spin_until(lambda: pub.get_subscription_count() >= 2, 30.0, "both nodes subscribed")
    harness.spin_for(0.3)
    base = {n: harness.diag.wait(n) for n in ("sttf_perception", "anc_router")}

    rng = np.random.default_rng(1234)
    kinds = ("encoding", "truncated", "coords", "size")
    per_frame = 10
    n_frames = N_MALFORMED // per_frame
    k0 = 5000
    sent_kinds = dict.fromkeys(kinds, 0)
    seq = harness.seq.get(topic, 0)
    t_start = time.monotonic()
    sent = 0
    for k in range(k0, k0 + n_frames):
        ev = blob_events(k, 600)
        half = k * P + P // 2
        goods = [(ev[ev["t"] < half], k * P), (ev[ev["t"] >= half], half)]
        slots = ["good", "good"] + [str(rng.choice(kinds)) for _ in range(per_frame)]
        # interleave: the good packets stay in time order, bad ones anywhere between/around them
        order = rng.permutation(len(slots))
        gi = 0
        for j in order:
            kind = slots[j]
            if kind == "good":
                part, tb = goods[gi]
                gi += 1
                m = event_packet(part, tb, seq)
            else:
                part, tb = goods[min(gi, 1)]
                m = _malformed(kind, part, tb, seq, rng)
                sent_kinds[kind] += 1
            pub.publish(m)
            seq += 1
            sent += 1
        harness.spin_for(0.012)        # pace: ~1,000 packets/s, far below what the readers drain
    pub.publish(event_packet(blob_events(0, 0), (k0 + n_frames) * P, seq))  # closes the last frame
    seq += 1
    sent += 1
    harness.seq[topic] = seq
    n_bad = sum(sent_kinds.values())
    assert n_bad == N_MALFORMED
    figure("malformed_sent", dict(sent_kinds, total=n_bad, good=sent - n_bad))

    want = {stamp_of(k) for k in range(k0, k0 + n_frames)}
    for node in ("sttf_perception", "anc_router"):
        b = base[node]

        def settled(v, b=b):   # every packet sent is either received or counted missing
            received = num(v, "packets") - num(b, "packets")
            return received + (num(v, "seq_gaps") - num(b, "seq_gaps")) >= sent

        v = harness.diag.wait(node, settled, timeout=30.0, after=t_start)
        received = num(v, "packets") - num(b, "packets")
        missing = num(v, "seq_gaps") - num(b, "seq_gaps")
        rejected = num(v, "rejected") - num(b, "rejected")
        figure(f"{node}_rejects", {"rejected": rejected, "received": received, "missing": missing,
                                   "sent": sent, "malformed": n_bad})
        assert nodes[node].poll() is None, f"{node} died"
        # exact when nothing was lost on the best-effort topic; lost packets are visible in seq
        # gaps
        assert n_bad - missing <= rejected <= n_bad
        if missing == 0:
            assert rejected == n_bad
        lvls = harness.diag.levels(node, t_start)
        assert any(lvl == 1 and "rejected" in m for lvl, m in lvls), lvls
        assert all(lvl < 2 for lvl, _ in lvls), "rejects are a WARN, not an ERROR"
    # the good packets were processed all along: outputs for (nearly) every frame
    def covered(msgs) -> int:
        return len(want & {time_to_ns(m.header.stamp) for m in msgs})

    harness.spin_until(lambda: covered(masks) >= 0.95 * len(want)
                       and covered(routes) >= 0.95 * len(want),
                       20.0, "token masks and route decisions for the frames")
    figure("frames_with_outputs", {"frames": len(want), "token_masks": covered(masks),
                                   "routes": covered(routes)})


def test_seq_gaps_count_missing_messages(harness, nodes):
    from edge_vlm_ros.qos import SENSOR
    from event_camera_msgs.msg import EventPacket

    topic = "/f/events"
    pub = harness.publisher(EventPacket, topic, SENSOR)
    harness.wait_subscribers(topic, nodes["sttf_perception"])
    base = harness.diag.wait("sttf_perception")
    s0 = harness.seq.get(topic, 0)
    k0 = 7000
    seqs = list(range(s0, s0 + 10)) + list(range(s0 + 20, s0 + 30))
    for i, s in enumerate(seqs):
        k = k0 + i
        pub.publish(event_packet(blob_events(k, 200), k * P, s))
        harness.spin_for(0.01)
    harness.seq[topic] = s0 + 30
    t = time.monotonic()
    v = harness.diag.wait("sttf_perception",
                          lambda v: num(v, "packets") - num(base, "packets") >= 20,
                          timeout=15.0, after=t)
    missing = num(v, "seq_gaps") - num(base, "seq_gaps")
    occurrences = num(v, "seq_gap_events") - num(base, "seq_gap_events")
    figure("seq_gaps", {"sent": "0..9,20..29", "seq_gaps (missing messages)": missing,
                        "seq_gap_events": occurrences})
    assert missing == 10 and occurrences == 1
    lvls = harness.diag.levels("sttf_perception", t - 1.0)
    assert any(lvl == 1 and "missing" in m for lvl, m in lvls), lvls


# ------------------------------------------------------------------------ burst / backpressure
def _uniform_events(rng, t0: int, t1: int, n: int):
    from edge_vlm.events import make_events

    t = np.sort(rng.integers(t0, t1, n))
    return make_events(t, rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, 2, n))


def test_burst_keeps_memory_bounded_counts_drops_and_recovers(harness, nodes):
    from edge_vlm_msgs.msg import Caption, ComputeCost
    from edge_vlm_ros.conversions import time_to_ns
    from edge_vlm_ros.qos import RELIABLE_50, SENSOR
    from event_camera_msgs.msg import EventPacket

    proc = nodes["vlm_captioner"]
    pid = proc.proc.pid
    caps = harness.collect(Caption, "/edge_vlm/caption", RELIABLE_50)
    costs = harness.collect(ComputeCost, "/edge_vlm/compute_cost", RELIABLE_50)
    pub = harness.publisher(EventPacket, CAP_TOPIC, SENSOR)
    harness.wait_subscribers(CAP_TOPIC, proc, timeout=60.0)
    base = harness.diag.wait("vlm_captioner")

    rng = np.random.default_rng(7)
    k0 = 10_000
    t0 = k0 * P
    phases = [("nominal", 1.0, NOMINAL_RATE), ("burst", BURST_S, BURST_RATE),
              ("after", 2.0, NOMINAL_RATE)]
    msgs, bounds = [], {}
    seq = harness.seq.get(CAP_TOPIC, 0)
    t = t0
    for name, dur, rate in phases:
        start = t
        n_per = int(rate * PACKET_NS / 1e9)
        for _ in range(int(dur * 1e9 / PACKET_NS)):
            msgs.append(event_packet(_uniform_events(rng, t, t + PACKET_NS, n_per), t, seq))
            seq += 1
            t += PACKET_NS
        bounds[name] = (start, t)
    msgs.append(event_packet(blob_events(0, 0), t + P, seq))
    seq += 1
    harness.seq[CAP_TOPIC] = seq

    rss0 = rss_mb(pid)
    peak = rss0
    wall0 = time.monotonic()
    next_rss = wall0
    for i, m in enumerate(msgs):          # real time: one 2 ms packet every 2 ms
        target = wall0 + i * PACKET_NS / 1e9
        while True:
            now = time.monotonic()
            if now >= next_rss:
                peak = max(peak, rss_mb(pid))
                next_rss = now + 0.1
            if now >= target:
                break
            harness.rclpy.spin_once(harness.node, timeout_sec=min(0.002, target - now))
        pub.publish(m)
    send_s = time.monotonic() - wall0

    after_lo, after_hi = bounds["after"]
    after_stamps = {s + GOOD_STAMP_OFFSET for s in range(((after_lo // P) + 2) * P, after_hi, P)}

    def recovered():
        nonlocal peak
        peak = max(peak, rss_mb(pid))
        got = after_stamps & {time_to_ns(c.header.stamp) for c in caps}
        return len(got) >= len(after_stamps) // 2

    harness.spin_until(recovered, 40.0, "captions after the burst (output recovery)")
    v = harness.diag.wait("vlm_captioner", lambda v: num(v, "pending") == 0 and num(v, "frames")
                          - num(base, "frames") >= (after_hi - t0) // P - 2, timeout=40.0)
    peak = max(peak, rss_mb(pid))
    frames = num(v, "frames") - num(base, "frames")
    captions = num(v, "captions") - num(base, "captions")
    dropped = num(v, "dropped") - num(base, "dropped")
    missing = num(v, "seq_gaps") - num(base, "seq_gaps")
    figure("burst", {"rate_ev_s": BURST_RATE, "seconds": BURST_S, "packets": len(msgs),
                     "send_wall_s": round(send_s, 2), "frames_closed": frames,
                     "captions": captions,
                     "dropped_frames": dropped, "missing_packets": missing,
                     "forced_refreshes": num(v, "forced_refreshes"),
                     "rss_start_mb": round(rss0, 1), "rss_peak_mb": round(peak, 1),
                     "rss_end_mb": round(rss_mb(pid), 1)})
    assert proc.poll() is None, "captioner died in the burst"
    assert peak - rss0 < RSS_GROWTH_LIMIT_MB, f"RSS grew {peak - rss0:.0f} MB in the burst"
    # every closed frame is either captioned or counted as dropped (nothing pending any more)
    assert frames == captions + dropped
    if dropped:
        lvls = harness.diag.levels("vlm_captioner", wall0)
        assert any(lvl == 1 and "dropped" in m for lvl, m in lvls), lvls
        # the first frame processed after a drop is a dense refresh of the token memory
        idx = sorted((c.frame_index, c) for c in costs if c.frame_index >= k0)
        for (a, _), (b, cb) in zip(idx, idx[1:]):
            if b > a + 1:
                assert cb.active_tokens == cb.total_tokens, \
                    f"frame {b} after a drop was not refreshed"


def test_backpressure_drops_oldest_frames_and_forces_refresh(harness, nodes):
    """One packet closing 25 frames at once (a catch-up after a stall): exactly 25 -
    max_pending_frames (8) oldest frames are dropped, the newest 8 are captioned, the first of them
    densely refreshed."""
    from edge_vlm.events import concat_events
    from edge_vlm_msgs.msg import ComputeCost
    from edge_vlm_ros.qos import RELIABLE_50, SENSOR
    from event_camera_msgs.msg import EventPacket

    proc = nodes["vlm_captioner"]
    costs = harness.collect(ComputeCost, "/edge_vlm/compute_cost", RELIABLE_50)
    pub = harness.publisher(EventPacket, CAP_TOPIC, SENSOR)
    harness.wait_subscribers(CAP_TOPIC, proc, timeout=60.0)
    limit, n = 8, 25
    k = 15_000
    seq = harness.seq.get(CAP_TOPIC, 0)
    base = harness.diag.wait("vlm_captioner", lambda v: num(v, "pending") == 0)
    pub.publish(event_packet(blob_events(k - 1, 600), (k - 1) * P, seq))  # opens frame k-1
    harness.spin_for(0.3)                                                 # (< the 1 s idle flush)
    big = concat_events([blob_events(j, 600) for j in range(k, k + n)])   # frames k .. k+n-1
    pub.publish(event_packet(big, k * P, seq + 1))                        # ... in one packet
    harness.spin_for(0.05)
    pub.publish(event_packet(blob_events(0, 0), (k + n) * P, seq + 2))    # closes frame k+n-1
    harness.seq[CAP_TOPIC] = seq + 3
    t = time.monotonic()
    want = set(range(k + n - 1 - limit, k + n))
    harness.spin_until(lambda: want <= {c.frame_index for c in costs}, 30.0,
                       "captions of the kept frames")
    v = harness.diag.wait("vlm_captioner", lambda v: num(v, "pending") == 0, after=t)
    dropped = num(v, "dropped") - num(base, "dropped")
    got = {c.frame_index: c for c in costs if k - 1 <= c.frame_index < k + n}
    figure("backpressure", {"frames_closed_at_once": n, "max_pending_frames": limit,
                            "dropped": dropped, "captioned": sorted(got),
                            "first_kept_active": got[k + n - 1 - limit].active_tokens})
    assert dropped == n - limit                       # frames k-1 .. k+n-limit-1 (the oldest)
    assert set(got) == want, "dropped frames must be the oldest ones"
    first = got[k + n - 1 - limit]
    assert first.active_tokens == first.total_tokens, "no dense refresh after the drop"
    later = [got[j] for j in sorted(want)[1:]]
    # at most one periodic refresh
    assert sum(c.active_tokens == c.total_tokens for c in later) <= 1
    lvls = harness.diag.levels("vlm_captioner", t - 0.5)
    assert any(lvl == 1 and "dropped" in m for lvl, m in lvls)


# ----------------------------------------------------------------------------- kill / restart
def test_captioner_sigkill_restart_resumes_and_resyncs(harness, nodes, checkpoint, env):
    from edge_vlm.cores.captioner import CaptionerCore
    from edge_vlm.stream.frames import FrameClock
    from edge_vlm_msgs.msg import Caption, ComputeCost
    from edge_vlm_ros.qos import RELIABLE_50, SENSOR
    from event_camera_msgs.msg import EventPacket

    caps = harness.collect(Caption, "/edge_vlm/caption", RELIABLE_50)
    costs = harness.collect(ComputeCost, "/edge_vlm/compute_cost", RELIABLE_50)
    pub = harness.publisher(EventPacket, CAP_TOPIC, SENSOR)
    proc = nodes["vlm_captioner"]
    if proc.poll() is not None:
        proc = nodes["vlm_captioner"] = NodeProc("vlm_captioner", nodes["_logs"],
                                                 cap_params(checkpoint), CAP_REMAPS, env)
    harness.wait_subscribers(CAP_TOPIC, proc, timeout=60.0)
    k0 = 20_000
    n_before, n_after = 8, 3 * REFRESH
    frames_events = {k: blob_events(k, 600) for k in range(k0, k0 + n_before + 1 + n_after)}
    seq = harness.seq.get(CAP_TOPIC, 0)

    def send(k):
        nonlocal seq
        ev = frames_events[k]
        half = k * P + P // 2
        for part, tb in ((ev[ev["t"] < half], k * P), (ev[ev["t"] >= half], half)):
            pub.publish(event_packet(part, tb, seq))
            seq += 1
        harness.spin_for(0.035)

    for k in range(k0, k0 + n_before):
        send(k)
    harness.spin_until(lambda: any(c.frame_index >= k0 + n_before - 2 for c in caps), 20.0,
                       "captions before the kill")
    old_gids = subscriber_gids(harness, CAP_TOPIC)
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    t_kill = time.monotonic()
    new = nodes["vlm_captioner"] = NodeProc("vlm_captioner", nodes["_logs"],
                                            cap_params(checkpoint), CAP_REMAPS, env)

    def new_reader():
        if new.poll() is not None:
            raise AssertionError(f"restarted captioner exited {new.returncode}:\n"
                                 f"{new.output()[-2000:]}")
        return bool(subscriber_gids(harness, CAP_TOPIC) - old_gids)

    harness.spin_until(new_reader, 60.0, "the restarted captioner's subscription")
    # the graph shows the reader before our best-effort writer has matched it: give discovery time
    harness.spin_until(lambda: pub.get_subscription_count() >= 1, 20.0, "writer matched")
    harness.spin_for(2.0)
    restart_s = time.monotonic() - t_kill
    k_first = k0 + n_before + 1     # frame k0+n_before is skipped: the node was down
    for k in range(k_first, k_first + n_after):
        send(k)
    pub.publish(event_packet(blob_events(0, 0), (k_first + n_after) * P, seq))
    seq += 1
    harness.seq[CAP_TOPIC] = seq
    harness.spin_until(lambda: {k_first + n_after - 1} <= {c.frame_index for c in costs}, 40.0,
                       "captions after the restart")
    after = sorted({c.frame_index: c for c in costs if c.frame_index >= k_first}.items())
    cap_after = {c.frame_index: c for c in caps if c.frame_index >= k_first}
    first_k, first = after[0]
    figure("restart", {"restart_to_subscribed_s": round(restart_s, 2),
                       "first_frame": first_k - k_first,
                       "active_first": f"{first.active_tokens}/{first.total_tokens}",
                       "active_next": [c.active_tokens for _, c in after[1:REFRESH + 1]]})
    assert first_k == k_first, "the first frame after the restart got no caption"
    assert first.active_tokens == first.total_tokens, \
        "no dense refresh on the first frame after the restart"
    sparse = [c for k, c in after if 0 < (k - first_k) % REFRESH]
    dense = [c for k, c in after if (k - first_k) % REFRESH == 0]
    assert sparse and all(c.active_tokens < c.total_tokens for c in sparse), \
        "frames after the refresh not sparse"
    assert all(c.active_tokens == c.total_tokens for c in dense), "periodic refresh missing"

    # resynced: the restarted node rebuilds its token memory from the stream on its first frame
    # (dense) and from then on computes exactly what a fresh captioner started at the same frame
    # computes (no leftover or half-written state). (An uninterrupted run differs by the
    # pre-restart history still in its gated memory; that difference decays as tokens are
    # re-merged and vanishes as they expire.)
    ref = CaptionerCore(cap_params(checkpoint))
    clock = FrameClock(P)
    ref_out = {}
    for k in sorted(kk for kk in frames_events if kk >= k_first):
        for f in clock.push(frames_events[k], W, H):
            ref_out[f.index] = ref.process(f)
    for f in clock.flush():
        ref_out[f.index] = ref.process(f)
    checked = 0
    for k, c in cap_after.items():
        if k in ref_out:
            r = ref_out[k]
            assert c.text == r.text and c.gesture_label == r.label, f"frame {k} not resynced"
            assert c.gesture_confidence == pytest.approx(r.confidence, abs=1e-4)
            checked += 1
    assert checked >= n_after - 2
    figure("restart_resync_frames_checked", checked)


# ----------------------------------------------------------------------------- bad configuration
@pytest.mark.parametrize("package,arg,needle", [
    ("anc_router", "compute_budget:=5.0", "compute_budget"),
    ("anc_router", "low_density:=abc", "low_density"),
    ("sttf_perception", "publish_mask_image:=notabool", "publish_mask_image"),
    ("sttf_perception", "mask_method:=magic", "mask_method"),
    ("vlm_captioner", "max_pending_frames:=0", "max_pending_frames"),
    ("vlm_captioner", "mask_source:=bogus", "mask_source"),
])
def test_bad_parameter_exits_with_one_clear_line(env, package, arg, needle):
    from edge_vlm_tools.runner import find_executable

    exe = find_executable(package, package, env)
    r = subprocess.run([exe, "--ros-args", "-p", arg], env=env, capture_output=True, text=True,
                       timeout=60)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2, out
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and needle in errors[0] and "invalid parameter" in errors[0], out
    assert "Traceback" not in out


def test_checkpoint_of_the_wrong_kind_exits_clearly(env, tmp_path):
    import torch

    from edge_vlm_tools.runner import find_executable

    exe = find_executable("vlm_captioner", "vlm_captioner", env)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": torch.zeros(3)}, str(wrong))     # a real torch file, not our format
    r = subprocess.run([exe, "--ros-args", "-p", f"checkpoint:={wrong}"], env=env,
                       capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 3, out
    assert "not an edge_vlm captioner checkpoint" in out and str(wrong) in out
    assert "Traceback" not in out
