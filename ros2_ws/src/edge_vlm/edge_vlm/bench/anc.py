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
from dataclasses import replace

import numpy as np

MODES = {"dense_medium": (2, False), "sttf_only": (2, True), "anc_only": (None, False), "both": (None, True)}
SWEEP = (0.25, 0.45, 0.65, 0.85, 1.0)


def _anc_model(checkpoint: str = ""):
    from edge_vlm.model.anc import AncModel
    from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    if not isinstance(model, AncModel):
        raise ValueError(f"{checkpoint or DEFAULT_CHECKPOINT} is an STTF-only checkpoint; the ANC benchmark "
                         "needs a joint STTF+ANC one (edge-vlm train --model anc)")
    return model, meta


def _engine(model, params: dict, meta: dict, level, sparse: bool, budget: float = 1.0):
    from edge_vlm.inference.engine import engine_from_params

    eng = engine_from_params(model, {**params, "compute_budget": budget}, meta, sparse=sparse)
    eng.force_level = level
    return eng


def bench_anc(checkpoint: str = "", threads: int = 1, quick: bool = False, plot: str | None = None) -> dict:
    import torch

    from edge_vlm.bench.suite import _set_threads, sim_frames, test_recordings
    from edge_vlm.evaluation.evaluate import node_params
    from edge_vlm.model.anc import LEVELS, branch_params
    from edge_vlm.model.flops import estimator_flops, vit_flops

    _set_threads(threads)
    _, params, _ = node_params(graph=None)
    model, meta = _anc_model(checkpoint)
    recs = test_recordings(quick)
    if not quick:   # one recording per test subject, lightings rotated (4 engines in lock step)
        recs = [recs[3 * i + i % 3] for i in range(len(recs) // 3)]
    frames = [sim_frames(r, params) for r in recs]
    with torch.no_grad():
        warm = _engine(model, params, meta, None, True)
        for f in frames[0][:10]:
            warm.process(f["hist"])
        rows = {m: [] for m in MODES}
        for fr in frames:
            engines = {m: _engine(model, params, meta, lv, sp) for m, (lv, sp) in MODES.items()}
            for j, f in enumerate(fr):
                for m, eng in engines.items():
                    r = eng.process(f["hist"])
                    rows[m].append({"label": r.label, "gt": f["gt"], "motion": f["motion"] if j else "first",
                                    "flops": r.flops_executed, "ms": r.latency_ms["total"],
                                    "enc_ms": r.latency_ms["encoder"], "branch": r.route["branch"],
                                    "params": r.route["params_active"], "active": r.active_tokens,
                                    "text": r.text, "fresh": r.caption_fresh})
        # the caption gate (caption_reuse_threshold): the deployed engine against one that
        # decodes every frame, on the same frames
        always = []
        for fr in frames:
            eng = _engine(model, {**params, "caption_reuse_threshold": 0.0}, meta, None, True)
            always += [eng.process(f["hist"]).text for f in fr]
        sweep = []
        for b in SWEEP:      # the deployed configuration at several budgets, on the same frames
            rs = []
            for fr in frames:
                eng = _engine(model, params, meta, None, True, budget=b)
                rs += [(eng.process(f["hist"]), f) for f in fr]
            sc = [(r, f) for r, f in rs if f["gt"] is not None]
            sweep.append({"budget": b, "gflops": float(np.mean([r.flops_executed for r, _ in rs]) / 1e9),
                          "accuracy": float(np.mean([r.label == f["gt"] for r, f in sc])) if sc else None,
                          "branch_share": {lv: float(np.mean([r.route["branch"] == lv for r, _ in rs]))
                                           for lv in LEVELS}})

    def pick(mode, kinds):
        return [x for x in rows[mode] if x["motion"] in kinds]

    def acc(xs):
        xs = [x for x in xs if x["gt"] is not None]
        return float(np.mean([x["label"] == x["gt"] for x in xs])) if xs else None

    def mean(xs, k):
        return float(np.mean([x[k] for x in xs])) if xs else None

    low, high, all_ = ("low", "static"), ("high",), ("low", "static", "high")
    table = {}
    for m in MODES:
        table[m] = {"accuracy": acc(pick(m, all_)), "accuracy_low_motion": acc(pick(m, low)),
                    "accuracy_high_motion": acc(pick(m, high)),
                    "gflops": mean(pick(m, all_), "flops") / 1e9,
                    "gflops_low_motion": mean(pick(m, low), "flops") / 1e9,
                    "gflops_high_motion": mean(pick(m, high), "flops") / 1e9,
                    "ms": mean(pick(m, all_), "ms"), "ms_low_motion": mean(pick(m, low), "ms"),
                    "ms_high_motion": mean(pick(m, high), "ms"),
                    "params_active_mean": mean(pick(m, all_), "params"),
                    "branch_share_low_motion": {lv: float(np.mean([x["branch"] == lv for x in pick(m, low)]))
                                                for lv in LEVELS},
                    "branch_share_high_motion": {lv: float(np.mean([x["branch"] == lv for x in pick(m, high)]))
                                                 for lv in LEVELS}}
    c, a = model.cfg, model.acfg
    tiny = vit_flops(replace(c, mlp_ratio=a.mlp_ratios[0]), [c.num_tokens] * a.depths[0])
    ref, dep = table["dense_medium"], table["both"]
    out = {
        "model": {"checkpoint": checkpoint or "(shipped default)", "model_id": meta.get("model_id")},
        "threads": threads, "recordings": [r.name for r in recs], "frames": len(rows["both"]),
        "frames_low_motion": len(pick("both", low)), "frames_high_motion": len(pick("both", high)),
        "flops_reduction_low_motion": 1 - dep["gflops_low_motion"] / ref["gflops_low_motion"],
        "walltime_reduction_low_motion": 1 - dep["ms_low_motion"] / ref["ms_low_motion"],
        "flops_reduction_low_motion_anc_only": 1 - table["anc_only"]["gflops_low_motion"] / ref["gflops_low_motion"],
        "walltime_reduction_low_motion_anc_only": 1 - table["anc_only"]["ms_low_motion"] / ref["ms_low_motion"],
        "accuracy_medium_high_motion": ref["accuracy_high_motion"],
        "accuracy_anc_high_motion": dep["accuracy_high_motion"],
        "accuracy_anc_only_high_motion": table["anc_only"]["accuracy_high_motion"],
        "router_cost_fraction_of_tiny": estimator_flops(c, a.est_hidden) / tiny,
        "router_flops": estimator_flops(c, a.est_hidden), "tiny_branch_dense_flops": tiny,
        "params_tiny": branch_params(model.branches[0]), "params_small": branch_params(model.branches[1]),
        "params_medium": branch_params(model.branches[2]),
        "budget_sweep": sweep, "ablation": table,
        "caption_gate": {"caption_reuse_threshold": float(params.get("caption_reuse_threshold", 0.0)),
                         "decoded_fraction": float(np.mean([x["fresh"] for x in rows["both"]])),
                         "decoded_fraction_low_motion": float(np.mean([x["fresh"] for x in pick("both", low)])),
                         "text_agreement_with_decoding_every_frame": float(np.mean(
                             [x["text"] == t for x, t in zip(rows["both"], always)]))},
    }
    if plot:
        plot_sweep(sweep, table, plot)
        out["plot"] = plot
    return out


def plot_sweep(sweep: list[dict], table: dict, path: str) -> None:
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
