"""Across hosts: the graph split into a drone (source, sttf_perception, anc_router) and a ground
station (vlm_captioner) joined by a network link, on one machine with network namespaces.

The namespaces, the link, the two halves (the bringup's launch file with ``nodes:=drone`` /
``nodes:=ground``) and the recorders are the ROS 2 workspace's tool ``edge_vlm_multihost``
(package ``edge_vlm_tools``, on PATH after ``source env.sh``; root only), run as a subprocess:
the core never imports ROS. This module writes the simulated DVS128 bags (one per EventPacket
encoding the project can write), the plan of runs, and turns what each run left (the drone's
EventPacket arrivals, the ground's captions, the link's byte counters, the nodes' counters,
memory samples, partition and restart times) into the figures.

Runs (``quick``: the first only, a short bag):

* ``local`` (not ``quick``): the whole graph on the drone, no link: the baseline measured in
  the same conditions (the machine's load changes the latencies more than the link);
* ``link_<encoding>``: uncapped link, the bag at 1x, once per encoding (:data:`ENCODINGS`);
* ``cap_<rate>``: the default encoding through a ``tbf`` rate cap (:data:`CAPS`), from the
  start; ``cap_<tightest>_in_flight``: that cap set 1 s after the bag started;
* ``partition``: the bag looped, the link down for :data:`PARTITION_S` s, then up;
* ``restart``: the bag looped, the ground's launch stopped and started again;
* ``crash``: the bag looped, the ground's captioner killed (SIGKILL), its launch
  (``respawn:=true``) starts it again;
* ``link_active``, ``cap_<rate>_active`` (:data:`ACTIVE_CAPS`): link mode 'active' (the launch
  files' ``link:=active``: per frame one EventPacket of the events in the frame's active patches
  crosses the link instead of the raw events; docs/deploy.md); ``link_active`` in ``quick``
  too;
* ``cameras`` (``quick`` too): three cameras in three namespaces (ROS namespaces ``/cam1``..
  ``/cam3``) feeding one ground namespace, one captioner per camera (:func:`camera_figures`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edge_vlm.bench.link_topics import link_by_topic, rediscovery_figures
from edge_vlm.bench.streams import packetize_evt3, simulated_events
from edge_vlm.evaluation.records import percentile, read_jsonl, summarize
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.io.codecs import make_encoder
from edge_vlm.io.packets import packet_grid
from edge_vlm.paths import data_dir

__all__ = ["MULTIHOST_EXECUTABLE", "ENCODINGS", "DEFAULT_ENCODING", "CAPS", "multihost_bag",
           "make_plan", "run_figures", "bench_multihost"]

MULTIHOST_EXECUTABLE = "edge_vlm_multihost"
#: EventPacket encodings played over the link (the ones the project's bag writer encodes;
#: ``evt3`` is decoded by the graph but only its payload size is reported: no encoder)
ENCODINGS = ("libcaer_cmp", "mono")
#: the default encoding for a link: the smallest payload per event of the writable ones
#: (``libcaer_cmp``, iniVation's compressed encoding; DVS128 cameras are iniVation's)
DEFAULT_ENCODING = "libcaer_cmp"
#: link caps: two that carry the events, two that cannot (graceful degradation); the tightest
#: is the last
CAPS = ("10mbit", "2mbit", "650kbit", "500kbit")
#: caps of link mode 'active': 650 kbit/s lies between the raw events' rate on the wire (~750
#: kbit/s on the full bag) and the active mode's (~600)
ACTIVE_CAPS = ("2mbit", "650kbit", "500kbit")
PARTITION_S = 5.0
#: the in-flight cap run: the cap comes this long after the bag started
CAP_AFTER_S = 1.0
#: when the partition / restart starts after the bag started, and how long the bag loops
EVENT_AT_S = 4.0
LOOP_S = 16.0
RESTART_LOOP_S = 40.0
CRASH_LOOP_S = 25.0
DOMAIN_ID = 181
PACKET_NS = 10_000_000
#: the several-camera run: its cameras (ROS namespaces), and how far apart their sensor clocks
#: start (s; a recording lasts ~16 s)
CAMERAS = ("cam1", "cam2", "cam3")
CAMERA_OFFSET_S = 100


def multihost_bag(out_dir: str | os.PathLike, encoding: str, quick: bool = False,
                  camera: int = 0) -> str:
    """The simulated DVS128 bag of :func:`edge_vlm.bench.e2e.e2e_bag`'s recording (event times
    whole microseconds, as a DVS128 stamps them; ``libcaer_cmp`` needs them) in ``encoding``,
    10 ms EventPackets; made once, then reused. ``camera`` ``k`` > 0: camera ``k`` of the
    several-camera run (:func:`_recording`)."""
    cam = f"_cam{camera}" if camera else ""
    path = Path(out_dir) / f"mh_{encoding}_{'quick' if quick else 'full'}_s11{cam}"
    if (path / "metadata.yaml").is_file():
        return str(path)
    events, truth = _recording(quick, camera)
    write_bag(path, events=events, ground_truth=truth, encoding=encoding, overwrite=True,
              packet_ns=PACKET_NS, frame_id=f"dvs128_cam{camera}" if camera else "dvs128")
    return str(path)


def _recording(quick: bool, camera: int = 0) -> tuple[np.ndarray, list[dict]]:
    """The bags' events (whole microseconds) and ground truth. Camera ``k`` > 0: another
    seed, other gestures (quick: labels shifted by ``k - 1``) and the sensor clock
    ``k`` x :data:`CAMERA_OFFSET_S` later, so that every stamp names its camera."""
    labels, clip_s = ((2, 8), 0.5) if quick else (tuple(range(1, 12)), 1.0)
    if camera:
        labels = tuple((x - 1 + camera - 1) % 11 + 1 for x in labels) if quick else labels
    rec = simulated_events(labels=labels, clip_s=clip_s, gap_s=0.3, seed=11 + camera)
    events = rec.events.copy()
    offset = camera * CAMERA_OFFSET_S * 1_000_000_000
    events["t"] = events["t"] // 1000 * 1000 + offset
    truth = [c.ground_truth() for c in rec.clips]
    for t in truth:
        t.update({k: v + offset for k, v in t.items() if k.endswith("_ns")})
    return events, truth


def camera_window_ns(quick: bool, camera: int) -> list[int]:
    """The sensor-clock span of camera ``camera``'s recording, widened by 1 s each side: every
    stamp of its EventPackets and captions falls in it, none of another camera's."""
    t = _recording(quick, camera)[0]["t"]
    return [int(t[0]) - 1_000_000_000, int(t[-1]) + 1_000_000_000]


