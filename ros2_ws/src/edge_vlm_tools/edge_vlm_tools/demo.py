"""edge_vlm_demo: run the node graph on a bag and report captions, compute and accuracy.

Usage::

    edge_vlm_demo BAG [--graph GRAPH.yaml] [--checkpoint PATH] [-p [node.]name=value ...]
                  [--rate R] [--drain S] [--every N] [--out-dir DIR] [--summary-json PATH]
    edge_vlm_demo BAG --simulate [--labels 2,8] [--seed S]   # first write a simulated bag at BAG

Steps: start the graph (``edge_vlm_tools.runner``, node logs in OUT/logs), the
recorder (``edge_vlm_record`` -> OUT/records.jsonl), wait until every node is
ready, play the bag (``edge_vlm_play``, once every event subscriber matched), wait for the
end of the bag and until no caption arrived for ``--drain`` seconds, stop
everything (SIGINT), then print per-frame lines and a summary (also written as
JSON). Exit code 1 when no caption arrived, 2 when the graph could not start.

Latencies: ``processing`` = the captioner's per-frame ``total`` stage (decode +
model); ``packet->caption`` = wall time from the arrival (at the recorder) of
the newest EventPacket that fed a frame to the arrival of its caption (both
seen by the recorder process, so the same clock).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from edge_vlm.cores.graph import load_graph, parse_overrides
from edge_vlm.evaluation.records import read_jsonl, summarize
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.report import fmt_value
from edge_vlm.sim import simulate_recording
from edge_vlm.topics import TOPICS
from edge_vlm_ros.lifeline import exec_prefix, isolated_env
from edge_vlm_tools.runner import find_executable, start_graph, stop_graph

#: the graph's nodes that cut frames (each subscribes to the events)
FRAME_NODES = ("sttf_perception", "anc_router", "vlm_captioner")
#: the streams the demo records
RECORDED = ("caption", "compute_cost", "ground_truth", "route", "token_mask", "events")
#: longest drain after the bag (s)
MAX_DRAIN_S = 60.0


@dataclass
class BagRun:
    """What :func:`run_on_bag` left: the recorder's JSON lines, the node logs, exit codes."""

    records: str
    logs: str
    exit_codes: dict[str, int]
    player_rc: int | None


# ------------------------------------------------------------------------- helpers
def make_sim_bag(path: str, labels=(2, 8), seed: int = 1, subject: int = 3,
                 lighting: str = "lab", clip_duration_s: float = 1.0, gap_s: float = 0.3,
                 with_frames: bool = True) -> str:
    """Write a small simulated bag (events, RGB frames, ground truth) with ``edge_vlm.sim``."""
    rec = simulate_recording(subject, lighting, seed=seed, labels=list(labels),
                             clip_duration_s=clip_duration_s, gap_s=gap_s, with_frames=with_frames)
    write_bag(path, events=rec.events, frames=rec.frames if with_frames else None,
              frame_stamps_ns=rec.frame_stamps_ns if with_frames else None,
              ground_truth=[c.ground_truth() for c in rec.clips], overwrite=True)
    return path


def _tool(exe: str, module: str, env: dict) -> list[str]:
    """The command of a tool of this package: its executable, else ``python -m module``."""
    try:
        return [find_executable("edge_vlm_tools", exe, env)]
    except FileNotFoundError:
        return [sys.executable, "-m", module]


def _tail(path: str | None, n: int = 2000) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as fh:
        return fh.read()[-n:]


def _event_subscribers(procs) -> int:
    """How many of the started graph's nodes subscribe to the event topic."""
    return sum(getattr(p, "node_name", "") in FRAME_NODES for p in procs)


