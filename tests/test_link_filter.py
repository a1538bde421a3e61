"""The link mode's rule (edge_vlm.stream.link_filter): the kept events are exactly those in the
active patches, checked against the binner's own histogram of the raw events."""
import re

import numpy as np
import pytest

from edge_vlm.events import make_events
from edge_vlm.io.codecs import make_decoder
from edge_vlm.stream.binner import FrameBinner
from edge_vlm.stream.histogram import event_histogram, patch_counts
from edge_vlm.stream.link_filter import (LinkGeometry, LinkRelay, active_keep, encode_kept,
                                         filter_active)

P = 33_333_333


def _events(n, w, h, t0, t1, seed=0, whole_us=True):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(t0, t1, n))
    if whole_us:
        t = t // 1000 * 1000
    return make_events(t, rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n))


def _active_pixels(active, geom):
    """The model-grid pixels of the active patches (bool, (model_h, model_w))."""
    gw, gh = geom.model_w // geom.patch, geom.model_h // geom.patch
    grid = np.zeros(gh * gw, dtype=bool)
    grid[np.asarray(active, dtype=np.int64)] = True
    return np.repeat(np.repeat(grid.reshape(gh, gw), geom.patch, 0), geom.patch, 1)


def _binned(encoding, payload, w, h, time_base, k):
    """The binner's histogram of frame ``k`` from one packet (flushed)."""
    b = FrameBinner(P, 128, 128, backend="numpy")
    frames = b.push(encoding, payload, w, h, time_base) + b.flush()
    got = [f for f in frames if f.index == k]
    return got[0].hist if got else np.zeros((4, 128, 128), np.float32)


