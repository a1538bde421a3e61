"""Calibration of the heads' confidences: one temperature per head group fitted on the
validation subjects (Guo et al. 2017, "On Calibration of Modern Neural Networks": a single
scalar per output keeps the argmax, so accuracy is unchanged); the expected calibration error
that checks it is :func:`edge_vlm.evaluation.trust.calibration`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from edge_vlm.training.targets import IGNORE


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, steps: int = 200) -> float:
    """The temperature T minimising the validation NLL of ``softmax(logits / T)`` (targets
    IGNORE are left out); 1.0 when there is nothing to fit."""
    keep = target != IGNORE
    if int(keep.sum()) == 0:
        return 1.0
    x, y = logits[keep].detach().float(), target[keep]
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


__all__ = ["fit_temperature"]