def payload_bytes_per_event(quick: bool = False) -> dict[str, float]:
    """EventPacket payload bytes per event of each encoding the graph decodes, on the bags'
    recording in 10 ms packets, offline (``evt3`` too, which the bag writer cannot write)."""
    ev, _ = _recording(quick)
    n = max(len(ev), 1)
    starts, bounds = packet_grid(ev["t"], PACKET_NS)
    out = {}
    for enc in ENCODINGS:
        encode = make_encoder(enc)
        out[enc] = sum(len(encode(ev[bounds[i]:bounds[i + 1]], int(s)))
                       for i, s in enumerate(starts)) / n
    out["evt3"] = sum(len(p[0]) for p in packetize_evt3(ev, packet_ns=PACKET_NS)) / n
    return {k: round(v, 3) for k, v in out.items()}


def make_plan(bags: dict[str, str], quick: bool, work: str | os.PathLike = "") -> list[dict]:
    """The runs (see the module doc); ``bags``: encoding -> bag; the several-camera run's bags
    are written to ``work`` (default: beside the default encoding's bag)."""
    work = work or os.path.dirname(bags[DEFAULT_ENCODING])
    cameras = {"name": "cameras", "drain_s": 3.0, "cameras": [
        {"ns": ns, "bag": multihost_bag(work, DEFAULT_ENCODING, quick, k),
         "window_ns": camera_window_ns(quick, k)} for k, ns in enumerate(CAMERAS, 1)]}
    base = {"rate": 1.0, "cap": "", "drain_s": 3.0}
    default = bags[DEFAULT_ENCODING]
    runs = [{**base, "name": f"link_{e}", "bag": bags[e]} for e in ENCODINGS]
    active = {**base, "name": "link_active", "bag": default, "link": "active"}
    if quick:
        return runs[:1] + [active, cameras]
    # the baseline: the whole graph on the drone, no link, same bag, same machine, same load
    runs.insert(0, {**base, "name": "local", "bag": default, "local": True})
    runs += [{**base, "name": f"cap_{c}", "bag": default, "cap": c} for c in CAPS]
    # the tightest cap once the graph is discovered: capped from the start, a link below the
    # stream's rate starves the discovery of the player's writer (no EventPacket is accepted)
    runs.append({**base, "name": f"cap_{CAPS[-1]}_in_flight", "bag": default, "cap": CAPS[-1],
                 "cap_after_s": CAP_AFTER_S})
    runs.append(active)
    runs += [{**active, "name": f"cap_{c}_active", "cap": c} for c in ACTIVE_CAPS]
    runs.append({**base, "name": "partition", "bag": default, "loop_s": LOOP_S,
                 "partition_at_s": EVENT_AT_S, "partition_s": PARTITION_S})
    restarts = [{**base, "name": "restart", "bag": default, "loop_s": RESTART_LOOP_S,
                 "restart_at_s": EVENT_AT_S},
                {**base, "name": "crash", "bag": default, "loop_s": CRASH_LOOP_S,
                 "crash_at_s": EVENT_AT_S}]
    # the same two again with the bringup's Fast DDS profile (participants announced every 1 s)
    runs += restarts + [{**r, "name": f"{r['name']}_rediscovery", "dds_profile": "rediscovery"}
                        for r in restarts]
    runs.append(cameras)
    return runs


