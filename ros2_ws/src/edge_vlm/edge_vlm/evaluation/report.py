"""The evaluation's report files: ``eval.json`` (everything but the per-frame records),
``frames.jsonl`` (one record per frame), ``eval.md`` (tables), ``active_fraction.png``,
``timeline.png`` (published gesture and scene over time) and, with ground truth,
``confusion.png`` (per-frame normalized confusion matrix) and ``reliability.png``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edge_vlm.evaluation.metrics import json_safe
from edge_vlm.evaluation.trust_report import (NO_GROUND_TRUTH, plot_reliability, plot_timeline,
                                              stream_markdown, trust_markdown)
from edge_vlm.report import fmt_value


def _f(v, digits: int = 4) -> str:
    return fmt_value(v, digits, fixed=True)


def markdown_report(result: dict) -> str:
    """The evaluation as Markdown tables."""
    acc, caps = result["accuracy"], result["captions"]
    af, fl = result["active_fraction"], result["flops"]
    rows = [
        ("source", f"{result['source']['kind']}: `{result['source']['path']}`"),
        ("checkpoint", f"`{result['checkpoint']}` ({result['model_id']})"),
        ("frames (scored)", f"{result['frames']} ({result['frames_scored']})"),
        ("segments (scored)", f"{result['segments']} ({result['segments_scored']})"),
    ]
    if result.get("ground_truth", True):
        rows += [
            ("gesture accuracy, per frame (gesture segments)",
             f"{_f(acc['frame']['accuracy'])} "
             f"({acc['frame']['correct']}/{acc['frame']['total']})"),
            ("gesture accuracy, per segment (majority vote)",
             f"{_f(acc['segment']['accuracy'])} "
             f"({acc['segment']['correct']}/{acc['segment']['total']})"),
        ]
        rows += [(f"{m} (last frame of each segment)", _f(caps.get(m))) for m in
                 ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")]
    else:
        rows.append(("ground truth", NO_GROUND_TRUTH))
    rows += [
        ("active-token fraction mean / p50 / p95",
         " / ".join(_f(af[k], 3) for k in ("mean", "p50", "p95"))),
        ("FLOPs per frame, executed / dense", f"{_f((fl['executed_mean'] or 0) / 1e6, 2)} M / "
                                              f"{_f((fl['dense_mean'] or 0) / 1e6, 2)} M"),
        ("FLOPs executed / dense", _f(fl["ratio"], 3)),
        ("frames per second (wall, whole replay)", _f(result["fps"]["wall"], 1)),
        ("frames per second (1 / mean total latency)", _f(result["fps"]["pipeline"], 1)),
    ]
    lines = ["# edge_vlm evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Latency per stage (ms)", "", "| stage | p50 | p95 | p99 | mean |",
              "|---|---|---|---|---|"]
    for st, d in result["latency_ms"].items():
        lines.append(f"| {st} | {_f(d['p50'], 3)} | {_f(d['p95'], 3)} | {_f(d['p99'], 3)} | "
                     f"{_f(d['mean'], 3)} |")
    if result.get("low_motion") or result.get("high_motion"):
        lines += ["", "## Motion splits", "",
                  "| split | segments | frames | frame acc. | segment acc. | active fraction |",
                  "|---|---|---|---|---|---|"]
        for key in ("low_motion", "high_motion"):
            d = result.get(key) or {}
            lines.append(f"| {key} | {d.get('segments', 0)} | {d.get('frames', 0)} | "
                         f"{_f(d.get('frame_accuracy'))} | {_f(d.get('segment_accuracy'))} | "
                         f"{_f(d.get('active_fraction_mean'), 3)} |")
    lines += trust_markdown(result) + stream_markdown(result)
    if result.get("ground_truth", True):
        lines += ["", "Captions are scored once per segment: the caption of its last scored "
                      "frame against the segment's references (PTB-tokenized; CIDEr-D with idf "
                      "over the evaluated segments)."]
    lines.append("")
    return "\n".join(lines)


def _plot_confusion(conf: dict, path: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(conf["normalized"], dtype=float)
    k = m.shape[0]
    fig = Figure(figsize=(8.5, 7.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    names = conf["class_names"]
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), [f"{n} ({s})" for n, s in zip(names, conf["support"])], fontsize=7)
    for i in range(k):
        for j in range(k):
            if m[i, j] >= 0.005:
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if m[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (support)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_active(records: list[dict], ground_truth: bool, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    if records:
        single = len({r["stream"] for r in records}) == 1
        t0 = records[0]["t_end"]
        x = (np.asarray([(r["t_end"] - t0) / 1e9 for r in records]) if single
             else np.arange(len(records), dtype=float))
        ax.plot(x, [r["active_fraction"] for r in records], lw=0.8,
                label="active (re-encoded) tokens")
        ax.plot(x, [r["change_tokens"] / max(1, r["total_tokens"]) for r in records], lw=0.8,
                alpha=0.8, label="change mask")
        seg_of = [r.get("segment") if ground_truth else None for r in records]
        start = None
        for i, s in enumerate(seg_of + [None]):
            if start is not None and (s is None or s != seg_of[start]):
                ax.axvspan(x[start], x[i - 1], color="0.85", lw=0, zorder=0)
                start = None
            if s is not None and start is None:
                start = i
        ax.set_xlabel("sensor time since the first frame (s)" if single
                      else "processed frame (all trials)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("fraction of tokens")
    ax.set_title("Active-token fraction over time"
                 + (" (grey: ground-truth segments)" if ground_truth else ""))
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(result: dict, out_dir: str | os.PathLike) -> dict:
    """Write ``eval.json`` (everything but the per-frame records), ``frames.jsonl`` (one
    record per frame), ``eval.md`` (tables), ``active_fraction.png``, ``timeline.png`` and,
    with ground truth, ``confusion.png`` (per-frame normalized confusion matrix) and
    ``reliability.png`` (calibration of the published confidence) under ``out_dir``; returns
    {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_gt = bool(result.get("ground_truth", True))
    calibrated = bool((result.get("trust") or {}).get("calibration_frames"))
    names = [("json", "eval.json"), ("frames", "frames.jsonl"), ("markdown", "eval.md")]
    names += [("confusion_png", "confusion.png")] if has_gt else []
    names += [("active_fraction_png", "active_fraction.png"), ("timeline_png", "timeline.png")]
    names += [("reliability_png", "reliability.png")] if calibrated else []
    paths = {k: str(out / n) for k, n in names}
    for stale in ("confusion.png", "reliability.png"):      # of an earlier run in out_dir
        if str(out / stale) not in paths.values() and (out / stale).is_file():
            (out / stale).unlink()
    summary = {k: v for k, v in result.items() if k not in ("per_frame", "outputs")}
    summary["outputs"] = paths
    with open(paths["json"], "w") as f:
        json.dump(json_safe(summary), f, indent=1)
    with open(paths["frames"], "w") as f:
        for r in result.get("per_frame", []):
            f.write(json.dumps(json_safe(r)) + "\n")
    with open(paths["markdown"], "w") as f:
        f.write(markdown_report(result))
    records = result.get("per_frame", [])
    if has_gt:
        _plot_confusion(result["confusion"], paths["confusion_png"],
                        "Gesture confusion (per frame, row-normalized, 0 = no gesture)")
    _plot_active(records, has_gt, paths["active_fraction_png"])
    plot_timeline(records, has_gt, paths["timeline_png"])
    if calibrated:
        plot_reliability(result["trust"], paths["reliability_png"])
    return paths
