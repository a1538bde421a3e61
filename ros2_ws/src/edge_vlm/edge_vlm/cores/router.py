"""anc_router's logic without rclpy: event frame -> complexity level, routed branches, budget."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from edge_vlm.cores.perception import mask_logits
from edge_vlm.inference.frame_tensors import FrameTensors
from edge_vlm.inference.factory import shared_model
from edge_vlm.inference.native_convs import estimator_logits
from edge_vlm.inference.routing import choose_branches
from edge_vlm.model.anc import LEVELS, budget_cap
from edge_vlm.model.checkpoint import CheckpointError
from edge_vlm.model.config import age_bucket_np
from edge_vlm.model.flops import estimator_flops, vit_flops
from edge_vlm.params import resolve
from edge_vlm.stream.frames import Frame, frame_histogram


@dataclass
class RouteResult:
    levels: tuple
    probabilities: np.ndarray
    level: int
    score: float                 # events per pixel per frame
    branches: list
    weights: list
    budget: float
    est_flops: float = 0.0        # learned router: encoder FLOPs of the routed branches (changed
    #                               tokens)
    est_flops_dense: float = 0.0  # Medium branch, every token


class Estimate(NamedTuple):
    """The learned complexity estimate of a frame."""

    probabilities: np.ndarray    # level probabilities (float32)
    level: int                   # the most probable level
    changed: int                 # tokens in the frame's change mask


class RouterCore:
    """anc_router's logic: event frame -> complexity level, routed branches, budget.

    ``router_method: learned`` (default): the checkpoint's ANC complexity estimator on the
    frame's histogram plus the change-mask state it needs (changed and recently changed
    fractions, tracked here exactly as the captioner's token memory tracks them), hard
    routing as the captioner does it (:func:`~edge_vlm.inference.routing.choose_branches`).
    ``density``: the rule fallback, a softmax over the distance of log event density to level
    centres set by ``low_density`` / ``high_density``. Either way the budget caps the level
    (<= 1/3 tiny only, <= 2/3 up to small).
    """

    def __init__(self, overrides: dict | None = None):
        self.params = p = resolve("anc_router", overrides)
        self.model = None
        if p["router_method"] == "learned":
            torch.set_num_threads(1)
            self.model, _ = shared_model(p["checkpoint"])
            if not hasattr(self.model, "estimator"):
                name = p["checkpoint"] or "(shipped default)"
                raise CheckpointError(f"checkpoint {name} has no ANC complexity estimator (STTF "
                                      "only); use router_method:=density or a joint checkpoint")
            self.age = None

    def set_budget(self, budget: float) -> None:
        self.params = resolve("anc_router", {**self.params, "compute_budget": budget})

    def _estimate(self, frame: Frame) -> Estimate:
        c = self.model.cfg
        hist = frame_histogram(frame, self.params)
        ft = FrameTensors(hist)          # shared by the mask net and the estimator
        change = (mask_logits(self.model.mask_net, hist, ft) > 0).numpy()
        with torch.no_grad():
            self.age = (np.where(change, 0, c.max_age) if self.age is None
                        else np.where(change, 0, np.minimum(self.age + 1, c.max_age)))
            bucket = age_bucket_np(self.age, c.max_age)[None]
            logits = self.model.route_logits(ft.hist, torch.from_numpy(change)[None], bucket,
                                             ft.log, run=estimator_logits)
        probs = torch.softmax(logits, dim=-1)[0].numpy().astype(np.float32)
        return Estimate(probs, int(np.argmax(probs)), int(change.sum()))

    def process(self, frame: Frame) -> RouteResult:
        p = self.params
        density = frame.n_events / float(p["model_width"] * p["model_height"])
        budget = float(p["compute_budget"])
        if self.model is not None:
            return self._learned(frame, density, budget)
        return self._by_density(density, budget)

    def _learned(self, frame: Frame, density: float, budget: float) -> RouteResult:
        """The estimator's levels, routed by the captioner's rule; FLOPs of the routed branches."""
        est = self._estimate(frame)
        a, c = self.model.acfg, self.model.cfg
        routing = choose_branches(est.probabilities, budget, a.router_threshold)
        flops = estimator_flops(c, a.est_hidden) + sum(
            vit_flops(replace(c, mlp_ratio=a.mlp_ratios[b]), [est.changed] * a.depths[b])
            for b in routing.run)
        dense = vit_flops(replace(c, mlp_ratio=a.mlp_ratios[2]), [c.num_tokens] * a.depths[2])
        return RouteResult(LEVELS, est.probabilities, est.level, density,
                           [LEVELS[b] for b in routing.run], routing.weights, budget,
                           float(flops), float(dense))

    def _by_density(self, density: float, budget: float) -> RouteResult:
        """The rule fallback: levels by log event density."""
        p = self.params
        lo, hi = math.log(max(p["low_density"], 1e-9)), math.log(max(p["high_density"], 1e-8))
        centres = np.array([lo - 0.5 * (hi - lo), 0.5 * (lo + hi), hi + 0.5 * (hi - lo)])
        x = math.log(max(density, 1e-9))
        logits = -((x - centres) ** 2) / max((hi - lo) ** 2 / 4, 1e-6)
        probs = np.exp(logits - logits.max())
        probs = (probs / probs.sum()).astype(np.float32)
        level = 0 if density < p["low_density"] else (2 if density > p["high_density"] else 1)
        run = min(level, budget_cap(budget))
        return RouteResult(LEVELS, probs, level, density, [LEVELS[run]], [1.0], budget)
