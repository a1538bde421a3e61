"""``edge-vlm eval | coco | paper-table``: offline evaluation and the paper table.

Exit codes: 0 ok, 2 bad input or parameter, 3 missing/corrupt checkpoint.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from edge_vlm.cores.graph import parse_overrides
from edge_vlm.evaluation import coco
from edge_vlm.evaluation.evaluate import evaluate, markdown_report
from edge_vlm.evaluation.paper import NOT_MEASURED, load_bench, load_eval, relative_path, render
from edge_vlm.events import EventDecodeError
from edge_vlm.model.checkpoint import CheckpointError
from edge_vlm.paths import docs_dir


def _fail(cmd: str, msg: str, code: int = 2) -> int:
    print(f"edge-vlm {cmd}: error: {msg}", file=sys.stderr)
    return code


def run_eval(args) -> int:
    if args.max_frames is not None and args.max_frames < 1:
        return _fail("eval", "--max-frames must be >= 1")
    try:
        overrides = parse_overrides(args.param or [])
        result = evaluate(args.source, checkpoint=args.checkpoint, overrides=overrides,
                          max_frames=args.max_frames, progress=not args.no_progress,
                          out_dir=args.out,
                          graph=args.graph, meteor=not args.no_meteor)
    except CheckpointError as exc:
        return _fail("eval", str(exc), 3)
    except (FileNotFoundError, EventDecodeError, ValueError, OSError) as exc:
        return _fail("eval", f"{args.source}: {exc}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "per_frame"}))
    else:
        print(markdown_report(result))
        print(f"written: {', '.join(result['outputs'].values())}")
    return 0


def run_coco_cmd(args) -> int:
    if args.limit is not None and args.limit < 1 or args.threads < 1 or args.refresh_period < 0:
        return _fail("coco", "--limit and --threads must be >= 1, --refresh-period >= 0")
    torch.set_num_threads(args.threads)
    try:
        threshold = coco.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
        r = coco.run_coco(args.images, args.captions, checkpoint=args.checkpoint, limit=args.limit,
                          threshold=threshold, refresh_period=args.refresh_period,
                          decoding=args.decoding, meteor=not args.no_meteor,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    except (coco.CocoFormatError, FileNotFoundError) as exc:
        return _fail("coco", str(exc))
    except CheckpointError as exc:
        return _fail("coco", str(exc), 3)
    if args.out:
        r["outputs"] = coco.write_report(r, args.out)
    print(json.dumps(r, indent=1) if args.json else coco.markdown_report(r))
    return 0


def run_paper_table(args) -> int:
    """Missing files give "not measured yet" rows; an unreadable file is an error (2)."""
    bench_path = args.bench
    if bench_path is None:
        js = docs_dir() / "benchmarks.json"
        bench_path = str(js if js.is_file() else docs_dir() / "benchmarks.md")
    bench = eval_ = None
    prov: dict = {}
    try:
        if os.path.isfile(bench_path):
            bench, prov = load_bench(bench_path)
        else:
            print(f"edge-vlm paper-table: no bench file {bench_path}: bench rows read "
                  f"'{NOT_MEASURED}'",
                  file=sys.stderr)
        if os.path.isfile(args.eval_path):
            eval_ = load_eval(args.eval_path)
        else:
            print(f"edge-vlm paper-table: no eval file {args.eval_path}: eval rows read "
                  f"'{NOT_MEASURED}'",
                  file=sys.stderr)
    except (OSError, ValueError) as exc:
        return _fail("paper-table", str(exc))
    md = render(bench, eval_, bench_path=relative_path(bench_path),
                eval_path=relative_path(args.eval_path),
                bench_prov=prov)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md, encoding="utf-8")
        print(f"edge-vlm paper-table: wrote {args.out}", file=sys.stderr)
    else:
        print(md)
    return 0
