"""``edge-vlm eval``: offline evaluation of the node graph's logic on a bag or a DvsGesture folder.

Wiring (in ``edge_vlm.cli.build_parser``)::

    from . import eval_cli
    eval_cli.add_parser(sub)          # sets fn=eval_cli.run

Usage::

    edge-vlm eval SOURCE [--out DIR] [--checkpoint PT] [--max-frames N] [--json]
                  [-p [node.]name=value ...] [--no-meteor] [--no-progress]

Writes ``eval.json``, ``frames.jsonl``, ``eval.md``, ``confusion.png`` and
``active_fraction.png`` to ``--out`` and prints the Markdown tables (or, with
``--json``, the summary JSON) to stdout. Exit codes: 0 ok, 2 bad source or
parameter, 3 missing/corrupt checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys

DEFAULT_OUT = "data/eval"


def _param(text: str) -> tuple[str, object]:
    """``name=value`` / ``node.name=value`` with a YAML-typed value (``0.5`` float, ``3`` int, ``true``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    name, _, raw = text.partition("=")
    name = name.strip()
    if not name:
        raise argparse.ArgumentTypeError(f"empty parameter name in {text!r}")
    try:
        import yaml

        value = yaml.safe_load(raw) if raw.strip() else ""
    except Exception:
        value = raw
    if value is None or isinstance(value, (list, dict)):
        value = raw
    return name, value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on an ``argparse`` subparsers object."""
    s = subparsers.add_parser(
        "eval", help="evaluate captions/gestures/compute offline on a bag or a DvsGesture folder",
        description="Replay SOURCE (ROS 2 bag folder/.db3/.mcap, DvsGesture folder, or `edge-vlm synth` "
                    "output) through the exact per-frame logic of sttf_perception + vlm_captioner and "
                    "report gesture accuracy, caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), "
                    "active-token fraction, FLOPs and latency.")
    s.add_argument("source", help="bag folder / .db3 / .mcap, or DvsGesture folder")
    s.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    s.add_argument("--checkpoint", default="", help="captioner checkpoint (default: the shipped one)")
    s.add_argument("--max-frames", type=int, default=None, help="stop after N processed frames")
    s.add_argument("--json", action="store_true", help="print the summary as JSON instead of Markdown")
    s.add_argument("-p", "--param", action="append", type=_param, default=[], metavar="[NODE.]NAME=VALUE",
                   help="node parameter override, e.g. -p use_rgb=never -p vlm_captioner.decoding=beam")
    s.add_argument("--graph", default=None, help="graph file with node parameters (default: config/graph.yaml)")
    s.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~10 s of Java start-up)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=run)
    return s


def run(args) -> int:
    """Run ``edge-vlm eval`` with parsed ``args``; returns the exit code."""
    from edge_vlm.evaluation.evaluate import evaluate, markdown_report
    from edge_vlm.events import EventDecodeError
    from edge_vlm.model.checkpoint import CheckpointError

    if args.max_frames is not None and args.max_frames < 1:
        print("edge-vlm eval: --max-frames must be >= 1", file=sys.stderr)
        return 2
    overrides = dict(args.param or [])
    try:
        result = evaluate(args.source, checkpoint=args.checkpoint, overrides=overrides,
                          max_frames=args.max_frames, progress=not args.no_progress, out_dir=args.out,
                          graph=args.graph, meteor=not args.no_meteor)
    except CheckpointError as exc:
        print(f"edge-vlm eval: {exc}", file=sys.stderr)
        return 3
    except (FileNotFoundError, EventDecodeError, ValueError, OSError) as exc:
        print(f"edge-vlm eval: {args.source}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "per_frame"}))
    else:
        print(markdown_report(result))
        print(f"written: {', '.join(result['outputs'].values())}")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry: ``python -m edge_vlm.eval_cli SOURCE ...``."""
    p = argparse.ArgumentParser(prog="edge-vlm")
    add_parser(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
