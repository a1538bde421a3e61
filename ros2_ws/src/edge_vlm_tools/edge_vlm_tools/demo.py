"""edge_vlm_demo: run the node graph on a bag and report captions, compute and accuracy.

Usage::

    edge_vlm_demo BAG [--graph GRAPH.yaml] [--checkpoint PATH] [-p [node.]name=value ...]
                  [--single-process] [--rate R] [--drain S] [--every N] [--out-dir DIR]
                  [--summary-json PATH]
    edge_vlm_demo BAG --simulate [--labels 2,8] [--seed S]   # first write a simulated bag at BAG

Steps: start the graph through the bringup's launch file (``edge_vlm_run``, i.e.
``edge_vlm_tools.runner``; ``--single-process``: every node in one process; node logs in
OUT/logs), the recorder (``edge_vlm_record`` -> OUT/records.jsonl), wait until every node is
ready, play the bag (``edge_vlm_play``, once every event subscriber matched), sampling the
graph's memory, wait for the end of the bag and until no caption arrived for ``--drain``
seconds, stop everything (SIGINT), then print per-frame lines and a summary (also written as
JSON). Exit code 1 when no caption arrived, 2 when the graph could not start.

Dropped work, from the nodes' shutdown counters: ``frames dropped`` = frames the captioner
dropped by backpressure (``max_pending_frames``); ``packets lost`` = EventPackets a node never
received (sequence gaps, ``missing_packets``). ``graph RSS`` = the summed resident memory of
the graph's processes at the end of the bag, with the CPU time each used while the bag played.

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
from dataclasses import asdict, dataclass, field

from edge_vlm.bench.e2e import shutdown_counters
from edge_vlm.cores.graph import load_graph, overrides_to_yaml, parse_overrides
from edge_vlm.evaluation.records import read_jsonl, summarize
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.report import fmt_value
from edge_vlm.sim import simulate_recording
from edge_vlm.topics import TOPICS
from edge_vlm_ros.lifeline import exec_prefix, isolated_env
from edge_vlm_tools.proc import GraphMemory, graph_memory
from edge_vlm_tools.runner import GraphOptions, find_executable, stop_graph

#: the streams the demo records
RECORDED = ("caption", "compute_cost", "ground_truth", "route", "token_mask", "events")
#: longest drain after the bag (s)
MAX_DRAIN_S = 60.0
#: how often the graph's memory is sampled while the bag plays (s)
RSS_EVERY_S = 0.5
#: the recorded streams each node package publishes (the recorder must have found their
#: publishers before the bag plays)
OUTPUTS = {"sttf_perception": ("token_mask",), "anc_router": ("route",),
           "vlm_captioner": ("caption", "compute_cost")}
#: logs in OUT/logs that are not the graph's
TOOL_LOGS = ("recorder.log", "player.log", "runner.log")


@dataclass
class BagRun:
    """What :func:`run_on_bag` left: the recorder's JSON lines, the node logs, exit codes, the
    nodes' shutdown counters and the graph's memory at the end of the bag."""

    records: str
    logs: str
    exit_codes: dict[str, int]
    player_rc: int | None
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    memory: GraphMemory | None = None
    cpu_s_bag: dict[str, float] = field(default_factory=dict)   # per process, while it played


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


def _node_logs(logs: str) -> list[str]:
    """The graph's logs in ``logs`` (one per node, or the single process's)."""
    return sorted(os.path.join(logs, f) for f in os.listdir(logs)
                  if f.endswith(".log") and f not in TOOL_LOGS)


def _not_ready(names: list[str], logs: str) -> list[str]:
    """The nodes of ``names`` that did not log ``ready:`` yet."""
    text = "".join(_tail(p, 10**7) for p in _node_logs(logs))
    return [n for n in names if f"{n}]: ready:" not in text]


def _waiting_for(names: list[str], outputs: list[str], logs: str) -> list[str]:
    """What the graph and the recorder still lack before the bag can play: nodes that did not
    log ``ready:``, streams whose publisher the recorder did not find."""
    rec = _tail(os.path.join(logs, "recorder.log"), 10**7)
    if "recording" not in rec:
        return ["recorder"]
    return _not_ready(names, logs) + [f"recorder <- {s}" for s in outputs
                                      if f"publisher of {s}" not in rec]


def wait_ready(names: list[str], runner, recorder, logs: str, timeout: float = 90.0,
               outputs: list[str] = ()) -> None:
    """Wait until every node of ``names`` logged 'ready:' and the recorder found a publisher
    of each stream of ``outputs``; raise RuntimeError otherwise (the runner or the recorder
    ended, or the time is up)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p, log in ((runner, "runner.log"), (recorder, "recorder.log")):
            if p.poll() is not None:
                nodes = "".join(f"\n--- {os.path.basename(q)}\n{_tail(q, 1000)}"
                                for q in _node_logs(logs))
                raise RuntimeError(f"{p.node_name} exited with code {p.returncode}:\n"
                                   f"{_tail(os.path.join(logs, log))}{nodes}")
        if not _waiting_for(names, outputs, logs):
            time.sleep(0.5)   # discovery between the nodes and the recorder
            return
        time.sleep(0.1)
    raise RuntimeError(f"graph not ready after {timeout:.0f} s "
                       f"(waiting for {_waiting_for(names, outputs, logs)})")