def _bytes(state: dict, role: str) -> int | None:
    a, b = state.get("link_start", {}).get(role), state.get("link_end", {}).get(role)
    return None if not a or not b else b["tx_bytes"] - a["tx_bytes"]


def _first_caption_after(captions: list[int], t_ns: int | None) -> float | None:
    """Seconds from ``t_ns`` to the first caption that arrived after it."""
    if t_ns is None:
        return None
    after = [c for c in captions if c > t_ns]
    return round((min(after) - t_ns) / 1e9, 3) if after else None


def _rss(samples: list[float]) -> dict:
    """Max and growth (median of the last quarter - median of the first) of RSS samples (MB)."""
    if not samples:
        return {"max": None, "growth": None}
    q = max(1, len(samples) // 4)
    return {"max": max(samples),
            "growth": round(float(np.median(samples[-q:]) - np.median(samples[:q])), 1)}


def _link_figures(state: dict, play_s: float | None, events: int | None,
                  payload: int) -> dict:
    """Bytes on the link while the bag played (both directions, and drone -> ground)."""
    up, down = _bytes(state, "drone"), _bytes(state, "ground")
    ok = play_s and up is not None and down is not None
    end = state.get("link_end", {})
    return {
        "link_bytes_per_s": round((up + down) / play_s) if ok else None,
        "link_bytes_per_s_drone_to_ground": round(up / play_s) if ok else None,
        "payload_bytes_per_s": round(payload / play_s) if play_s else None,
        "bytes_per_mev": round(up / (events / 1e6)) if ok and events else None,
        "qdisc_drops": sum((end.get(r) or {}).get("qdisc_drops", 0) for r in ("drone", "ground")),
    }


def frame_packet_latency_ms(drone: list[dict], ground: list[dict]) -> list[float]:
    """Link mode 'active': per caption, the drone's arrival of the newest raw EventPacket of
    its frame -> the caption's arrival (the captioner's ``input_stamps`` name the relay's
    packets, not the raw ones): the raw packets of a frame are those whose
    ``[time_base, time_base + PACKET_NS)`` (the bags' packet grid) overlaps its window."""
    packets = sorted((r["data"]["time_base"], r["recv_ns"]) for r in drone
                     if r.get("stream") == "events" and "time_base" in (r.get("data") or {}))
    if not packets:
        return []
    bases = np.array([p[0] for p in packets], dtype=np.int64)
    recv = np.array([p[1] for p in packets], dtype=np.int64)
    out = []
    for c in (r for r in ground if r.get("stream") == "caption"):
        d = c["data"]
        a, b = np.searchsorted(bases, [d["window_start"] - PACKET_NS + 1, d["window_end"]])
        if b > a:
            out.append((c["recv_ns"] - int(recv[a:b].max())) / 1e6)
    return out


def _relay_figures(perception: dict, play_s: float | None) -> dict:
    """Link mode 'active': what sttf_perception's relay sent (its shutdown counters)."""
    if "link_frames" not in perception:
        return {}
    n, kept = perception.get("link_events_in"), perception.get("link_events_kept")
    payload = perception.get("link_payload_bytes")
    return {"relay_packets": perception.get("link_frames"),
            "relay_events_kept_share": round(kept / n, 4) if n else None,
            "relay_payload_bytes_per_s": round(payload / play_s) if play_s and payload else None,
            "relay_frames_dropped": perception.get("link_frames_dropped"),
            "relay_mono_fallbacks": perception.get("link_mono_fallbacks")}


def _captioner_counters(state: dict) -> dict:
    """The ground captioner's shutdown counters (summed over a restart)."""
    c = dict(state.get("counters", {}).get("vlm_captioner") or {})
    before = state.get("counters_before_restart") or {}
    return {k: v + before.get(k, 0) for k, v in c.items()} if before else c


def _records(path: str) -> list[dict]:
    return read_jsonl(path) if os.path.isfile(path) else []


def _outside(records: list[dict], window: list[int]) -> int:
    """Captions and EventPackets stamped outside ``window`` (another camera's clock)."""
    return sum(1 for r in records if r.get("stream") in ("caption", "events")
               and r.get("stamp_ns") is not None
               and not window[0] <= r["stamp_ns"] <= window[1])


def _camera(run_dir: str, state: dict, cam: dict) -> dict:
    """One camera's figures of a several-camera run."""
    ns = cam["ns"]
    drone, ground = (_records(os.path.join(run_dir, *d, "records.jsonl"))
                     for d in ((ns,), ("ground", ns)))
    _, summary = summarize(drone + ground)
    counters = (state.get("counters") or {}).get(ns) or {}
    perception, cap = counters.get("sttf_perception") or {}, counters.get("vlm_captioner") or {}
    t0, t1 = (state.get("play_ns") or {}).get(ns) or (None, None)
    link = {k: (state.get(k) or {}).get(ns) for k in ("link_start", "link_end")}
    sent = (link["link_end"]["drone"]["tx_bytes"] - link["link_start"]["drone"]["tx_bytes"]
            if link["link_start"] and link["link_end"] else None)
    captions = sum(1 for r in ground if r.get("stream") == "caption")
    frames = perception.get("frames")
    return {
        "captions": captions, "frames": frames,
        "captions_per_frame": round(captions / frames, 3) if frames else None,
        "caption_latency_ms_p50": summary.packet_to_caption_ms_p50,
        "caption_latency_ms_p95": summary.packet_to_caption_ms_p95,
        "gesture_accuracy": summary.gesture_accuracy,
        "packets_drone": perception.get("packets"), "packets_ground": cap.get("packets"),
        "missing_packets_ground": cap.get("missing_packets"),
        "frames_dropped_ground": cap.get("dropped"),
        "link_bytes_per_s_drone_to_ground": (round(sent / ((t1 - t0) / 1e9))
                                             if sent is not None and t0 and t1 else None),
        "cross_talk": _outside(drone + ground, cam["window_ns"]),
        "player_rc": (state.get("player_rc") or {}).get(ns),
    }


def camera_figures(run_dir: str) -> dict:
    """The figures of a several-camera run folder: per camera (its ROS namespace) captions,
    frames, packet -> caption latency, ...; ``cross_talk``: captions and EventPackets recorded
    on one camera's namespace with another camera's stamps, plus captions on the
    un-namespaced caption topic of the ground (0 when the namespaces isolate the cameras)."""
    with open(os.path.join(run_dir, "run.json")) as fh:
        state = json.load(fh)
    per = {c["ns"]: _camera(run_dir, state, c) for c in state["run"]["cameras"]}
    probe = _records(os.path.join(run_dir, "ground", "probe.jsonl"))
    stray = sum(1 for r in probe if r.get("stream") == "caption")
    rss = state.get("rss_mb_ground") or []
    return {"error": state.get("error") or None, "cameras": per,
            "cross_talk": sum(c["cross_talk"] for c in per.values()) + stray,
            "captions_unnamespaced": stray, "rss_mb_ground_max": max(rss) if rss else None,
            "exit_codes": state.get("exit_codes"), "load_avg_1m": state.get("load_avg_1m"),
            "namespaces": state.get("namespaces")}


def run_figures(run_dir: str) -> dict:
    """The figures of one run folder of ``edge_vlm_multihost``."""
    with open(os.path.join(run_dir, "run.json")) as fh:
        state = json.load(fh)
    if (state.get("run") or {}).get("cameras"):
        return camera_figures(run_dir)
    drone, ground = (_records(os.path.join(run_dir, h, "records.jsonl"))
                     for h in ("drone", "ground"))
    rows, summary = summarize(drone + ground)
    captions = sorted(r["recv_ns"] for r in drone + ground if r.get("stream") == "caption")
    t0, t1 = state.get("play_start_ns"), state.get("play_end_ns")
    play_s = (t1 - t0) / 1e9 if t0 and t1 else None
    perception = state.get("counters", {}).get("sttf_perception") or {}
    cap = _captioner_counters(state)
    payload = sum(int(r["data"]["bytes"]) for r in drone if r.get("stream") == "events"
                  and (t0 is None or t0 <= r["recv_ns"] <= (t1 or r["recv_ns"])))
    in_play = [c for c in captions if t0 and t1 and t0 <= c <= t1]
    ev = state.get("events", {})
    looped = bool((state.get("run") or {}).get("loop_s"))
    by_topic = link_by_topic(run_dir, state)
    if (state.get("run") or {}).get("link") == "active":
        p2c = frame_packet_latency_ms(drone, ground)
        summary.packet_to_caption_ms_p50 = percentile(p2c, 50)
        summary.packet_to_caption_ms_p95 = percentile(p2c, 95)
    out = {
        "error": state.get("error") or None, "player_rc": state.get("player_rc"),
        "captions_ground": len(captions),
        "frames_replayed": perception.get("frames"),
        "captions_per_frame": (round(len(captions) / perception["frames"], 3)
                               if perception.get("frames") else None),
        "captions_per_s": round(len(in_play) / play_s, 2) if play_s else None,
        "play_s": round(play_s, 2) if play_s else None,
        "frame_latency_ms_p50": summary.latency_ms_p50,
        "frame_latency_ms_p95": summary.latency_ms_p95,
        # a looped bag repeats its stamps: the packet -> caption join by stamp does not hold
        "caption_latency_ms_p50": None if looped else summary.packet_to_caption_ms_p50,
        "caption_latency_ms_p95": None if looped else summary.packet_to_caption_ms_p95,
        "events_replayed": perception.get("events"),
        **_link_figures(state, play_s, perception.get("events"), payload),
        "link_by_topic": by_topic,      # the link counter's rows (None without it)
        "link_overhead_bytes_per_s": by_topic["overhead_bytes_per_s"] if by_topic else None,
        "seq_gaps_ground": cap.get("seq_gaps"),
        "missing_packets_ground": cap.get("missing_packets"),
        "frames_dropped_ground": cap.get("dropped"), "mask_fallbacks": cap.get("mask_fallbacks"),
        "route_fallbacks": cap.get("route_fallbacks"),
        "rss_mb_drone": _rss(state.get("rss_mb", {}).get("drone", [])),
        "rss_mb_ground": _rss(state.get("rss_mb", {}).get("ground", [])),
        "exit_codes": state.get("exit_codes"), "load_avg_1m": state.get("load_avg_1m"),
        "gesture_accuracy": summary.gesture_accuracy,
        **_relay_figures(perception, play_s),
    }
    if "link_up_ns" in ev:
        out["partition_s"] = round((ev["link_up_ns"] - ev["link_down_ns"]) / 1e9, 2)
        out["recovery_s"] = _first_caption_after(captions, ev["link_up_ns"])
        out["captions_during_partition"] = sum(ev["link_down_ns"] < c <= ev["link_up_ns"]
                                               for c in captions)
    if "crash_ns" in ev:
        out["recovery_s"] = _first_caption_after(captions, ev["crash_ns"])
        out["crash_ready_s"] = (round((ev["crash_ready_ns"] - ev["crash_ns"]) / 1e9, 2)
                                if "crash_ready_ns" in ev else None)
    if "restart_start_ns" in ev:
        out["recovery_s"] = _first_caption_after(captions, ev["restart_start_ns"])
        out["restart_stop_s"] = round((ev["restart_start_ns"] - ev["restart_stop_ns"]) / 1e9, 2)
        out["restart_ready_s"] = (round((ev["restart_ready_ns"] - ev["restart_start_ns"]) / 1e9, 2)
                                  if "restart_ready_ns" in ev else None)
    return out


def _run_tool(exe: str, plan: list[dict], out_dir: str, domain_id: int,
              log: Callable[[str], None] | None) -> int:
    """``edge_vlm_multihost PLAN --out-dir OUT``; its lines go to ``log``."""
    plan_path = os.path.join(out_dir, "plan.json")
    with open(plan_path, "w") as fh:
        json.dump({"runs": plan}, fh, indent=1)
    cmd = [exe, plan_path, "--out-dir", out_dir, "--domain-id", str(domain_id)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        for line in proc.stdout:
            if log is not None:
                log(line.rstrip("\n"))
    return proc.returncode


def _headline(runs: dict[str, dict]) -> dict:
    """The flat figures: the default encoding's uncapped run, caps, recovery."""
    base = runs.get(f"link_{DEFAULT_ENCODING}") or {}
    keys = ("captions_ground", "frames_replayed", "captions_per_frame", "caption_latency_ms_p50",
            "caption_latency_ms_p95", "frame_latency_ms_p50", "frame_latency_ms_p95",
            "link_bytes_per_s", "bytes_per_mev", "missing_packets_ground",
            "frames_dropped_ground", "gesture_accuracy")
    out = {k: base.get(k) for k in keys}
    out["link_overhead_bytes_per_s"] = base.get("link_overhead_bytes_per_s")
    out["link_by_topic"] = base.get("link_by_topic")
    local = runs.get("local") or {}
    for k in ("captions_per_frame", "caption_latency_ms_p50", "caption_latency_ms_p95",
              "gesture_accuracy"):
        out[f"{k}_local"] = local.get(k)
    for enc in ENCODINGS:
        r = runs.get(f"link_{enc}") or {}
        out[f"link_bytes_per_s_{enc}"] = r.get("link_bytes_per_s")
        out[f"bytes_per_mev_{enc}"] = r.get("bytes_per_mev")
        out[f"link_overhead_bytes_per_s_{enc}"] = r.get("link_overhead_bytes_per_s")
    for c in CAPS + (f"{CAPS[-1]}_in_flight",):
        r = runs.get(f"cap_{c}") or {}
        for k in ("captions_per_s", "captions_per_frame", "caption_latency_ms_p95",
                  "missing_packets_ground", "frames_dropped_ground", "qdisc_drops",
                  "gesture_accuracy"):
            out[f"{k}_{c}"] = r.get(k)
        out[f"rss_mb_max_{c}"] = {h: (r.get(f"rss_mb_{h}") or {}).get("max")
                                  for h in ("drone", "ground")} if r else None
    _active_headline(runs, out)
    for name in ("partition", "restart", "crash"):
        out[f"recovery_s_{name}"] = (runs.get(name) or {}).get("recovery_s")
    out["crash_ready_s"] = (runs.get("crash") or {}).get("crash_ready_s")
    out["missing_packets_partition"] = (runs.get("partition") or {}).get("missing_packets_ground")
    out["restart_ready_s"] = (runs.get("restart") or {}).get("restart_ready_s")
    out.update(rediscovery_figures(runs))
    cams = runs.get("cameras") or {}
    out["cameras"] = {ns: {k: c.get(k) for k in ("captions", "frames", "caption_latency_ms_p95")}
                      for ns, c in (cams.get("cameras") or {}).items()} or None
    out["cross_talk"] = cams.get("cross_talk")
    rec = [out[f"recovery_s_{n}"] for n in ("partition", "restart", "crash")
           if out[f"recovery_s_{n}"] is not None]
    out["recovery_s"] = max(rec) if rec else None
    return out


def _active_headline(runs: dict[str, dict], out: dict) -> None:
    """Link mode 'active': the uncapped run's figures (``*_active``) and each cap's
    (``*_<cap>_active``)."""
    r = runs.get("link_active") or {}
    for k in ("captions_per_frame", "captions_per_s", "caption_latency_ms_p50",
              "caption_latency_ms_p95", "link_bytes_per_s", "link_bytes_per_s_drone_to_ground",
              "bytes_per_mev", "missing_packets_ground", "frames_dropped_ground",
              "gesture_accuracy", "relay_events_kept_share", "relay_payload_bytes_per_s"):
        out[f"{k}_active"] = r.get(k)
    for c in ACTIVE_CAPS:
        r = runs.get(f"cap_{c}_active") or {}
        for k in ("captions_per_s", "captions_per_frame", "caption_latency_ms_p95",
                  "missing_packets_ground", "qdisc_drops", "gesture_accuracy",
                  "link_bytes_per_s_drone_to_ground"):
            out[f"{k}_{c}_active"] = r.get(k)


def bench_multihost(quick: bool = False, work_dir: str | None = None,
                    domain_id: int = DOMAIN_ID, log: Callable[[str], None] | None = None) -> dict:
    """The multi-host runs (``quick``: one short uncapped run) and their figures; returns
    ``{"skipped": reason}`` without the ROS 2 workspace or network namespaces (not root)."""
    exe = shutil.which(MULTIHOST_EXECUTABLE)
    if exe is None:
        return {"skipped": f"ROS 2 workspace not available ({MULTIHOST_EXECUTABLE} not on "
                           "PATH); run `source env.sh`"}
    if os.geteuid() != 0:
        return {"skipped": "not root: network namespaces need root"}
    work = Path(work_dir or (data_dir() / "bench"))
    work.mkdir(parents=True, exist_ok=True)
    bags = {e: multihost_bag(work, e, quick) for e in ENCODINGS}
    plan = make_plan(bags, quick, work)
    out_dir = str(work / ("multihost_quick" if quick else "multihost"))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    t0 = time.perf_counter()
    rc = _run_tool(exe, plan, out_dir, domain_id, log)
    if rc == 3:
        return {"skipped": "network namespaces unavailable (see edge_vlm_multihost's error)"}
    runs = {}
    for run in plan:
        d = os.path.join(out_dir, run["name"])
        runs[run["name"]] = (run_figures(d) if os.path.isfile(os.path.join(d, "run.json"))
                             else {"error": "no run.json"})
    with open(os.path.join(out_dir, "cleanup.json")) as fh:
        cleanup = json.load(fh)
    return {"profile": "short" if quick else "full", "default_encoding": DEFAULT_ENCODING,
            "tool_rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "out_dir": out_dir,
            **_headline(runs),
            "payload_bytes_per_event_offline": payload_bytes_per_event(quick),
            "namespaces_left": cleanup.get("left"), "namespaces_created": cleanup.get("created"),
            "runs": runs}

