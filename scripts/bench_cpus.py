"""The performance keys of several ``make bench`` runs side by side, one column per run (issue 19:
the targets must hold on every CPU these machines come with).

    python scripts/bench_cpus.py docs/benchmarks.json git:29a41e4:docs/benchmarks.json

Each argument is a bench JSON (``edge-vlm bench all --json``): a file, or ``git:REV:PATH`` for
the one committed at REV. Prints a markdown table: the CPU (``machine.cpu_model``), when the run
ended, then each key with its target.
"""
from __future__ import annotations

import json
import subprocess
import sys

#: (key, target as printed) of issue 19, in its order
KEYS = (("speedup_limit", "reported"), ("speedup_total_steady", ">= 0.6 x limit"),
        ("total_ms_steady_sparse", "reported"), ("total_ms_steady_dense", "reported"),
        ("encoder_efficiency", ">= 0.85"), ("walltime_reduction_low_motion", ">= 0.85"),
        ("flops_reduction_low_motion", ">= 0.95"), ("anc_accuracy_gap_complex", ">= 0.05"),
        ("anc_budget_monotone", "true"), ("anc_accuracy_vs_medium", ">= -0.01"),
        ("anc_flops_reduction", ">= 0.5"), ("frame_latency_ms_p95", "<= 25"),
        ("streams_realtime_2cores", "reported"))


def load(arg: str) -> dict:
    """A bench JSON from a file or ``git:REV:PATH``."""
    if arg.startswith("git:"):
        rev, _, path = arg[4:].partition(":")
        text = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True,
                              check=True).stdout
    else:
        with open(arg, encoding="utf-8") as f:
            text = f.read()
    return json.loads(text)


def value(run: dict, key: str):
    """The key at the top level, else in ``details.sttf`` (the per-stage totals)."""
    if key in run:
        return run[key]
    return run.get("details", {}).get("sttf", {}).get(key)


def fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if v is not None else "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("error: give one or more bench JSONs (FILE or git:REV:PATH)", file=sys.stderr)
        return 2
    try:
        runs = [load(a) for a in args]
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 1
    head = [r.get("machine", {}).get("cpu_model", "?") for r in runs]
    print("| key | target | " + " | ".join(head) + " |")
    print("|---|---|" + "---|" * len(runs))
    print("| run ended | | " + " | ".join(str(r.get("timestamp", "?")) for r in runs) + " |")
    for key, target in KEYS:
        print(f"| `{key}` | {target} | " + " | ".join(fmt(value(r, key)) for r in runs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
