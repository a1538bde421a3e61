"""``edge-vlm paper-table``: the paper's headline claims next to what this project measures.

Every number in the table is read from a measurement file, never typed in:

* bench figures (``edge-vlm bench all``): a JSON file (``edge-vlm bench all --json >
  bench.json``), or ``docs/benchmarks.md`` -- its fenced ``json`` block when it has one,
  else its ``| `key` | value |`` table rows (values as printed there, 4 significant digits);
* the evaluation summary ``data/eval/eval.json`` (``edge-vlm eval data/demo/bag --out data/eval``).

A figure missing from the files reads "not measured yet". Claims that cannot be
checked on this machine (COCO CIDEr of a 3B VLM, energy on Jetson / Snapdragon,
accuracy on the real DVS128 Gesture data) say so and why, with the closest
figure that is measured here as context.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_vlm.paths import repo_root
from edge_vlm.report import fmt_value

__all__ = ["Measure", "Claim", "CLAIMS", "load_bench", "load_eval", "lookup", "render"]

_ROOT = repo_root()
NOT_MEASURED = "not measured yet"


@dataclass(frozen=True)
class Measure:
    """One measured figure: ``key`` of the ``source`` ("bench" or "eval"; dotted path into nested
    dicts), divided by ``over`` (same source) when given."""
    source: str
    key: str
    label: str
    over: str | None = None


@dataclass(frozen=True)
class Claim:
    claim: str
    paper: str
    measures: tuple[Measure, ...]
    command: str
    note: str
    checkable: bool = True


_BENCH_ALL = "`edge-vlm bench all --json`"
_EVAL = "`edge-vlm eval data/demo/bag --out data/eval`"

#: the paper's headline claims, in table order (the figures come from the files)
CLAIMS: tuple[Claim, ...] = (
    Claim("STTF keeps 31 of 196 tokens per frame (84% fewer)", "active fraction 31/196 = 0.158",
          (Measure("bench", "active_token_fraction",
                   "active-token fraction, simulated held-out recording"),
           Measure("bench", "active_token_fraction_low_motion", "same, low-motion gesture frames"),
           Measure("eval", "active_fraction.mean",
                   "mean active fraction, demo bag (events only)")),
          f"`edge-vlm bench sttf` (part of {_BENCH_ALL}); {_EVAL}",
          "16x16 = 256 tokens of 8x8 patches on DVS128's native 128x128 (the paper: 14x14 = 196 "
          "at 224/16), so fractions are compared; periodic dense refreshes are included."),
    Claim("STTF keeps 95.6% accuracy on DVS128 Gesture (vs the dense model)", "95.6%",
          (Measure("bench", "accuracy_sparse", "per-frame gesture accuracy, token memory"),
           Measure("bench", "accuracy_dense", "same frames, dense encoder"),
           Measure("bench", "segment_accuracy_sparse",
                   "per-clip accuracy (majority vote of its frames), token memory"),
           Measure("bench", "segment_accuracy_dense", "same clips, dense encoder"),
           Measure("bench", "accuracy_sparse", "retained: sparse / dense", over="accuracy_dense"),
           Measure("bench", "caption_agreement",
                   "frames whose sparse caption equals the dense one")),
          f"`edge-vlm bench sttf` (part of {_BENCH_ALL})",
          "Simulated DVS128-style recordings of held-out subjects, not the real DVS128 Gesture "
          "test set (see the last row); the absolute accuracy is that of this project's small "
          "model, the sparse / dense ratio is the retained accuracy. The paper's 95.6% classifies "
          "whole samples, which the per-clip figure measures; per frame, the frames where the arm "
          "blends in from and out to the rest pose (a clip's first and last 0.2 s) are the hard "
          "ones (`accuracy_by_clip_phase` in docs/benchmarks.md)."),
    Claim("STTF: 6.1x faster encoder than dense", "6.1x",
          (Measure("bench", "speedup_steady", "encoder wall time dense / sparse, steady state"),
           Measure("bench", "speedup_total_steady",
                   "whole frame (encoder + fusion + decoder) dense / sparse"),
           Measure("bench", "speedup_limit", "ideal: total / active tokens")),
          f"`edge-vlm bench sttf` (part of {_BENCH_ALL})",
          "Batch 1 on a CPU (the bench machine, see above), no GPU: the paper's hardware differs, "
          "so only ratios are comparable. Sparse on the fused native kernel; dense is the faster "
          "of that kernel and the PyTorch calls on the same frames (`encoder_backends` in "
          "docs/benchmarks.md)."),
    Claim("ANC: up to 90% fewer FLOPs in low-motion scenes", "up to 0.90 fewer FLOPs",
          (Measure("bench", "flops_reduction_low_motion", "FLOPs saved, low-motion scenes"),
           Measure("bench", "walltime_reduction_low_motion", "wall time saved, low-motion scenes"),
           Measure("bench", "flops_ratio",
                   "context (token memory, not ANC): FLOPs executed / dense")),
          _BENCH_ALL, "Fraction saved = 1 - executed / baseline FLOPs."),
    Claim("ANC: the savings do not cost accuracy in high-motion scenes (checks behind the claim "
          "above)",
          "no separate number",
          (Measure("bench", "accuracy_anc_high_motion",
                   "gesture accuracy, ANC, high-motion scenes"),
           Measure("bench", "accuracy_medium_high_motion", "same, Medium branch only"),
           Measure("bench", "router_cost_fraction_of_tiny", "router FLOPs / Tiny branch FLOPs")),
          _BENCH_ALL, "Supporting measurements of this project, not numbers from the paper."),
    Claim("ANC branches: Tiny ~2M and Medium ~20M parameters", "~2M / ~20M",
          (Measure("bench", "params_tiny", "Tiny branch parameters"),
           Measure("bench", "params_medium", "Medium branch parameters")),
          _BENCH_ALL, "Counted from the model, not from the paper's description."),
    Claim("COCO captioning CIDEr of the 3B VLM", "COCO CIDEr (3B model)",
          (Measure("eval", "captions.CIDEr-D",
                   "context, not comparable: CIDEr-D of this project's model on simulated gesture "
                   "captions (demo bag)"),),
          f"{_EVAL}; with your own data: `edge-vlm coco --images DIR --captions captions.json "
          "--checkpoint YOURS.pt`",
          "Cannot be checked here: no 3B VLM weights and no COCO images on this offline machine "
          "(nothing is downloaded), CPU only. The shipped model is trained on simulated gesture "
          "scenes, so COCO photos are out of domain for it; `edge-vlm coco` scores a local "
          "COCO-format set with the same metrics (pycocoevalcap, COCO "
          "protocol).", checkable=False),
    Claim("Energy per frame on Jetson / Snapdragon", "energy on Jetson / Snapdragon",
          (Measure("eval", "flops.executed_mean", "context: FLOPs executed per frame, demo bag"),
           Measure("eval", "flops.ratio", "context: FLOPs executed / dense")),
          _EVAL,
          "Cannot be checked here: no Jetson or Snapdragon board and no power meter. FLOPs per "
          "frame (published with every output on /edge_vlm/compute_cost) are the "
          "hardware-independent proxy; docker/README.md describes an untested "
          "Jetson build.", checkable=False),
    Claim("Gesture accuracy on the real DVS128 Gesture dataset", "DVS128 Gesture accuracy",
          (Measure("eval", "accuracy.frame.accuracy",
                   "context: per-frame accuracy, simulated demo bag"),
           Measure("eval", "accuracy.segment.accuracy",
                   "context: per-segment (majority vote), simulated")),
          "`edge-vlm eval /path/to/DvsGesture --out data/eval_dvs128` (with the dataset on disk)",
          "Cannot be checked here: the IBM DVS128 Gesture dataset is not available offline (no "
          "download possible); every accuracy in this table is on the project's simulated "
          "DVS128-style recordings.",
          checkable=False),
)


# ----------------------------------------------------------------------------- inputs
def _scalar(text: str) -> Any:
    """A value cell of docs/benchmarks.md back to a value ("n/a" -> None, "yes"/"no" -> bool)."""
    t = text.strip().strip("`")
    if t in ("", "n/a", "None", "null"):
        return None
    if t in ("yes", "no"):
        return t == "yes"
    try:
        num = t.replace(",", "")
        return int(num) if re.fullmatch(r"[+-]?\d+", num) else float(num)
    except ValueError:
        return t


def load_bench(path: str | os.PathLike) -> tuple[dict, dict]:
    """Bench figures and their provenance from a JSON file or a benchmarks Markdown file.

    Raises ValueError when the file holds no figures (or invalid JSON).
    """
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of bench figures")
        mach = data.get("machine") if isinstance(data.get("machine"), dict) else {}
        return data, {"timestamp": data.get("timestamp"), "command": None,
                      "machine": (f"{mach.get('cpu')}, {mach.get('cores')} cores, torch threads "
                                  f"{mach.get('threads')}") if mach else None}
    prov: dict = {"timestamp": None, "command": None, "machine": None}
    m = re.search(r"Produced by `([^`]*)` at (\S+?)[\s(]", text)
    if m:
        prov.update(command=m.group(1), timestamp=m.group(2))
    m = re.search(r"^Machine: (.+?)(?: \(load average.*)?$", text, flags=re.M)
    if m:
        prov["machine"] = m.group(1).rstrip(". ")
    for block in re.findall(r"```json\s*\n(.*?)\n\s*```", text, flags=re.S):
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data, {**prov, "timestamp": data.get("timestamp", prov["timestamp"])}
    figures: dict = {}
    for key, value in re.findall(r"^\|\s*`([A-Za-z0-9_.\-]+)`\s*\|([^|\n]*)\|", text, flags=re.M):
        figures.setdefault(key, _scalar(value))          # first table wins (the summary)
    if not figures:
        raise ValueError(f"{path}: no bench figures found (no ```json block, no | `key` | value | "
                         "rows)")
    return figures, prov


def load_eval(path: str | os.PathLike) -> dict:
    """The summary JSON of ``edge-vlm eval``. Raises ValueError on invalid JSON."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (edge-vlm eval's eval.json)")
    return data


