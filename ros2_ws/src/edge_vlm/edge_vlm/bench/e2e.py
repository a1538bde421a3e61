"""End to end: the node graph on a simulated DVS128 bag played at 1x, per-frame processing and
packet->caption latency, and whether a backlog builds up.

The graph runs in the ROS 2 workspace's demo tool (``edge_vlm_demo``, on PATH after
``source env.sh``; it starts the graph through the bringup's launch file), started as a
subprocess: the core never imports ROS. The tool writes the recorder's records
(``records.jsonl``), the node logs (``logs/``) and its summary (``summary.json``: the nodes'
shutdown counters, the graph's memory) to the run's folder; the figures come from these.

Two kinds of run: the bag at ``packet_ms`` (10 ms by default) with one process per node (3
runs, the median run's figures with the spread of ``frame_latency_ms_p95``), then the same
recording cut into 1 ms EventPackets (1,000 per second, metavision_driver's default) with every
node in one process (``--single-process``): the ``*_1ms_packets`` figures, and the graph's
memory in both modes (``graph_rss_mb_multi`` / ``graph_rss_mb_single``).
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from edge_vlm.bench.streams import simulated_events
from edge_vlm.evaluation.records import CaptionRow, read_jsonl, summarize
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.paths import data_dir

__all__ = ["DEMO_EXECUTABLE", "BACKLOG_RULE", "DemoRun", "Trend", "e2e_bag", "trend",
           "shutdown_counters", "run_demo", "bench_e2e", "ONE_MS_KEYS", "figures",
           "GraphBenchSetup", "graph_bench_setup", "latency_runs"]

#: the ROS 2 workspace's tool that runs the graph on a bag (package ``edge_vlm_tools``)
DEMO_EXECUTABLE = "edge_vlm_demo"
BACKLOG_RULE = ("frames dropped by the captioner's backpressure, or the last quarter's median "
                "packet->caption latency > 1.5x the first quarter's and +20 ms")
#: stop after no caption arrived for this long (s)
_DRAIN_S = 3.0
#: the 1 ms-packet run's figures in the summary: summary key -> figure of :func:`figures`
ONE_MS_KEYS = {"frame_latency_ms_p95_1ms_packets": "frame_latency_ms_p95",
               "caption_latency_ms_p95_1ms_packets": "caption_latency_ms_p95",
               "frames_dropped_1ms_packets": "frames_dropped"}
_FRAME_PERIOD_NS = 33_333_333


@dataclass
class DemoRun:
    """What a run of the demo tool left: records file, node logs, exit codes, its summary."""

    records: str
    logs: str
    exit_codes: dict[str, int]
    player_rc: int | None
    summary: dict = field(default_factory=dict)


@dataclass
class Trend:
    """Slope (per s) of a series over time and the medians of its first and last quarter."""

    slope_per_s: float | None
    first_quarter_p50: float | None
    last_quarter_p50: float | None


class Series(NamedTuple):
    """Values over time (s)."""

    times: list[float]
    values: list[float]


def e2e_bag(out_dir: str | os.PathLike, labels=range(1, 12), clip_s: float = 1.0,
            gap_s: float = 0.3, seed: int = 11, packet_ms: float = 10.0) -> str:
    """A simulated DVS128 bag (events + ground truth, no RGB) of a held-out subject,
    EventPackets of ``packet_ms`` (10 ms: ``edge-vlm synth``'s default); made once, then
    reused."""
    labels = [int(x) for x in labels]
    name = f"bag_s{seed}_c{clip_s:g}_g{gap_s:g}_p{packet_ms:g}_l{'-'.join(map(str, labels))}"
    path = Path(out_dir) / name
    if (path / "metadata.yaml").is_file():
        return str(path)
    rec = simulated_events(labels=labels, clip_s=clip_s, gap_s=gap_s, seed=seed)
    write_bag(path, events=rec.events, ground_truth=[c.ground_truth() for c in rec.clips],
              overwrite=True, packet_ns=int(round(packet_ms * 1e6)))
    return str(path)


def trend(ts: list[float], vs: list[float]) -> Trend:
    """Slope (per s) of ``vs`` over ``ts`` and the medians of its first and last quarter."""
    if len(vs) < 8:
        return Trend(None, None, None)
    t, v = np.asarray(ts, dtype=float), np.asarray(vs, dtype=float)
    q = len(v) // 4
    slope = float(np.polyfit(t - t[0], v, 1)[0]) if t[-1] > t[0] else None
    return Trend(slope, float(np.median(v[:q])), float(np.median(v[-q:])))


def shutdown_counters(log_path: str | os.PathLike, node: str = "") -> dict[str, int]:
    """``key=value`` integers of the last ``shutdown:`` line of a node log ({} when absent);
    with ``node``, of that node's logger only (the log of the single-process graph holds every
    node's lines)."""
    mark = re.compile(re.escape(node) + r"\]:? shutdown:") if node else None
    try:
        with open(log_path, errors="replace") as fh:
            lines = [ln for ln in fh if "shutdown:" in ln and (mark is None or mark.search(ln))]
    except OSError:
        return {}
    out = {}
    for tok in (lines[-1].split("shutdown:", 1)[1].split() if lines else []):
        k, _, v = tok.partition("=")
        if v.lstrip("-").isdigit():
            out[k] = int(v)
    return out


class GraphBenchSetup(NamedTuple):
    """What a benchmark that runs the node graph needs: the demo tool, its working folder and
    the node parameter overrides."""

    exe: str
    work: Path
    overrides: dict


def graph_bench_setup(work_dir: str | None, checkpoint: str,
                      threads: int) -> GraphBenchSetup | dict:
    """The demo tool (:data:`DEMO_EXECUTABLE`), the working folder (default ``data/bench``,
    created) and the overrides (captioner threads, checkpoint); ``{"skipped": reason}`` without
    the ROS 2 workspace."""
    exe = shutil.which(DEMO_EXECUTABLE)
    if exe is None:
        return {"skipped": f"ROS 2 workspace not available ({DEMO_EXECUTABLE} not on PATH); "
                           "run `source env.sh`"}
    work = Path(work_dir or (data_dir() / "bench"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = {"vlm_captioner.num_threads": int(threads)}
    if checkpoint:
        overrides["vlm_captioner.checkpoint"] = os.path.abspath(checkpoint)
    return GraphBenchSetup(exe, work, overrides)


def run_demo(exe: str, bag: str, out_dir: str, overrides: dict, rate: float = 1.0,
             drain: float = _DRAIN_S, log: Callable[[str], None] | None = None,
             single_process: bool = False, env: dict[str, str] | None = None) -> DemoRun:
    """``edge_vlm_demo BAG --out-dir OUT_DIR ...``: start the graph and the recorder, play the
    bag, drain, stop. Its progress lines (``demo: ...``) go to ``log``; ``env``: the tool's
    environment (default this process's). Raises RuntimeError when the graph could not run (no
    ``summary.json``, or exit code 2); a run without captions is a result."""
    cmd = [exe, str(bag), "--out-dir", out_dir, "--rate", str(rate), "--drain", str(drain)]
    if single_process:
        cmd.append("--single-process")
    for k, v in overrides.items():
        cmd += ["-p", f"{k}={v}"]
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=env) as proc:
        for line in proc.stdout:
            tail.append(line)
            if log is not None and line.startswith("demo:"):
                log(line.rstrip("\n"))
    summary_path = os.path.join(out_dir, "summary.json")
    if proc.returncode == 2 or not os.path.isfile(summary_path):
        raise RuntimeError(f"{os.path.basename(exe)} exited with code {proc.returncode}:\n"
                           + "".join(tail))
    with open(summary_path) as fh:
        summary = json.load(fh)
    return DemoRun(records=summary["records"], logs=summary["logs"],
                   exit_codes=summary["exit_codes"], player_rc=summary["player_rc"],
                   summary=summary)


def _wait_series(records: list[dict]) -> Series:
    """The captioner's wait stage (frame close -> processing start, ms) by arrival time."""
    out = Series([], [])
    for r in records:
        if r.get("stream") == "compute_cost":
            d = r.get("data") or {}
            stages = dict(zip(d.get("stage_names", []), d.get("stage_latency_ms", [])))
            if "wait" in stages:
                out.times.append(r["recv_ns"] / 1e9)
                out.values.append(float(stages["wait"]))
    return out


def _caption_latency_series(records: list[dict], rows: list[CaptionRow]) -> Series:
    """Packet -> caption latency (ms) by caption arrival time."""
    caps = sorted((r for r in records if r.get("stream") == "caption"), key=lambda r: r["recv_ns"])
    recv = {r["stamp_ns"]: r["recv_ns"] / 1e9 for r in caps}
    out = Series([], [])
    for r in rows:
        if r.packet_to_caption_ms is not None and r.stamp_ns in recv:
            out.times.append(recv.get(r.stamp_ns))
            out.values.append(r.packet_to_caption_ms)
    return out


def _backlog_grows(p2c: Trend, dropped: int | None) -> bool | None:
    """:data:`BACKLOG_RULE` (None when the run was too short to tell)."""
    grows = None
    if p2c.slope_per_s is not None:
        f, last = p2c.first_quarter_p50, p2c.last_quarter_p50
        grows = bool(last > 1.5 * f and last - f > 20.0)
    if dropped:          # the bounded queue was full: the backlog hit its cap (latency plateaus)
        grows = True
    return grows


def _expected_frames(records: list[dict]) -> int | None:
    """Frames the graph should have captioned: the bag's sensor span / period."""
    ev_stamps = sorted(r["stamp_ns"] for r in records
                       if r.get("stream") == "events" and r.get("stamp_ns"))
    if not ev_stamps:
        return None
    return int((ev_stamps[-1] - ev_stamps[0]) // _FRAME_PERIOD_NS) + 1


def figures(run: DemoRun) -> dict:
    """The e2e figures of a run's records and captioner log."""
    records = read_jsonl(run.records)
    rows, summary = summarize(records)
    p2c = trend(*_caption_latency_series(records, rows))
    waits = _wait_series(records)
    nodes = run.summary.get("node_counters") or {}
    counters = nodes.get("vlm_captioner") or shutdown_counters(
        os.path.join(run.logs, "vlm_captioner.log"), "vlm_captioner")
    dropped = counters.get("dropped")
    memory = run.summary.get("graph_memory") or {}
    return {
        "frames_processed": summary.frames_processed,
        "frames_expected_approx": _expected_frames(records),
        "frame_latency_ms_p50": summary.latency_ms_p50,
        "frame_latency_ms_p95": summary.latency_ms_p95,
        "caption_latency_ms_p50": summary.packet_to_caption_ms_p50,
        "caption_latency_ms_p95": summary.packet_to_caption_ms_p95,
        "caption_latency_trend": asdict(p2c), "wait_ms_trend": asdict(trend(*waits)),
        "wait_ms_p95": float(np.percentile(waits.values, 95)) if waits.values else None,
        "backlog_grows": _backlog_grows(p2c, dropped), "backlog_rule": BACKLOG_RULE,
        "frames_dropped": dropped, "captioner_counters": counters,
        "packets_lost": run.summary.get("packets_lost"),
        "packets_lost_by_node": run.summary.get("packets_lost_by_node"),
        "graph_rss_mb": memory.get("rss_mb"),
        "graph_processes": len(memory.get("processes") or {}),
        "graph_cpu_s": run.summary.get("graph_cpu_s_bag"),
        "single_process": run.summary.get("single_process"),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "gesture_accuracy": summary.gesture_accuracy,
        "mean_active_token_fraction": summary.mean_active_token_fraction,
        "flops_saved_fraction": summary.flops_saved_fraction,
    }


def _one_ms_run(exe: str, work: Path, quick: bool, overrides: dict, rate: float,
                log: Callable[[str], None] | None) -> dict:
    """The simulated recording in 1 ms EventPackets through the single-process graph."""
    bag = e2e_bag(work, labels=(2, 8) if quick else range(1, 12), clip_s=0.5 if quick else 1.0,
                  packet_ms=1.0)
    out_dir = str(work / "e2e_last_1ms")
    shutil.rmtree(out_dir, ignore_errors=True)
    if log is not None:
        log("bench: end to end, 1 ms packets, single process ...")
    run = run_demo(exe, bag, out_dir, overrides, rate=rate, drain=_DRAIN_S, log=log,
                   single_process=True)
    return {"bag": bag, "packet_ms": 1.0, "out_dir": out_dir, "exit_codes": run.exit_codes,
            "player_rc": run.player_rc, **figures(run)}


def latency_runs(values: list[float | None]) -> dict:
    """``frame_latency_ms_p95`` over repeated graph runs: every run's value, the median run's
    index (the lower median, an actual run: its figures are the headline ones), min and max
    (the spread)."""
    ok = [(v, i) for i, v in enumerate(values) if v is not None]
    if not ok:
        return {"runs": len(values), "values": list(values), "median": None, "min": None,
                "max": None, "median_run": None}
    ranked = sorted(ok)
    v, i = ranked[(len(ranked) - 1) // 2]
    return {"runs": len(values), "values": list(values), "median": v, "min": ranked[0][0],
            "max": ranked[-1][0], "median_run": i}


def _graph_run(exe: str, bag: str, out_dir: str, overrides: dict, rate: float,
               log: Callable[[str], None] | None) -> dict:
    """One run of the graph (one process per node) on ``bag``: its figures."""
    shutil.rmtree(out_dir, ignore_errors=True)
    t0 = time.perf_counter()
    run = run_demo(exe, bag, out_dir, overrides, rate=rate, drain=_DRAIN_S, log=log)
    return {"wall_s": time.perf_counter() - t0, "out_dir": out_dir, "exit_codes": run.exit_codes,
            "player_rc": run.player_rc, **figures(run)}


def bench_e2e(bag: str | None = None, checkpoint: str = "", threads: int = 1, rate: float = 1.0,
              work_dir: str | None = None, quick: bool = False,
              log: Callable[[str], None] | None = None, packet_ms: float = 10.0,
              one_ms: bool = True, runs: int | None = None) -> dict:
    """Play a simulated DVS128 bag at ``rate`` (1 = real time) through the node graph (one
    process per node) ``runs`` times (default 3, 1 with ``quick``); the figures are the median
    run's (by ``frame_latency_ms_p95``), ``frame_latency_ms_p95_runs`` holds every run's value
    and the spread (:func:`latency_runs`). With ``one_ms``, the same recording in 1 ms
    EventPackets through the single-process graph once (the ``*_1ms_packets`` figures and
    ``graph_rss_mb_single``, its details under ``one_ms_packets``).

    Needs the ROS 2 workspace (``source env.sh``: :data:`DEMO_EXECUTABLE` on PATH); returns
    ``{"skipped": reason}`` without it.
    """
    setup = graph_bench_setup(work_dir, checkpoint, threads)
    if isinstance(setup, dict):
        return setup
    exe, work, overrides = setup.exe, setup.work, setup.overrides
    runs = max(1, int(runs if runs is not None else (1 if quick else 3)))
    bag_default = bag is None
    if bag is None:
        bag = e2e_bag(work, labels=(2, 8) if quick else range(1, 12),
                      clip_s=0.5 if quick else 1.0, packet_ms=packet_ms)
    # records and node logs: e2e_last (the first run), e2e_last_run2, ...
    done = [_graph_run(exe, str(bag), str(work / ("e2e_last" + (f"_run{i + 1}" if i else ""))),
                       overrides, rate, log) for i in range(runs)]
    spread = latency_runs([r["frame_latency_ms_p95"] for r in done])
    median = done[spread["median_run"] if spread["median_run"] is not None else 0]
    out = {"bag": str(bag), "rate": rate, "threads": threads,
           "packet_ms": packet_ms if bag_default else None, **median,
           "frame_latency_ms_p95_runs": spread,
           "wall_s_runs": [r["wall_s"] for r in done]}
    out["graph_rss_mb_multi"] = out["graph_rss_mb"]
    if one_ms:
        one = _one_ms_run(exe, work, quick, overrides, rate, log)
        out.update({k: one.get(f) for k, f in ONE_MS_KEYS.items()})
        out["graph_rss_mb_single"] = one.get("graph_rss_mb")
        out["one_ms_packets"] = one
    return out