@pytest.mark.parametrize("w,h", [(128, 128), (346, 260), (640, 480)])
def test_kept_events_are_exactly_the_active_patches_of_the_binned_histogram(w, h):
    k = 7
    t0, t1 = k * P, (k + 1) * P
    ev = _events(5000, w, h, t0 - P // 3, t1 + P // 3, seed=w)   # straddles both boundaries
    geom = LinkGeometry(w, h, 128, 128, 8)
    rng = np.random.default_rng(1)
    active = np.sort(rng.choice(256, 60, replace=False)).astype(np.uint32)
    raw = event_histogram(ev, t0, t1, w, h, 128, 128)
    kept = filter_active(ev, t0, t1, active, geom)
    pix = _active_pixels(active, geom)
    want = raw * pix[None]
    assert 0 < len(kept) < len(ev)
    np.testing.assert_array_equal(event_histogram(kept, t0, t1, w, h, 128, 128), want)
    # every kept event is in the window and no event of an active patch is left out
    assert kept["t"].min() >= t0 and kept["t"].max() < t1
    assert len(kept) == int(want.sum())
    # through the link: encoded, decoded and binned by the receiver's binner
    pkt = encode_kept(kept, len(ev))
    assert pkt.encoding == "libcaer_cmp" and pkt.events == len(kept)
    np.testing.assert_array_equal(_binned(pkt.encoding, pkt.payload, w, h, pkt.time_base, k),
                                  want)
    dec = make_decoder(pkt.encoding).decode(pkt.payload, w, h, pkt.time_base)
    np.testing.assert_array_equal(dec["t"], kept["t"])


def test_active_patches_are_the_token_masks_row_major_indices():
    geom = LinkGeometry(128, 128, 128, 128, 8)
    ev = make_events([10, 20, 30], [0, 127, 8], [0, 127, 0], [1, 0, 1])
    # patch (row 0, col 0) = 0, (row 15, col 15) = 255, (row 0, col 1) = 1
    assert active_keep(ev, 0, P, [0], geom).tolist() == [True, False, False]
    assert active_keep(ev, 0, P, [255], geom).tolist() == [False, True, False]
    assert active_keep(ev, 0, P, [1, 255], geom).tolist() == [False, True, True]
    counts = patch_counts(event_histogram(ev, 0, P, 128, 128), 8).reshape(-1)
    assert np.flatnonzero(counts).tolist() == [0, 1, 255]


def test_window_boundaries():
    geom = LinkGeometry(128, 128, 128, 128, 8)
    ev = make_events([P - 1, P, 2 * P - 1, 2 * P], [1] * 4, [1] * 4, [0] * 4)
    assert active_keep(ev, P, 2 * P, [0], geom).tolist() == [False, True, True, False]


def test_empty_mask_and_empty_frame():
    geom = LinkGeometry(128, 128, 128, 128, 8)
    ev = _events(100, 128, 128, 0, P)
    assert len(filter_active(ev, 0, P, np.zeros(0, np.uint32), geom)) == 0
    assert len(filter_active(ev[:0], 0, P, [1, 2], geom)) == 0
    pkt = encode_kept(ev[:0], 100)
    assert pkt.payload == b"" and pkt.events == 0 and pkt.events_in == 100


def test_sub_microsecond_times_fall_back_to_mono_exactly():
    ev = _events(300, 128, 128, 0, P, whole_us=False)
    ev["t"][1:] |= 1                       # not whole microseconds
    pkt = encode_kept(ev)
    assert pkt.encoding == "mono"
    dec = make_decoder("mono").decode(pkt.payload, 128, 128, pkt.time_base)
    np.testing.assert_array_equal(dec["t"], ev["t"])


@pytest.mark.parametrize("active,match", [([256], "out of range"), ([-1], "out of range"),
                                          ([[1, 2]], "1-D"), ([0.5], "integer")])
def test_malformed_active_indices(active, match):
    geom = LinkGeometry(128, 128, 128, 128, 8)
    with pytest.raises(ValueError, match=match):
        active_keep(_events(10, 128, 128, 0, P), 0, P, active, geom)


def test_malformed_events_and_geometry():
    geom = LinkGeometry(128, 128, 128, 128, 8)
    ev = _events(10, 128, 128, 0, P)
    with pytest.raises(ValueError, match="EVENT_DTYPE"):
        active_keep(np.zeros(3), 0, P, [0], geom)
    bad = ev.copy()
    bad["x"][0] = 128
    with pytest.raises(ValueError, match="outside"):
        active_keep(bad, 0, P, [0], geom)
    with pytest.raises(ValueError, match="tile"):
        active_keep(ev, 0, P, [0], LinkGeometry(128, 128, 128, 128, 7))
    with pytest.raises(ValueError, match="positive"):
        active_keep(ev, 0, P, [0], LinkGeometry(0, 128, 128, 128, 8))
    with pytest.raises(ValueError, match="window"):
        active_keep(ev, P, P, [0], geom)


def test_relay_buckets_events_by_frame_across_packets():
    ev = _events(3000, 128, 128, 0, 4 * P)
    r = LinkRelay(P, max_frames=8)
    for chunk in np.array_split(ev, 7):               # packets straddle frame boundaries
        r.push(chunk)
    geom = LinkGeometry(128, 128, 128, 128, 8)
    allp = np.arange(256)
    for k in range(4):
        pkt = r.take(k, allp, geom)
        inside = ev[(ev["t"] >= k * P) & (ev["t"] < (k + 1) * P)]
        assert pkt.events == pkt.events_in == len(inside)
        dec = make_decoder(pkt.encoding).decode(pkt.payload, 128, 128, pkt.time_base)
        np.testing.assert_array_equal(dec["t"], inside["t"])
    c = r.counters
    assert (c.frames_sent, c.events_in, c.events_kept, c.frames_dropped) == (4, len(ev),
                                                                              len(ev), 0)
    r.push(ev[:5])                                     # late: frame 0 was sent
    assert c.late_events == 5 and not r.buckets


def test_relay_is_bounded_and_skipped_frames_are_counted():
    r = LinkRelay(P, max_frames=3)
    for k in range(6):
        r.push(make_events([k * P + 5], [1], [1], [1]))
    assert sorted(r.buckets) == [3, 4, 5] and r.counters.frames_dropped == 3
    geom = LinkGeometry(128, 128, 128, 128, 8)
    pkt = r.take(5, [0], geom)                         # the masks of 3, 4 never came
    assert pkt.events == 1 and r.counters.frames_dropped == 5 and not r.buckets
    # a backward jump (a bag loop) restarts the buckets instead of dropping everything
    r.push(make_events([5], [1], [1], [1]))
    assert r.counters.resets == 1 and list(r.buckets) == [0]
    assert r.take(0, [0], geom).events == 1


# ------------------------------------------------------------- the relay in a ROS graph
def test_graph_link_active_captions_from_the_relayed_events(tmp_path):
    """``ros2 launch ... nodes:=all link:=active source:=bag`` (own free domain, localhost), the
    user's path: the launch's player waits for the two EventPacket subscribers (anc_router, and
    sttf_perception, which subscribes only once its relay matched the captioner:
    ``link_wait_subscribers``), so no relayed frame goes out before the captioner hears it.
    sttf_perception relays one EventPacket per frame, the captioner bins exactly those (its
    packets = the relay's frames = every frame of the bag, its events = the kept ones) and
    captions them. (Before the wait, a slow start lost the first relayed frames: in one CI run
    sttf_perception matched the player after 488 of 700 packets; in others the captioner matched
    the relay 3 s after a short bag ended.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    import rosenv

    rosenv.require_workspace("edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros",
                             "edge_vlm_tools", "edge_vlm_bringup", "sttf_perception",
                             "anc_router", "vlm_captioner")
    rosenv.activate()
    from edge_vlm.bench.e2e import shutdown_counters
    from edge_vlm_ros.lifeline import free_domain_id
    from edge_vlm_tools.demo import make_sim_bag

    bag = make_sim_bag(str(tmp_path / "bag"), labels=(2,), seed=1, clip_duration_s=1.0,
                       gap_s=0.2, with_frames=False)
    env = rosenv.sourced_env(ROS_DOMAIN_ID=str(free_domain_id()),
                             ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    logs = tmp_path / "logs"
    ros2 = os.path.join(os.path.dirname(sys.executable), "ros2")
    proc = subprocess.Popen([ros2, "launch", "edge_vlm_bringup", "edge_vlm.launch.py",
                             "nodes:=all", "link:=active", "source:=bag", f"bag:={bag}",
                             "wait_timeout:=90", f"log_dir:={logs}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        end = time.monotonic() + 180
        while (time.monotonic() < end
               and "edge_vlm_play: published" not in _text(logs / "player.log")):
            time.sleep(0.2)
        time.sleep(4.0)                   # the idle flush (1 s) and the last captions
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    player = _text(logs / "player.log")
    assert "edge_vlm_play: published" in player and "WARNING" not in player, player[-2000:]
    assert "link_events: 1 subscribers matched" in _text(logs / "sttf_perception.log")
    per = shutdown_counters(logs / "sttf_perception.log", "sttf_perception")
    cap = shutdown_counters(logs / "vlm_captioner.log", "vlm_captioner")
    played = re.search(r"^  /event_camera/events: (\d+)$", player, re.M)
    # every packet of the bag reached sttf_perception, and every frame of it the captioner
    assert played and per.get("packets") == int(played.group(1)), (per, player[-2000:])
    assert per.get("frames", 0) > 20, per
    assert cap["packets"] == per["link_frames"] == per["frames"], (per, cap)
    assert cap["events"] == per["link_events_kept"] <= per["events"], (per, cap)
    assert cap["frames"] == per["frames"] and cap["missing_packets"] == 0, (per, cap)
    # a loaded machine drops a few frames by backpressure; most must be captioned
    assert cap["captions"] >= 0.5 * cap["frames"], cap
    assert per["link_decode_errors"] == 0 and cap["rejected"] == 0


def _text(path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