def _start(name: str, cmd: list[str], log_path: str, env: dict) -> subprocess.Popen:
    """A tool process under the lifeline, in its own session, its output to ``log_path``."""
    with open(log_path, "wb") as fh:
        p = subprocess.Popen(exec_prefix() + cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                             start_new_session=True)
    p.node_name = name
    return p


def _runner_args(opts: GraphOptions) -> list[str]:
    """``edge_vlm_run`` options for ``opts`` (the runner starts the graph through launch)."""
    args = ["--log-dir", os.path.abspath(opts.log_dir or ".")]
    if opts.graph:
        args += ["--graph", os.path.abspath(opts.graph)]
    if opts.overrides:
        args += ["--params", overrides_to_yaml(opts.overrides)]
    if opts.single_process:
        args.append("--single-process")
    return args


def _player_cmd(bag: str, rate: float, subscribers: int, env: dict) -> list[str]:
    """The bag player; it plays once ``subscribers`` subscriptions to the events matched."""
    return (_tool("edge_vlm_play", "edge_vlm_tools.player", env)
            + [bag, "--rate", str(rate), "--wait-for-subscribers", "1",
               # every frame node subscribes to the events (the single-process graph once), and
               # so does the recorder: play only once all of them matched (else the first
               # seconds of events can miss one node, e.g. sttf_perception, and its TokenMasks
               # time out)
               "--wait-for", f"{TOPICS['events'].name}={subscribers}"])


def _play(player, runner, timeout: float | None, log) -> tuple[GraphMemory | None, dict]:
    """Wait for the player (at most ``timeout`` s), sampling the graph's memory: the last
    sample taken while the bag played (the graph in steady state), and the CPU time each
    process used meanwhile (s)."""
    end = None if timeout is None else time.monotonic() + timeout
    first = memory = None
    while player.poll() is None:
        if end is not None and time.monotonic() > end:
            log("demo: player timed out; stopping it")
            stop_graph([player])
            break
        sample = graph_memory(runner.pid)
        if sample.processes:
            first, memory = first or sample, sample
        time.sleep(RSS_EVERY_S)
    if memory is None:
        return None, {}
    return memory, {k: round(v - first.cpu_s.get(k, 0.0), 2) for k, v in memory.cpu_s.items()}


def _drain(records: str, runner, drain: float) -> None:
    """Wait until no new caption arrived for ``drain`` seconds (at most :data:`MAX_DRAIN_S`),
    or the graph ended."""
    last_n, last_change = -1, time.monotonic()
    hard_end = time.monotonic() + MAX_DRAIN_S
    while time.monotonic() < hard_end:
        n = sum(1 for r in read_jsonl(records) if r.get("stream") == "caption")
        if n != last_n:
            last_n, last_change = n, time.monotonic()
        elif time.monotonic() - last_change >= drain:
            break
        if runner.poll() is not None:
            break
        time.sleep(0.2)


def _node_exit_codes(logs: str) -> dict[str, int]:
    """Each node process's exit code, from the runner's last ``exit codes:`` line."""
    lines = [ln for ln in _tail(os.path.join(logs, "runner.log"), 10**6).splitlines()
             if ln.startswith("edge_vlm_run: exit codes:")]
    pairs = (t.partition("=") for t in (lines[-1].split(":", 2)[2].split() if lines else []))
    return {k: int(v) for k, _, v in pairs if v.lstrip("-").isdigit()}


def node_counters(names: list[str], logs: str) -> dict[str, dict[str, int]]:
    """Each node's shutdown counters (packets, missing_packets, dropped, ...) from its log."""
    out = {}
    for name in names:
        for path in _node_logs(logs):
            c = shutdown_counters(path, name)
            if c:
                out[name] = c
    return out