def wait_ready(procs, recorder, recorder_log: str, timeout: float = 90.0) -> None:
    """Wait until every node logged 'ready:' and the recorder subscribed; raise RuntimeError
    otherwise."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs + [recorder]:
            if p.poll() is not None:
                log = getattr(p, "log_path", None) or recorder_log
                raise RuntimeError(f"{getattr(p, 'node_name', 'recorder')} exited with code "
                                   f"{p.returncode}:\n{_tail(log)}")
        nodes_ready = all("ready:" in _tail(p.log_path, 10**7) for p in procs)
        if nodes_ready and "recording" in _tail(recorder_log, 10**7):
            time.sleep(0.5)   # discovery between the nodes and the recorder
            return
        time.sleep(0.1)
    missing = [p.node_name for p in procs if "ready:" not in _tail(p.log_path, 10**7)]
    raise RuntimeError(f"graph not ready after {timeout:.0f} s "
                       f"(waiting for {missing or ['recorder']})")


def _start_recorder(records: str, log_path: str, env: dict) -> subprocess.Popen:
    with open(log_path, "wb") as fh:
        recorder = subprocess.Popen(
            exec_prefix() + _tool("edge_vlm_record", "edge_vlm_tools.recorder", env)
            + [records, "--topics", *RECORDED],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    recorder.node_name = "recorder"
    return recorder


def _start_player(bag: str, rate: float, subscribers: int, log_path: str,
                  env: dict) -> subprocess.Popen:
    """The bag player; it plays once ``subscribers`` subscriptions to the events matched."""
    with open(log_path, "wb") as fh:
        return subprocess.Popen(
            exec_prefix() + _tool("edge_vlm_play", "edge_vlm_tools.player", env)
            + [bag, "--rate", str(rate), "--wait-for-subscribers", "1",
               # every node of the graph that cuts frames subscribes to the events, and so does
               # the recorder: play only once all of them matched (else the first seconds of
               # events can miss one node, e.g. sttf_perception, and its TokenMasks time out)
               "--wait-for", f"{TOPICS['events'].name}={subscribers}"],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _drain(records: str, procs, drain: float) -> None:
    """Wait until no new caption arrived for ``drain`` seconds (at most :data:`MAX_DRAIN_S`),
    or every node ended."""
    last_n, last_change = -1, time.monotonic()
    hard_end = time.monotonic() + MAX_DRAIN_S
    while time.monotonic() < hard_end:
        n = sum(1 for r in read_jsonl(records) if r.get("stream") == "caption")
        if n != last_n:
            last_n, last_change = n, time.monotonic()
        elif time.monotonic() - last_change >= drain:
            break
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)


def run_on_bag(bag: str, out_dir: str, *, graph: str | None = None, overrides: dict | None = None,
               rate: float = 1.0, drain: float = 3.0, env: dict | None = None,
               ready_timeout: float = 90.0, play_timeout: float | None = None,
               log=print) -> BagRun:
    """Start graph + recorder, play ``bag``, drain, stop. The records are the recorder's JSON
    lines (see :mod:`edge_vlm_tools.recorder`). Graph, recorder and player share one
    ``ROS_DOMAIN_ID`` of their own unless ``env`` sets one (:func:`isolated_env`)."""
    env = isolated_env(env)
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    records = os.path.join(out_dir, "records.jsonl")
    rec_log = os.path.join(logs, "recorder.log")
    procs, recorder, player = [], None, None
    try:
        procs = start_graph(graph, overrides, env=env, log_dir=logs)
        log(f"demo: started {', '.join(p.node_name for p in procs)} (logs in {logs})")
        recorder = _start_recorder(records, rec_log, env)
        wait_ready(procs, recorder, rec_log, ready_timeout)
        log("demo: graph ready; playing " + bag)
        player = _start_player(bag, rate, _event_subscribers(procs) + 1,
                               os.path.join(logs, "player.log"), env)
        try:
            player.wait(timeout=play_timeout)
        except subprocess.TimeoutExpired:
            log("demo: player timed out; stopping it")
            player.name = "player"
            stop_graph([player])
        log(f"demo: bag played (player exit {player.returncode}); draining {drain:.1f} s")
        _drain(records, procs, drain)
    finally:
        codes = stop_graph(procs) if procs else {}
        if recorder is not None:
            codes.update({"recorder": stop_graph([recorder])["recorder"]})
    return BagRun(records, logs, codes, None if player is None else player.returncode)


def _f(v, spec: str, none: str = "-") -> str:
    return fmt_value(v, spec=spec, none=none)


def print_report(rows: list, summary: dict, every: int = 0, out=sys.stdout) -> None:
    """Every ``every``-th row (:class:`~edge_vlm.evaluation.records.CaptionRow`) and the
    summary."""
    if every <= 0:
        every = max(1, -(-len(rows) // 40))
    w = out.write
    w(f"{'frame':>7} {'gest':>4} {'gt':>3} {'scene':>13} {'tokens':>8} "
      f"{'MFLOPs exec/dense':>19} {'lat ms':>7} {'p2c ms':>7}  caption\n")
    for i, r in enumerate(rows):
        if i % every and i != len(rows) - 1:
            continue
        tok = f"{r.active_tokens}/{r.total_tokens}" if r.total_tokens else "-"
        fl = (f"{r.flops_executed / 1e6:.1f}/{r.flops_dense / 1e6:.1f}"
              if r.flops_dense else "-")
        w(f"{r.frame:>7} {r.label:>4} {_f(r.gt_label, 'd'):>3} {r.scene or '-':>13} {tok:>8} "
          f"{fl:>19} "
          f"{_f(r.latency_ms, '.1f'):>7} {_f(r.packet_to_caption_ms, '.1f'):>7}  {r.text}\n")
    s = summary
    w("\nsummary\n")
    w(f"  frames processed          {s['frames_processed']} "
      f"(compute-cost messages {s['compute_costs']})\n")
    w(f"  mean active-token frac.   {_f(s['mean_active_token_fraction'], '.3f')}\n")
    w(f"  FLOPs saved vs dense      {_f(s['flops_saved_fraction'], '.1%')}\n")
    w(f"  latency/frame p50 / p95   {_f(s['latency_ms_p50'], '.1f')} / "
      f"{_f(s['latency_ms_p95'], '.1f')} ms\n")
    w(f"  packet->caption p50 / p95 {_f(s['packet_to_caption_ms_p50'], '.1f')} / "
      f"{_f(s['packet_to_caption_ms_p95'], '.1f')} ms\n")
    acc = s["gesture_accuracy"]
    w(f"  gesture accuracy          {_f(acc, '.1%', 'n/a (no ground truth)')} "
      f"({s['gesture_frames_correct']}/{s['gesture_frames_scored']} frames inside "
      f"{s['ground_truth_segments']} ground-truth segments)\n")
    if s.get("scene_frames_scored"):
        w(f"  'no gesture' on scenes    {s['scene_frames_no_gesture']}/{s['scene_frames_scored']} "
          "frames of the scenes without a gesture\n")
    w(f"  caption names the label   {_f(s.get('caption_label_consistency'), '.1%')} of frames\n")
    w(f"  input modes               {s['input_modes']}; "
      f"distinct captions {s['distinct_captions']}\n")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge_vlm_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("bag", help="rosbag2 folder to play")
    ap.add_argument("--simulate", action="store_true",
                    help="first write a small simulated bag at BAG")
    ap.add_argument("--labels", default="2,8",
                    help="gesture labels of the simulated bag (default 2,8)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the simulated bag")
    ap.add_argument("--graph", default=None,
                    help="graph file (default config/graph.yaml of edge_vlm_bringup)")
    ap.add_argument("--checkpoint", default=None,
                    help="captioner checkpoint (default: the shipped one)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="[NODE.]NAME=VALUE")
    ap.add_argument("--rate", type=float, default=1.0, help="playback rate (default 1)")
    ap.add_argument("--drain", type=float, default=3.0,
                    help="stop after no caption for SEC s (default 3)")
    ap.add_argument("--every", type=int, default=0,
                    help="print every Nth frame (default: about 40 lines)")
    ap.add_argument("--out-dir", default=None,
                    help="records, logs and summary (default: a temp dir)")
    ap.add_argument("--summary-json", default=None,
                    help="summary JSON path (default OUT/summary.json)")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    try:
        overrides = parse_overrides(args.param)
        if args.checkpoint:
            overrides["vlm_captioner.checkpoint"] = os.path.abspath(args.checkpoint)
            overrides["sttf_perception.checkpoint"] = os.path.abspath(args.checkpoint)
        load_graph(args.graph, overrides)          # validate before starting anything
    except (ValueError, OSError) as exc:
        print(f"edge_vlm_demo: error: {exc}", file=sys.stderr)
        return 2
    if args.simulate:
        labels = [int(x) for x in args.labels.split(",") if x.strip()]
        make_sim_bag(args.bag, labels, args.seed)
        print(f"demo: wrote simulated bag {args.bag} (labels {labels})")
    if not os.path.exists(args.bag):
        print(f"edge_vlm_demo: error: bag {args.bag} not found", file=sys.stderr)
        return 2
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="edge_vlm_demo_")
    try:
        res = run_on_bag(args.bag, out_dir, graph=args.graph, overrides=overrides, rate=args.rate,
                         drain=args.drain)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"edge_vlm_demo: error: {exc}", file=sys.stderr)
        return 2
    rows, result = summarize(read_jsonl(res.records))
    summary = result.to_dict()
    summary.update(bag=os.path.abspath(args.bag), exit_codes=res.exit_codes,
                   player_rc=res.player_rc, records=res.records, logs=res.logs)
    print()
    print_report(rows, summary, args.every)
    path = args.summary_json or os.path.join(out_dir, "summary.json")
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"  summary JSON              {path}")
    if not rows:
        print("edge_vlm_demo: error: no captions arrived (see the node logs in " + res.logs + ")",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
