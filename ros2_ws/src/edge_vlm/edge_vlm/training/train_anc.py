"""`edge-vlm train --model anc`: the joint STTF + ANC model, grown from a trained STTF
checkpoint.

Composite loss per step (windows as in STTF training, batch ``batch``):

* task: for every branch b, gesture cross-entropy + ``caption_weight`` x caption LM loss
  (each branch through its own decoder pathway), channel gates at a per-sample budget
  beta (1 with probability 1/2, else uniform in [``beta_min``, 1]);
* router: Gumbel-softmax weights g over the levels times the per-sample penalty of each
  branch, ``loss_b (detached) + cost_weight * FLOPs_b / FLOPs_medium``, plus
  ``complexity_weight`` x the cross-entropy of the router logits against the frame's
  complexity level (:func:`~edge_vlm.model.anc.complexity_level` of the simulator's hand
  speed), minus ``balance_weight`` x the entropy of the batch-mean routing probabilities
  (why the complexity term: docs/design.md, "Router stage");
* gates: ``gate_weight`` x (mean gate - beta)^2 per gated block, so the kept channel
  fraction follows the budget;
* augmentation: every training window is translated by a random offset of up to
  ``shift_px`` pixels (against fitting the training subjects' positions, docs/design.md);
* the sparse path is trained with masks (fixed shapes) on ``sparse_prob`` of the steps:
  the encoders run densely on the memory 1..``sparse_max_age`` frames back, then one
  sparse step recomputes only the tokens whose memory changed since, the others keeping
  their cached inputs, keys, values and outputs (exactly the inference arithmetic), so
  the model learns to tolerate the stale context of reused tokens.

The STTF front end (change-mask net, patch embedding, memory gate) is kept from the STTF
checkpoint (its own latency-regularised training); everything else is trained here.
Validation picks the best epoch (routed accuracy at full budget, early stopping).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge_vlm.model.anc import LEVELS, AncModel, complexity_level
from edge_vlm.inference.factory import load_model
from edge_vlm.model.checkpoint import save_checkpoint
from edge_vlm.model.flops import vit_flops
from edge_vlm.model.sttf import count_parameters
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.training.config import AncTrainConfig
from edge_vlm.training.data import (FrameSet, SubjectSplit, run_frames, sample_indices,
                                    subject_split)
from edge_vlm.training.plots import plot_confusion
from edge_vlm.training.schedule import (RunState, optimizer_step, resume_path, save_resume,
                                        seed_run, start_or_resume, warmup_cosine)
from edge_vlm.training.train import Batch, make_batch


def branch_costs(model: AncModel) -> torch.Tensor:
    """Dense FLOPs of each branch relative to Medium (the router's cost term)."""
    c, a = model.cfg, model.acfg
    fl = [vit_flops(replace(c, mlp_ratio=r), [c.num_tokens] * d)
          for d, r in zip(a.depths, a.mlp_ratios)]
    return torch.tensor(fl) / fl[-1]


def branch_losses(out: dict, ids: torch.Tensor, labels: torch.Tensor, pad: int,
                  cw: float) -> torch.Tensor:
    """Per-branch, per-sample task loss (B, 3): gesture cross-entropy + ``cw`` x caption loss
    of the model output ``out``."""
    per = []
    for o in out["branches"]:
        ce = F.cross_entropy(o["gesture"], labels, reduction="none")
        lm = F.cross_entropy(o["caption"].transpose(1, 2), ids[:, 1:], ignore_index=pad,
                             reduction="none")
        lm = lm.sum(dim=1) / (ids[:, 1:] != pad).sum(dim=1).clamp(min=1)
        per.append(ce + cw * lm)
    return torch.stack(per, dim=1)


def batch_neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Minus the entropy of the batch-mean routing probabilities (the balance term)."""
    mean_p = torch.softmax(logits, dim=-1).mean(dim=0)
    return (mean_p * torch.log(mean_p.clamp(min=1e-8))).sum()


@torch.no_grad()
def evaluate_anc(model: AncModel, fs: FrameSet, tok: Tokenizer, tc: AncTrainConfig,
                 max_samples: int, seed: int = 1, beta: float = 1.0) -> dict:
    """Per-frame accuracy of every branch and of hard routing (full budget), routing shares."""
    model.eval()
    rng = np.random.default_rng(seed)
    idx = sample_indices(fs)
    if len(idx) > max_samples:
        idx = np.sort(rng.choice(idx, max_samples, replace=False))
    correct = np.zeros(4)
    chosen = np.zeros(3)
    level_hits = 0
    by_motion: dict = {}
    k = model.cfg.num_classes
    conf = np.zeros((k, k), dtype=np.int64)
    for s in range(0, len(idx), 24):
        bi = idx[s:s + 24]
        b = make_batch(fs, bi, model.cfg, tok, tc, rng, np.zeros(len(bi), dtype=bool))
        out = model(b.hist, b.rgb, b.has_rgb, b.valid, b.ids[:, :-1],
                    beta=torch.full((len(bi),), beta))
        preds = torch.stack([o["gesture"].argmax(-1) for o in out["branches"]], dim=1)  # (B, 3)
        route = out["router"].argmax(-1)
        routed = preds[torch.arange(len(bi)), route]
        correct[:3] += (preds == b.labels[:, None]).sum(dim=0).numpy()
        correct[3] += int((routed == b.labels).sum())
        chosen += np.bincount(route.numpy(), minlength=3)
        if fs.speed is not None:
            level_hits += int((route.numpy() == complexity_level(fs.speed[bi])).sum())
        np.add.at(conf, (b.labels.numpy(), routed.numpy()), 1)
        for j, i in enumerate(bi):
            mo = fs.motion[i] or "none"
            d = by_motion.setdefault(mo, np.zeros(3))
            d[int(route[j])] += 1
    model.train()
    n = max(1, len(idx))
    return {"accuracy_" + LEVELS[b]: float(correct[b] / n) for b in range(3)} | {
        "accuracy_routed": float(correct[3] / n), "route_share": (chosen / n).tolist(),
        "router_level_agreement": float(level_hits / n) if fs.speed is not None else None,
        "route_share_by_motion": {k: (v / v.sum()).tolist() for k, v in by_motion.items()},
        "frames": int(len(idx)), "confusion": conf.tolist()}


@dataclass
class AncRun:
    """What the steps of a joint run share: the model grown from the STTF checkpoint, its
    trainable parameters (all but the STTF front end) and their optimizer and schedule."""
    model: AncModel
    tok: Tokenizer
    tc: AncTrainConfig
    rng: np.random.Generator
    params: list
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    costs: torch.Tensor                 # branch_costs(model)
    gated: list                         # the blocks with channel gates

    @classmethod
    def start(cls, model: AncModel, tok: Tokenizer, tc: AncTrainConfig,
              rng: np.random.Generator) -> AncRun:
        """Freeze the STTF front end; AdamW and its schedule on the other parameters."""
        frozen = ("mask_net.", "embed.")
        for n, p in model.named_parameters():
            p.requires_grad_(not n.startswith(frozen))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        sched = warmup_cosine(opt, 50, tc.epochs * tc.steps_per_epoch)
        return cls(model, tok, tc, rng, params, opt, sched, branch_costs(model),
                   [blk for br in model.branches for blk in br.blocks])


class AncLosses(NamedTuple):
    """The terms of a joint training step's loss (see the module doc)."""
    task: torch.Tensor
    router: torch.Tensor
    gate: torch.Tensor


def _budget_and_sparse_age(run: AncRun, n: int) -> tuple[torch.Tensor, int | None]:
    """Per-sample budget beta (1 with probability 1/2, else uniform in [beta_min, 1]) and, on
    ``sparse_prob`` of the steps, the age of the dense pass the sparse step starts from."""
    tc, rng = run.tc, run.rng
    u = torch.from_numpy(rng.random(n)).float()
    beta = torch.where(u < 0.5, torch.ones_like(u),
                       tc.beta_min + (1 - tc.beta_min) * torch.rand_like(u))
    k = int(rng.integers(1, tc.sparse_max_age + 1)) if rng.random() < tc.sparse_prob else None
    return beta, k


def _losses(run: AncRun, out: dict, b: Batch, beta: torch.Tensor,
            speed: np.ndarray) -> AncLosses:
    """The loss terms of a step's model output ``out`` (``speed``: the frames' hand speeds)."""
    tc = run.tc
    per = branch_losses(out, b.ids, b.labels, run.tok.pad, tc.caption_weight)        # (B, 3)
    task = per.mean(dim=0).sum()
    g = F.gumbel_softmax(out["router"], tau=1.0, hard=False)
    penalty = per.detach() + tc.cost_weight * run.costs[None]
    balance = batch_neg_entropy(out["router"])                               # = -entropy
    level = torch.from_numpy(complexity_level(speed))
    l_router = ((g * penalty).sum(dim=1).mean() + tc.balance_weight * balance
                + tc.complexity_weight * F.cross_entropy(out["router"], level))
    l_gate = sum(((blk.gates(beta).mean(dim=1) - beta) ** 2).mean()
                 for blk in run.gated) / len(run.gated)
    return AncLosses(task, l_router, l_gate)


class AncEpochMeans(NamedTuple):
    """Means over an epoch's training steps."""
    task_loss: float
    router_loss: float
    gate_loss: float
    accuracy_medium: float              # Medium's gesture accuracy on the training batches
    mean_level: float                   # mean routed level (0 tiny .. 2 medium)


def _train_epoch(run: AncRun, fs: FrameSet, train_idx: np.ndarray, epoch: int,
                 progress: bool) -> AncEpochMeans:
    """``tc.steps_per_epoch`` steps on random, translated batches of labelled frames."""
    model, tc, rng = run.model, run.tc, run.rng
    model.train()
    it = range(tc.steps_per_epoch)
    if progress:
        it = tqdm(it, desc=f"anc epoch {epoch}/{tc.epochs}", unit="step")
    sums = np.zeros(5)
    for _ in it:
        bi = rng.choice(train_idx, tc.batch, replace=False)
        b = make_batch(fs, bi, model.cfg, run.tok, tc, rng, shift_px=tc.shift_px)
        beta, k = _budget_and_sparse_age(run, len(bi))
        out = model(b.hist, b.rgb, b.has_rgb, b.valid, b.ids[:, :-1], beta=beta, sparse_from=k)
        ls = _losses(run, out, b, beta, fs.speed[bi])
        optimizer_step(run.opt, run.sched, ls.task + ls.router + tc.gate_weight * ls.gate,
                       run.params)
        pred = out["branches"][2]["gesture"].detach().argmax(-1)
        sums += [float(ls.task.detach()), float(ls.router.detach()), float(ls.gate.detach()),
                 float((pred == b.labels).float().mean()),
                 float(out["router"].argmax(-1).float().mean())]
        if progress:
            it.set_postfix(task=f"{float(ls.task):.3f}", router=f"{float(ls.router):.3f}")
    return AncEpochMeans(*(sums / tc.steps_per_epoch))


def _test_summary(run: AncRun, split: SubjectSplit, state: RunState, model_id: str,
                  t_start: float, t_data: float, progress: bool) -> dict:
    """The best checkpoint on the held-out test subjects (reported once), its confusion
    figure, and the run's summary (``train_summary_anc.json`` next to the checkpoint)."""
    tc = run.tc
    out_dir = os.path.dirname(os.path.abspath(tc.out))
    best_model, _ = load_model(tc.out)
    fs_test = run_frames(tc, split.test, progress)
    test = evaluate_anc(best_model, fs_test, run.tok, tc, 1500)
    plot_confusion(np.array(test["confusion"]), os.path.join(out_dir, "confusion_test_anc.png"),
                   f"joint STTF+ANC, test subjects {split.test}: routed per-frame accuracy "
                   f"{test['accuracy_routed']:.3f}")
    summary = {"model_id": model_id, "best_epoch": state.best_epoch, "history": state.history,
               "parameters": count_parameters(best_model), "test": test,
               "data_seconds": round(t_data, 1), "total_seconds": round(time.time() - t_start, 1),
               "val_subjects": split.val, "test_subjects": split.test, "checkpoint": tc.out,
               "checkpoint_bytes": os.path.getsize(tc.out)}
    with open(os.path.join(out_dir, "train_summary_anc.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def train_anc(tc: AncTrainConfig, progress: bool = True, resume: bool = False) -> dict:
    """Grow the joint model from ``tc.init`` and train it; the best epoch on validation is
    kept (early stopping), test is reported once at the end. ``resume`` as in
    :func:`~edge_vlm.training.train.train`."""
    rng = seed_run(tc)
    t_start = time.time()
    sttf, meta = load_model(tc.init)
    model = AncModel.grow_from(sttf)
    tok = Tokenizer(model.cfg.vocab)
    split = subject_split(tc)
    fs_train = run_frames(tc, split.train, progress)
    fs_val = run_frames(tc, split.val, progress)
    t_data = time.time() - t_start
    tc = replace(tc, window=model.cfg.max_age)
    run = AncRun.start(model, tok, tc, rng)
    train_idx = sample_indices(fs_train)
    state = start_or_resume(tc.out, resume, model, run.opt, run.sched, rng)
    model_id = f"sttf-anc-d{model.cfg.dim}-s{tc.seed}"
    for epoch in range(state.epoch + 1, tc.epochs + 1):
        if state.bad >= tc.patience:
            break
        means = _train_epoch(run, fs_train, train_idx, epoch, progress)
        val = evaluate_anc(model, fs_val, tok, tc, tc.eval_frames)
        rec = {"epoch": epoch, "train_task_loss": means.task_loss,
               "train_router_loss": means.router_loss, "train_gate_loss": means.gate_loss,
               "train_accuracy_medium": means.accuracy_medium,
               "train_mean_level": means.mean_level,
               **{k: v for k, v in val.items() if k != "confusion"},
               "seconds": round(time.time() - t_start, 1)}
        state.history.append(rec)
        print(json.dumps(rec), flush=True)
        if state.improved(val["accuracy_routed"] + 0.5 * val["accuracy_medium"], epoch):
            save_checkpoint(tc.out, model, extra={
                **{k: v for k, v in meta.items() if k != "train_config"}, "model_id": model_id,
                "grown_from": meta.get("model_id"), "anc_train_config": tc.__dict__,
                "epoch": epoch})
        save_resume(resume_path(tc.out), model, run.opt, run.sched, rng, state)
    return _test_summary(run, split, state, model_id, t_start, t_data, progress)
