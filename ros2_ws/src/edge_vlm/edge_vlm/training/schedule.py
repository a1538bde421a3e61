"""The epoch schedule the training runs (``train``, ``train_anc``) share: seeding, the
learning rate (linear warm-up, then cosine decay), early stopping on validation, and the
state saved after every epoch so that ``--resume`` continues a run where it stopped."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from edge_vlm.model.checkpoint import save_checkpoint
from edge_vlm.training.config import TrainConfig


def seed_run(tc: TrainConfig) -> np.random.Generator:
    """Seed torch with ``tc.seed``, use ``tc.threads`` threads; the run's numpy generator."""
    torch.manual_seed(tc.seed)
    torch.set_num_threads(tc.threads)
    return np.random.default_rng(tc.seed)


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int,
                  total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, times a cosine decay to 0
    at step ``total``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (min(1.0, (s + 1) / warmup)
                        * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))))


@dataclass
class RunState:
    """Where a run stands after its last finished epoch: per-epoch records, best validation
    score and its epoch, epochs since (early stopping after ``patience`` of them)."""
    history: list[dict] = field(default_factory=list)
    best: float = -1.0
    best_epoch: int = 0
    bad: int = 0
    epoch: int = 0

    def improved(self, score: float, epoch: int) -> bool:
        """Count finished ``epoch`` with validation ``score``; True if it is the best so far
        (the run keeps its checkpoint)."""
        self.epoch = epoch
        if score > self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            return True
        self.bad += 1
        return False


def resume_path(out: str) -> str:
    """Where a run writing checkpoint ``out`` keeps its resume state."""
    return out + ".resume"


def save_resume(path: str, model, opt, sched, rng: np.random.Generator, state: RunState) -> None:
    """Everything needed to continue training after ``state.epoch`` (``--resume``)."""
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                **asdict(state)}, path)


def load_resume(path: str, model, opt, sched, rng: np.random.Generator) -> RunState:
    """Restore what :func:`save_resume` wrote; returns the run's state."""
    st = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    sched.load_state_dict(st["sched"])
    rng.bit_generator.state = st["rng"]
    torch.set_rng_state(st["torch_rng"])
    print(f"resumed after epoch {st['epoch']}", flush=True)
    return RunState(**{k: st[k] for k in ("history", "best", "best_epoch", "bad", "epoch")})


def start_or_resume(out: str, resume: bool, model, opt, sched,
                    rng: np.random.Generator) -> RunState:
    """Create the folder of checkpoint ``out``; a fresh state, or with ``resume`` (and a saved
    state) the saved one, with model, optimizer, scheduler and generators restored."""
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    if resume and os.path.isfile(resume_path(out)):
        return load_resume(resume_path(out), model, opt, sched, rng)
    return RunState()


def optimizer_step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor, params) -> None:
    """Back-propagate ``loss``, clip the gradient norm of ``params`` at 1, step the optimizer
    and the learning-rate schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def save_fit(out: str, model, meta: dict, name: str, fit: dict, history: list) -> dict:
    """A fitted checkpoint: ``fit`` stored in its extras under ``name`` (e.g. ``router_fit``), and
    ``<name>.json`` (checkpoint path and size, ``history``, ``fit``) written next to it; returns
    that summary."""
    save_checkpoint(out, model, extra={**meta, name: fit})
    summary = {"checkpoint": out, "checkpoint_bytes": os.path.getsize(out), "history": history,
               **fit}
    with open(os.path.join(os.path.dirname(os.path.abspath(out)), f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