def run_on_bag(bag: str, out_dir: str, *, graph: str | None = None, overrides: dict | None = None,
               rate: float = 1.0, drain: float = 3.0, env: dict | None = None,
               ready_timeout: float = 90.0, play_timeout: float | None = None,
               single_process: bool = False, log=print) -> BagRun:
    """Start the graph (``edge_vlm_run``: the bringup's launch file) and the recorder, play
    ``bag``, drain, stop. The records are the recorder's JSON lines (see
    :mod:`edge_vlm_tools.recorder`). Graph, recorder and player share one ``ROS_DOMAIN_ID`` of
    their own unless ``env`` sets one (:func:`isolated_env`)."""
    env = isolated_env(env)
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    records = os.path.join(out_dir, "records.jsonl")
    opts = GraphOptions(graph, dict(overrides or {}), single_process=single_process,
                        log_dir=logs)
    specs = load_graph(graph, opts.overrides)
    names = [s.name for s in specs]
    outputs = [o for s in specs for o in OUTPUTS.get(s.package, ()) if o in RECORDED]
    runner = recorder = player = memory = None
    cpu: dict[str, float] = {}
    codes: dict[str, int] = {}
    try:
        runner = _start("edge_vlm_run", _tool("edge_vlm_run", "edge_vlm_tools.runner", env)
                        + _runner_args(opts), os.path.join(logs, "runner.log"), env)
        log(f"demo: started {', '.join(names)}{' in one process' if single_process else ''} "
            f"through launch (logs in {logs})")
        recorder = _start("recorder", _tool("edge_vlm_record", "edge_vlm_tools.recorder", env)
                          + [records, "--topics", *RECORDED], os.path.join(logs, "recorder.log"),
                          env)
        wait_ready(names, runner, recorder, logs, ready_timeout, outputs)
        log("demo: graph ready; playing " + bag)
        subscribers = (1 if single_process else len(names)) + 1     # + the recorder
        player = _start("player", _player_cmd(bag, rate, subscribers, env),
                        os.path.join(logs, "player.log"), env)
        memory, cpu = _play(player, runner, play_timeout, log)
        log(f"demo: bag played (player exit {player.returncode}); draining {drain:.1f} s")
        _drain(records, runner, drain)
    finally:
        for p, timeout in ((runner, 25.0), (recorder, 10.0)):
            if p is not None:
                codes.update(stop_graph([p], timeout))
        codes.update(_node_exit_codes(logs))
    return BagRun(records, logs, codes, None if player is None else player.returncode,
                  node_counters(names, logs), memory, cpu)


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
    w(f"  frames dropped            {_f(s.get('frames_dropped'), 'd')} by the captioner's "
      f"backpressure; packets lost {_f(s.get('packets_lost'), 'd')} ("
      + ", ".join(f"{k} {v}" for k, v in (s.get('packets_lost_by_node') or {}).items())
      + ")\n")
    mem = s.get("graph_memory") or {}
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in (s.get("graph_cpu_s_bag") or {}).items())
    w(f"  graph RSS                 {_f(mem.get('rss_mb'), '.0f')} MB in "
      f"{len(mem.get('processes') or {})} process(es)"
      f"{' (single process)' if s.get('single_process') else ''}; CPU s while the bag "
      f"played: {cpu or '-'}\n")


def dropped_summary(counters: dict[str, dict[str, int]]) -> dict:
    """The summary's dropped work: the captioner's backpressure drops, each node's lost
    packets (None where a node left no counters)."""
    lost = {k: c.get("missing_packets") for k, c in counters.items()}
    return {"frames_dropped": (counters.get("vlm_captioner") or {}).get("dropped"),
            "packets_lost": max((v for v in lost.values() if v is not None), default=None),
            "packets_lost_by_node": lost, "node_counters": counters}


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
    ap.add_argument("--single-process", action="store_true",
                    help="every node in one process and one executor (launch single_process)")
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
                         drain=args.drain, single_process=args.single_process)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"edge_vlm_demo: error: {exc}", file=sys.stderr)
        return 2
    rows, result = summarize(read_jsonl(res.records))
    summary = result.to_dict()
    summary.update(bag=os.path.abspath(args.bag), exit_codes=res.exit_codes,
                   player_rc=res.player_rc, records=res.records, logs=res.logs,
                   single_process=args.single_process,
                   graph_memory=asdict(res.memory) if res.memory else None,
                   graph_cpu_s_bag=res.cpu_s_bag,
                   **dropped_summary(res.counters))
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
