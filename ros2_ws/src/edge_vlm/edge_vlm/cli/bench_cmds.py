"""`edge-vlm bench {decode,sttf,anc,e2e,streams,multihost,all}`: the core benchmarks
(:mod:`edge_vlm.bench`).

``all`` prints the flat figures (``--json``: one JSON object) and writes
``docs/benchmarks.md`` (``--out``; ``--out ''`` skips it). ``e2e`` needs the ROS 2
workspace (``source env.sh``): it runs the graph with the workspace's ``edge_vlm_demo``;
``streams`` too (several graphs at once); ``multihost`` too (``edge_vlm_multihost``), as root
(network namespaces; docs/deploy.md).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile

from edge_vlm.bench.all import bench_all
from edge_vlm.bench.anc import bench_anc
from edge_vlm.bench.common import machine_info, utc_timestamp
from edge_vlm.bench.decode import bench_decode
from edge_vlm.bench.e2e import bench_e2e
from edge_vlm.bench.multihost import bench_multihost
from edge_vlm.bench.multistream import bench_streams
from edge_vlm.bench.report import to_json, write_markdown
from edge_vlm.bench.sttf import bench_sttf
from edge_vlm.evaluation.metrics import json_safe
from edge_vlm.inference.backend_cache import ENV as BACKEND_CACHE_ENV
from edge_vlm.paths import docs_dir


def command_line(args) -> str:
    """The `edge-vlm bench ...` command equivalent to ``args`` (for the report)."""
    parts = ["edge-vlm", "bench", args.what]
    if args.json:
        parts.append("--json")
    if args.threads != 1:
        parts += ["--threads", str(args.threads)]
    if args.repeats != 5:
        parts += ["--repeats", str(args.repeats)]
    if args.packet_ms != 10.0:
        parts += ["--packet-ms", f"{args.packet_ms:g}"]
    for flag, v in (("--checkpoint", args.checkpoint), ("--bag", args.bag), ("--out", args.out)):
        if v:
            parts += [flag, shlex.quote(str(v))]
    if args.what == "multihost" and getattr(args, "domain_id", 181) != 181:
        parts += ["--domain-id", str(args.domain_id)]
    parts += [f for f, on in (("--no-e2e", args.no_e2e), ("--no-anc", args.no_anc),
                              ("--no-peers", args.no_peers), ("--no-streams", args.no_streams),
                              ("--no-multihost", args.no_multihost), ("--quick", args.quick))
              if on]
    return " ".join(parts)


def _default_out() -> str:
    return str(docs_dir() / "benchmarks.md")


def _fresh_backend_cache() -> None:
    """Every bench run measures the per-CPU encoder backend choice afresh (its timings are part
    of the report): a new cache file for this run, shared with the graphs it starts (as a
    deployed machine's warm cache is), unless ``EDGE_VLM_BACKEND_CACHE`` is set."""
    if not os.environ.get(BACKEND_CACHE_ENV):
        os.environ[BACKEND_CACHE_ENV] = os.path.join(
            tempfile.mkdtemp(prefix="edge_vlm_bench_"), "backend_choice.json")


def _run(args, log) -> dict:
    """The benchmark ``args.what`` asks for."""
    _fresh_backend_cache()
    if args.what == "decode":
        return bench_decode(repeats=args.repeats, quick=args.quick)
    if args.what == "sttf":
        return bench_sttf(checkpoint=args.checkpoint, threads=args.threads,
                          repeats=args.repeats, quick=args.quick)
    if args.what == "anc":
        plot = None if args.quick else os.path.join(os.path.dirname(_default_out()),
                                                    "anc_budget_sweep.png")
        return bench_anc(checkpoint=args.checkpoint, threads=args.threads, quick=args.quick,
                         plot=plot)
    if args.what == "e2e":
        return bench_e2e(bag=args.bag, checkpoint=args.checkpoint, threads=args.threads,
                         quick=args.quick, log=log, packet_ms=args.packet_ms)
    if args.what == "multihost":
        return bench_multihost(quick=args.quick, domain_id=args.domain_id, log=log)
    if args.what == "streams":
        return bench_streams(checkpoint=args.checkpoint, threads=args.threads, quick=args.quick,
                             log=log)
    return bench_all(checkpoint=args.checkpoint, threads=args.threads, repeats=args.repeats,
                     quick=args.quick, e2e=not args.no_e2e, log=log, packet_ms=args.packet_ms,
                     anc_part=not args.no_anc, peers_part=not args.no_peers,
                     streams_part=not args.no_streams, multihost_part=not args.no_multihost)


def _print(res: dict, args) -> None:
    if args.json:
        print(to_json(res))
        return
    for k, v in res.items():
        if k != "details" and not isinstance(v, dict):
            print(f"{k:>36}: {v}")
    if args.what != "all":
        print(json.dumps(json_safe(res), indent=1))


def _skipped(res: dict, what: str) -> str | None:
    """Why a part did not run (``e2e``, ``streams``, ``multihost``, or a part of ``all``)."""
    if what in ("e2e", "streams", "multihost"):
        return res.get("skipped")
    if what == "all":
        details = res.get("details") or {}
        return next((details.get(p, {}).get("skipped") for p in ("e2e", "anc", "streams",
                                                                   "multihost")
                     if details.get(p, {}).get("skipped") not in (None, "disabled")), None)
    return None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_bench(args) -> int:
    if args.threads < 1 or args.repeats < 1:
        print("edge-vlm bench: --threads and --repeats must be >= 1", file=sys.stderr)
        return 2
    res = _run(args, _log)
    if args.what != "all":
        res = {"timestamp": utc_timestamp(), "machine": machine_info(args.threads), **res}
    out = args.out if args.out is not None else (_default_out() if args.what == "all" else "")
    if out and args.what == "all":
        res["report"] = write_markdown(res, out, command_line(args))
    _print(res, args)
    skipped = _skipped(res, args.what)
    if skipped and skipped != "disabled":
        # a benchmark that could not run is an error, not a silently missing figure
        print(f"edge-vlm bench {args.what}: a part was skipped: {skipped}", file=sys.stderr)
        return 1
    return 0