_MISSING = object()


def lookup(data: dict | None, key: str, source: str = "eval") -> Any:
    """``data[key]`` by dotted path; bench keys are also looked for in ``details.<part>``.
    Returns the module's ``_MISSING`` sentinel when absent."""
    if data is None:
        return _MISSING
    if key in data:
        return data[key]
    cur: Any = data
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            cur = _MISSING
            break
        cur = cur[part]
    if cur is _MISSING and source == "bench":
        for part in (data.get("details") or {}).values():
            if isinstance(part, dict) and key in part:
                return part[key]
    return cur


def _value(m: Measure, sources: dict[str, dict | None]) -> Any:
    v = lookup(sources.get(m.source), m.key, m.source)
    if m.over is None or v is _MISSING or v is None:
        return v
    d = lookup(sources.get(m.source), m.over, m.source)
    if d is _MISSING:
        return _MISSING
    return None if not d or isinstance(v, bool) else float(v) / float(d)


def _fmt(v: Any) -> str:
    return NOT_MEASURED if v is _MISSING else fmt_value(v, grouped=False)   # 4 significant digits


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------- output
def render(bench: dict | None, eval_: dict | None, *, bench_path: str = "", eval_path: str = "",
           bench_prov: dict | None = None) -> str:
    """The Markdown table. ``bench`` / ``eval_``: the loaded figures (None: no file)."""
    sources = {"bench": bench, "eval": eval_}
    bp = bench_prov or {}
    lines = ["# Paper claims vs this project's measurements", "",
             "Generated by `edge-vlm paper-table` from measurement files; no figure is typed in "
             f"by hand. A figure missing from them reads \"{NOT_MEASURED}\".", ""]
    if bench is None:
        lines.append(f"- bench figures: none (no file{f' `{bench_path}`' if bench_path else ''}; "
                     f"run {_BENCH_ALL})")
    else:
        by = f" produced by `{bp['command']}`" if bp.get("command") else ""
        at = f" at {bp['timestamp']}" if bp.get("timestamp") else ""
        lines.append(f"- bench figures: `{bench_path}`{by}{at}"
                     + (f"; machine: {bp['machine']}" if bp.get("machine") else ""))
    if eval_ is None:
        lines.append(f"- evaluation: none (no file{f' `{eval_path}`' if eval_path else ''}; run "
                     f"{_EVAL})")
    else:
        source = eval_.get("source")
        src = source.get("path") if isinstance(source, dict) else None
        lines.append(f"- evaluation: `{eval_path}`" + (f" of `{src}`" if src else "")
                     + (f", checkpoint `{os.path.basename(str(eval_['checkpoint']))}`"
                        if eval_.get("checkpoint") else ""))
    lines += ["", "Regenerate: `edge-vlm bench all --json && edge-vlm eval data/demo/bag --out "
                  "data/eval && edge-vlm paper-table`", "",
              "| # | claim (paper) | paper | measured here | command | note |",
              "|---|---|---|---|---|---|"]
    for i, c in enumerate(CLAIMS, 1):
        got = [f"{m.label}: **{_fmt(_value(m, sources))}**" for m in c.measures]
        if not c.checkable:
            got.insert(0, "**cannot be checked here**")
        lines.append(f"| {i} | {_cell(c.claim)} | {_cell(c.paper)} | {_cell('<br>'.join(got))} | "
                     f"{_cell(c.command)} | {_cell(c.note)} |")
    lines.append("")
    return "\n".join(lines)


def relative_path(path: str) -> str:
    """``path`` relative to the repository root when inside it (stable across checkouts)."""
    try:
        return str(Path(path).resolve().relative_to(_ROOT))
    except ValueError:
        return str(path)
