"""Per-layer gate thresholds of the sparse ViT: the token-propagation policy.

Layer ``l > 0`` propagates a recomputed token only while its input moved more than
``tau_l`` (relative L2) from its last propagated value. The thresholds are fitted on the
*validation* subjects after training (``edge-vlm calibrate``): for every candidate, the
sparse and the dense engine run in lock step and the policy keeps the candidate that
minimises ``mean tokens recomputed per layer / N + lam * (1 - gesture agreement with
dense)`` among those whose agreement is at least ``min_agreement``. This is a grid
search over one scalar per layer group (a constant policy), the simplification of the
paper's policy network written down in docs/design.md.
"""
from __future__ import annotations

import numpy as np
import torch

from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.factory import load_model
from edge_vlm.model.checkpoint import save_checkpoint
from edge_vlm.sim import simulate_recording
from edge_vlm.training.config import LIGHTINGS
from edge_vlm.training.data import frame_range, histograms_on_grid

CANDIDATES = (0.0, 0.02, 0.05, 0.1, 0.2)


def _streams(subjects, seed: int, clip_s: float, gap_s: float) -> list:
    return [simulate_recording(int(s), light, seed=seed * 1000 + int(s), clip_duration_s=clip_s,
                               gap_s=gap_s, with_frames=False)
            for s, light in zip(subjects, LIGHTINGS)]


def calibrate(model, hists: list[list[np.ndarray]], candidates=CANDIDATES, lam: float = 5.0,
              min_agreement: float = 0.99, refresh_period: int = 30) -> dict:
    """Fit ``[0, tau, ..., tau]`` on the frame histograms of some streams (lists per stream)."""
    depth = len(model.vit.blocks)
    rows = []
    with torch.no_grad():
        dense = []
        for hs in hists:
            ed = StreamingCaptioner(model, sparse=False, caption_period=10**6)
            dense.append([ed.process(h).label for h in hs])
        for tau in candidates:
            taus = [0.0] + [float(tau)] * (depth - 1)
            agree, tokens, n = 0, 0.0, 0
            for hs, ref in zip(hists, dense):
                es = StreamingCaptioner(model, layer_thresholds=taus,
                                        refresh_period=refresh_period, caption_period=10**6)
                for h, lab in zip(hs, ref):
                    rs = es.process(h)
                    agree += int(rs.label == lab)
                    tokens += float(np.mean(rs.layer_tokens)) / rs.total_tokens
                    n += 1
            rows.append({"tau": float(tau), "agreement": agree / max(1, n),
                         "layer_token_fraction": tokens / max(1, n)})
    ok = [r for r in rows if r["agreement"] >= min_agreement] or rows[:1]
    best = min(ok, key=lambda r: r["layer_token_fraction"] + lam * (1 - r["agreement"]))
    return {"layer_thresholds": [0.0] + [best["tau"]] * (depth - 1), "candidates": rows,
            "objective": f"min layer-token fraction + {lam} x (1 - agreement), "
                         f"agreement >= {min_agreement}"}


def calibrate_checkpoint(path: str, subjects, seed: int = 0, clip_s: float = 1.5,
                         gap_s: float = 0.3, period_ns: int = 33_333_333) -> dict:
    """Fit the thresholds on simulated recordings of ``subjects`` and store them in the
    checkpoint."""
    model, extra = load_model(path)
    hists = []
    for rec in _streams(subjects, seed, clip_s, gap_s):
        k0, k1 = frame_range(rec.events, period_ns)
        h = histograms_on_grid(rec.events, k0, k1, period_ns)
        hists.append([x.astype(np.float32) for x in h])
    res = calibrate(model, hists)
    extra = {**extra, "layer_thresholds": res["layer_thresholds"], "policy": res}
    save_checkpoint(path, model, extra=extra)
    return res
