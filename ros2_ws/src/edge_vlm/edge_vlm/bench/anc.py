"""`edge-vlm bench anc`: the joint STTF + ANC model against Medium-only, on the same frames.

Four engines of the one joint checkpoint run in lock step over the test recordings
(batch 1, fixed threads, a warm-up recording first):

* ``dense_medium`` - Medium branch every frame, dense encoder (the paper's static baseline),
* ``sttf_only``    - Medium branch every frame, STTF sparse encoder,
* ``anc_only``     - routed branch, dense encoder,
* ``both``         - routed branch, STTF sparse encoder (the deployed configuration).

FLOPs come from the analytic counter (every stage: change mask, router, encoder, fusion,
decoder); wall time is the per-frame ``total`` latency of the engine (mask to caption).
"Low motion" = frames of low-motion clips plus the static stretches between clips.
The budget sweep runs ``both`` at several compute budgets on the same recordings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from edge_vlm.bench.anc_complex import budget_monotone, complex_figures
from edge_vlm.bench.common import set_threads
from edge_vlm.bench.recordings import SimFrame, sim_frames, test_recordings
from edge_vlm.cores.graph import replay_params
from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.factory import engine_from_params, load_model
from edge_vlm.model.anc import LEVELS, AncModel, branch_params
from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT
from edge_vlm.model.flops import estimator_flops, vit_flops

__all__ = ["MODES", "SWEEP", "AncRow", "anc_model", "bench_anc", "level_engine", "plot_sweep"]

#: mode -> (forced branch level or None = routed, sparse encoder)
MODES = {"dense_medium": (2, False), "sttf_only": (2, True), "anc_only": (None, False),
         "both": (None, True)}
#: compute budgets of the sweep
SWEEP = (0.25, 0.45, 0.65, 0.85, 1.0)
#: motion classes of a frame ("first": the first frame of a recording, left out)
LOW, HIGH, ALL = ("low", "static"), ("high",), ("low", "static", "high")


class AncCheckpoint(NamedTuple):
    """A joint STTF+ANC checkpoint, loaded."""

    model: AncModel
    meta: dict


@dataclass
class AncRow:
    """One frame through one engine."""

    label: int
    gt: int | None
    motion: str
    flops: float
    ms: float              # the engine's total latency
    enc_ms: float
    branch: str
    params: int            # parameters of the active branch
    active: int            # active tokens
    text: str
    fresh: bool            # the caption was decoded on this frame


def anc_model(checkpoint: str = "") -> AncCheckpoint:
    model, meta = load_model(checkpoint)
    if not isinstance(model, AncModel):
        raise ValueError(f"{checkpoint or DEFAULT_CHECKPOINT} is an STTF-only checkpoint; the ANC "
                         "benchmark needs a joint STTF+ANC one (edge-vlm train --model anc)")
    return AncCheckpoint(model, meta)


def level_engine(model: AncModel, params: dict, meta: dict, level: int | None, sparse: bool,
            budget: float = 1.0) -> StreamingCaptioner:
    eng = engine_from_params(model, {**params, "compute_budget": budget}, meta, sparse=sparse)
    eng.force_level = level
    return eng


def _lock_step(model: AncModel, params: dict, meta: dict,
               frames: list[list[SimFrame]]) -> dict[str, list[AncRow]]:
    """The four modes frame by frame (fresh engines per recording)."""
    rows: dict[str, list[AncRow]] = {m: [] for m in MODES}
    for fr in frames:
        engines = {m: level_engine(model, params, meta, lv, sp) for m, (lv, sp) in MODES.items()}
        for j, f in enumerate(fr):
            for m, eng in engines.items():
                r = eng.process(f.hist)
                rows[m].append(AncRow(
                    label=r.label, gt=f.gt, motion=f.motion if j else "first",
                    flops=r.flops_executed, ms=r.latency_ms["total"],
                    enc_ms=r.latency_ms["encoder"], branch=r.route.branch,
                    params=r.route.params_active, active=r.active_tokens, text=r.text,
                    fresh=r.caption_fresh))
    return rows


def _texts_decoding_every_frame(model: AncModel, params: dict, meta: dict,
                                frames: list[list[SimFrame]]) -> list[str]:
    """The caption gate (caption_reuse_threshold) off: the text of an engine that decodes every
    frame, on the same frames."""
    always = []
    for fr in frames:
        eng = level_engine(model, {**params, "caption_reuse_threshold": 0.0}, meta, None, True)
        always += [eng.process(f.hist).text for f in fr]
    return always


def _budget_sweep(model: AncModel, params: dict, meta: dict,
                  frames: list[list[SimFrame]]) -> list[dict]:
    """The deployed configuration at every budget of :data:`SWEEP`, on the same frames."""
    sweep = []
    for b in SWEEP:
        rs = []
        for fr in frames:
            eng = level_engine(model, params, meta, None, True, budget=b)
            rs += [(eng.process(f.hist), f) for f in fr]
        sc = [(r, f) for r, f in rs if f.gt is not None]
        sweep.append({"budget": b,
                      "gflops": float(np.mean([r.flops_executed for r, _ in rs]) / 1e9),
                      "accuracy": float(np.mean([r.label == f.gt for r, f in sc])) if sc else None,
                      "branch_share": {lv: float(np.mean([r.route.branch == lv for r, _ in rs]))
                                       for lv in LEVELS}})
    return sweep


def _pick(rows: list[AncRow], kinds: tuple[str, ...]) -> list[AncRow]:
    return [x for x in rows if x.motion in kinds]


def _acc(xs: list[AncRow]) -> float | None:
    xs = [x for x in xs if x.gt is not None]
    return float(np.mean([x.label == x.gt for x in xs])) if xs else None


def _mean(xs: list[AncRow], key: str) -> float | None:
    return float(np.mean([getattr(x, key) for x in xs])) if xs else None


def _share(xs: list[AncRow]) -> dict[str, float]:
    return {lv: float(np.mean([x.branch == lv for x in xs])) for lv in LEVELS}


def _mode_figures(rows: list[AncRow]) -> dict:
    """One line of the ablation table."""
    low, high, all_ = _pick(rows, LOW), _pick(rows, HIGH), _pick(rows, ALL)
    return {"accuracy": _acc(all_), "accuracy_low_motion": _acc(low),
            "accuracy_high_motion": _acc(high),
            "gflops": _mean(all_, "flops") / 1e9, "gflops_low_motion": _mean(low, "flops") / 1e9,
            "gflops_high_motion": _mean(high, "flops") / 1e9,
            "ms": _mean(all_, "ms"), "ms_low_motion": _mean(low, "ms"),
            "ms_high_motion": _mean(high, "ms"),
            "params_active_mean": _mean(all_, "params"),
            "branch_share_low_motion": _share(low), "branch_share_high_motion": _share(high)}


def _caption_gate(params: dict, both: list[AncRow], always: list[str]) -> dict:
    """How often the deployed engine decoded text, and whether it published the same text."""
    return {"caption_reuse_threshold": float(params.get("caption_reuse_threshold", 0.0)),
            "decoded_fraction": float(np.mean([x.fresh for x in both])),
            "decoded_fraction_low_motion": float(np.mean([x.fresh for x in _pick(both, LOW)])),
            "text_agreement_with_decoding_every_frame": float(np.mean(
                [x.text == t for x, t in zip(both, always)]))}


def _summary(ck: AncCheckpoint, table: dict, both: list[AncRow]) -> dict:
    """The headline figures: reductions against Medium-only, accuracy, router cost, sizes."""
    model = ck.model
    c, a = model.cfg, model.acfg
    tiny = vit_flops(replace(c, mlp_ratio=a.mlp_ratios[0]), [c.num_tokens] * a.depths[0])
    ref, dep, anc_only = table["dense_medium"], table["both"], table["anc_only"]
    return {
        "frames_low_motion": len(_pick(both, LOW)), "frames_high_motion": len(_pick(both, HIGH)),
        "flops_reduction_low_motion": 1 - dep["gflops_low_motion"] / ref["gflops_low_motion"],
        "walltime_reduction_low_motion": 1 - dep["ms_low_motion"] / ref["ms_low_motion"],
        "flops_reduction_low_motion_anc_only":
            1 - anc_only["gflops_low_motion"] / ref["gflops_low_motion"],
        "walltime_reduction_low_motion_anc_only":
            1 - anc_only["ms_low_motion"] / ref["ms_low_motion"],
        "accuracy_medium_high_motion": ref["accuracy_high_motion"],
        "accuracy_anc_high_motion": dep["accuracy_high_motion"],
        "accuracy_anc_only_high_motion": anc_only["accuracy_high_motion"],
        "router_cost_fraction_of_tiny": estimator_flops(c, a.est_hidden) / tiny,
        "router_flops": estimator_flops(c, a.est_hidden), "tiny_branch_dense_flops": tiny,
        "params_tiny": branch_params(model.branches[0]),
        "params_small": branch_params(model.branches[1]),
        "params_medium": branch_params(model.branches[2]),
    }


def bench_anc(checkpoint: str = "", threads: int = 1, quick: bool = False,
              plot: str | None = None) -> dict:
    """The four modes of :data:`MODES`, the caption gate and the budget sweep on the test
    recordings (one per test subject, lightings rotated; ``quick``: one short recording)."""
    set_threads(threads)
    params = replay_params(graph=None).captioner
    ck = anc_model(checkpoint)
    model, meta = ck
    recs = test_recordings(quick)
    if not quick:   # one recording per test subject, lightings rotated (4 engines in lock step)
        recs = [recs[3 * i + i % 3] for i in range(len(recs) // 3)]
    frames = [sim_frames(r, params) for r in recs]
    with torch.no_grad():
        warm = level_engine(model, params, meta, None, True)
        for f in frames[0][:10]:
            warm.process(f.hist)
        rows = _lock_step(model, params, meta, frames)
        always = _texts_decoding_every_frame(model, params, meta, frames)
        sweep = _budget_sweep(model, params, meta, frames)
        complex_ = complex_figures(model, params, meta, frames, quick=quick)
    table = {m: _mode_figures(rows[m]) for m in MODES}
    out = {"model": {"checkpoint": checkpoint or "(shipped default)",
                     "model_id": meta.get("model_id")},
           "threads": threads, "recordings": [r.name for r in recs], "frames": len(rows["both"]),
           **_summary(ck, table, rows["both"]),
           "anc_accuracy_gap_complex": complex_["anc_accuracy_gap_complex"],
           "anc_budget_monotone": budget_monotone(sweep),
           "anc_accuracy_vs_medium": table["both"]["accuracy"] - table["dense_medium"]["accuracy"],
           "anc_flops_reduction": 1 - table["both"]["gflops"] / table["dense_medium"]["gflops"],
           "complex_scenes": complex_,
           "budget_sweep": sweep, "ablation": table,
           "caption_gate": _caption_gate(params, rows["both"], always)}
    if plot:
        plot_sweep(sweep, table, plot)
        out["plot"] = plot
    return out


def plot_sweep(sweep: list[dict], table: dict, path: str) -> None:
    """Accuracy against GFLOPs per frame: the budget sweep and the other modes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [s["gflops"] for s in sweep]
    ys = [s["accuracy"] for s in sweep]
    ax.plot(xs, ys, "o-", label="STTF+ANC, budget sweep")
    for s in sweep:
        ax.annotate(f"β={s['budget']:.2f}", (s["gflops"], s["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    for m, mk in (("dense_medium", "s"), ("sttf_only", "^"), ("anc_only", "v")):
        ax.plot([table[m]["gflops"]], [table[m]["accuracy"]], mk, label=m.replace("_", " "))
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per frame (analytic, all stages)")
    ax.set_ylabel("gesture accuracy (per frame)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
