"""ANC's hard routing at inference (the one rule, for the captioner engine and the router core)
and the route record of a frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_vlm.model.anc import budget_cap


@dataclass(slots=True)
class Routing:
    """Which branches run a frame: ``run`` (levels, ascending) with output ``weights`` (sum 1),
    from the estimator's level ``probabilities`` (every level)."""

    probabilities: np.ndarray
    run: list[int]
    weights: list[float]


def choose_branches(probabilities: np.ndarray, budget: float, threshold: float) -> Routing:
    """The routing rule: the level probabilities capped by the compute budget
    (:func:`~edge_vlm.model.anc.budget_cap`) and renormalised; the levels above ``threshold`` run
    (the most probable one if none is), their weights renormalised."""
    cap = budget_cap(budget)
    p = probabilities[:cap + 1] / probabilities[:cap + 1].sum()
    run = [b for b in range(cap + 1) if p[b] > threshold] or [int(np.argmax(p))]
    w = p[run] / p[run].sum()
    return Routing(probabilities, run, [float(x) for x in w])


@dataclass(slots=True)
class Route:
    """The route of a frame of the joint STTF+ANC engine (``FrameResult.route``)."""

    branch: str                   # the dominant branch (largest weight): its level name
    level: int                    # the most probable level
    probabilities: list[float]    # the estimator's level probabilities
    branches: list[str]           # the branches that ran
    weights: list[float]          # ... and their output weights
    budget: float                 # the compute budget
    kept_channels: list[int]      # the dominant branch's MLP channels per layer at this budget
    branch_tokens: dict[str, list[int]]   # tokens recomputed per layer, per branch that ran
    params_active: int            # parameters the frame used
