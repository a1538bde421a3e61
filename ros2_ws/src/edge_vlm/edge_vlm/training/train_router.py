"""`edge-vlm train --model router`: fit the ANC router of a joint checkpoint on its frozen
branches.

Why a stage of its own: inside the joint training (``train_anc``) the router sees one
small batch per step while the branches move under it, and it settles on one branch for
every frame (docs/design.md, "Router stage"). Here the branches are frozen, so each
training frame's routing problem is fixed and cheap:

1. ``collect``: for ``samples`` labelled training frames (windows as in training, events
   only, no augmentation) the estimator inputs (the last frame's histogram, the change and
   recently-changed fractions) and every branch's task loss at full budget (gesture
   cross-entropy + ``caption_weight`` x caption loss), plus ``static_samples`` frames
   between gestures (no task: only the FLOPs cost and complexity level 0 apply);
2. ``fit``: the estimator (the only trainable part) for ``epochs`` passes with the same
   router objective as the joint stage -- Gumbel-softmax weights x (branch loss +
   ``cost_weight`` x relative FLOPs) + ``complexity_weight`` x cross-entropy against
   :func:`~edge_vlm.model.anc.complexity_level` - ``balance_weight`` x entropy of the
   batch-mean routing -- where the branch losses enter as their gap to the sample's best
   branch, clipped at ``loss_clip`` (a frame that no branch gets right says nothing about
   which branch it needs);
3. validation subjects: routing share by motion and agreement with the complexity level;
   the checkpoint is written with the fitted router and a ``router_fit`` record.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge_vlm.model.anc import LEVELS, AncModel, complexity_level
from edge_vlm.inference.factory import load_model
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.training.config import RouterFitConfig
from edge_vlm.training.data import FrameSet, run_frames, sample_indices, subject_split
from edge_vlm.training.train import make_batch
from edge_vlm.training.train_anc import batch_neg_entropy, branch_costs, branch_losses
from edge_vlm.training.schedule import save_fit, seed_run


class RouterFrames(TypedDict):
    """Collected frames (:func:`collect`): the estimator's inputs and each frame's routing
    problem."""
    hist: torch.Tensor          # (N, C, H, W) uint8: the last frame's event counts
    change: torch.Tensor        # (N,) change fraction
    recent: torch.Tensor        # (N,) recently-changed fraction
    loss: torch.Tensor          # (N, 3) per-branch task loss, NaN for frames without a gesture
    level: torch.Tensor         # (N,) complexity level
    motion: list[str]           # (N,) motion kind ('low' / 'high' / 'static')


@torch.no_grad()
def collect(model: AncModel, fs: FrameSet, idx: np.ndarray, tok: Tokenizer, tc: RouterFitConfig,
            rng: np.random.Generator, progress: bool = True) -> RouterFrames:
    """Estimator inputs, per-branch losses (NaN for frames without a gesture) and levels of
    ``idx``."""
    model.eval()
    hist, cf, rf, loss = [], [], [], []
    it = range(0, len(idx), 24)
    if progress:
        it = tqdm(it, desc="router: collect", unit="batch")
    for s in it:
        bi = idx[s:s + 24]
        b = make_batch(fs, bi, model.cfg, tok, tc, rng, np.zeros(len(bi), dtype=bool))
        lab = b.labels >= 0
        out = model(b.hist, b.rgb, b.has_rgb, b.valid, b.ids[:, :-1], beta=None)
        per = torch.full((len(bi), len(LEVELS)), float("nan"))
        if bool(lab.any()):
            sub = {"branches": [{k: v[lab] for k, v in o.items()} for o in out["branches"]]}
            per[lab] = branch_losses(sub, b.ids[lab], b.labels[lab], tok.pad, tc.caption_weight)
        h_last, c, r = out["estimator_inputs"]
        hist.append(h_last.to(torch.uint8))           # (make_batch's counts are uint8 already)
        cf.append(c)
        rf.append(r)
        loss.append(per)
    speed = fs.speed[idx] if fs.speed is not None else np.zeros(len(idx), dtype=np.float32)
    return RouterFrames(hist=torch.cat(hist), change=torch.cat(cf), recent=torch.cat(rf),
                        loss=torch.cat(loss), level=torch.from_numpy(complexity_level(speed)),
                        motion=[fs.motion[i] or "static" for i in idx])


def router_objective(logits: torch.Tensor, loss: torch.Tensor, level: torch.Tensor,
                     costs: torch.Tensor, tc: RouterFitConfig) -> torch.Tensor:
    """The router loss of a batch (see the module doc); ``loss`` (B, 3) NaN for frames without
    a task."""
    task = loss - torch.nan_to_num(loss, nan=0.0).min(dim=1, keepdim=True).values
    task = torch.nan_to_num(task, nan=0.0).clamp(max=tc.loss_clip)
    g = F.gumbel_softmax(logits, tau=1.0, hard=False)
    neg_entropy = batch_neg_entropy(logits)
    return ((g * (task + tc.cost_weight * costs[None])).sum(dim=1).mean()
            + tc.complexity_weight * F.cross_entropy(logits, level)
            + tc.balance_weight * neg_entropy)


@torch.no_grad()
def routing_report(model: AncModel, data: RouterFrames) -> dict:
    """Hard routing (argmax) of the collected frames: share per motion kind, level agreement,
    and the routed frames' mean task loss against Medium's."""
    logits = model.estimator(data["hist"].float(), data["change"], data["recent"])
    route = logits.argmax(dim=-1)
    motions = np.array(data["motion"])
    share = {str(m): np.bincount(route[motions == m].numpy(), minlength=3).tolist()
             for m in sorted(set(data["motion"]))}
    lab = ~torch.isnan(data["loss"][:, 0])
    routed = data["loss"][lab].gather(1, route[lab][:, None])[:, 0]
    return {"route_share": (np.bincount(route.numpy(), minlength=3)
                            / max(1, len(route))).tolist(),
            "route_share_by_motion": {m: (np.array(v) / max(1, sum(v))).round(4).tolist()
                                      for m, v in share.items()},
            "level_agreement": float((route == data["level"]).float().mean()),
            "task_loss_routed": float(routed.mean()) if len(routed) else None,
            "task_loss_medium": float(data["loss"][lab][:, 2].mean()) if len(routed) else None,
            "frames": int(len(route))}


def fit_estimator(model: AncModel, train: RouterFrames, val: RouterFrames | None,
                  costs: torch.Tensor, tc: RouterFitConfig, rng: np.random.Generator,
                  progress: bool = False) -> list[dict]:
    """Train ``model.estimator`` (only) on collected frames with :func:`router_objective`;
    returns a validation record every 10 epochs."""
    est = model.estimator
    for p in model.parameters():
        p.requires_grad_(False)
    for p in est.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(est.parameters(), lr=tc.lr)
    n = len(train["level"])
    history = []
    for epoch in range(1, tc.epochs + 1):
        perm = torch.from_numpy(rng.permutation(n))
        tot = 0.0
        for s in range(0, n, tc.batch):
            j = perm[s:s + tc.batch]
            logits = est(train["hist"][j].float(), train["change"][j], train["recent"][j])
            loss = router_objective(logits, train["loss"][j], train["level"][j], costs, tc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(j)
        if val is not None and (epoch % 10 == 0 or epoch == tc.epochs):
            rec = {"epoch": epoch, "train_router_loss": tot / n, "val": routing_report(model, val)}
            history.append(rec)
            if progress:
                print(json.dumps(rec), flush=True)
    for p in est.parameters():
        p.requires_grad_(False)
    return history


def _pick(fs: FrameSet, n_lab: int, n_static: int, rng: np.random.Generator) -> np.ndarray:
    """``n_lab`` labelled frames and ``n_static`` frames between gestures, drawn at random
    (sorted)."""
    lab = sample_indices(fs)
    gap = np.flatnonzero(fs.labels == 0)
    a = rng.choice(lab, min(n_lab, len(lab)), replace=False)
    b = (rng.choice(gap, min(n_static, len(gap)), replace=False) if len(gap)
         else np.zeros(0, np.int64))
    return np.sort(np.concatenate([a, b]))


def fit_router(tc: RouterFitConfig, progress: bool = True) -> dict:
    """Fit the router of the joint checkpoint ``tc.init`` on its frozen branches; write the
    checkpoint with a ``router_fit`` record and ``router_fit.json`` next to it."""
    rng = seed_run(tc)
    t0 = time.time()
    model, meta = load_model(tc.init)
    if not isinstance(model, AncModel):
        raise ValueError(f"{tc.init or 'the shipped checkpoint'} is not a joint STTF+ANC "
                         "checkpoint")
    tok = Tokenizer(model.cfg.vocab)
    tc = replace(tc, window=model.cfg.max_age)
    split = subject_split(tc)
    fs_train = run_frames(tc, split.train, progress, with_frames=False)
    fs_val = run_frames(tc, split.val, progress, with_frames=False)
    train = collect(model, fs_train, _pick(fs_train, tc.samples, tc.static_samples, rng), tok,
                    tc, rng, progress)
    val = collect(model, fs_val, _pick(fs_val, tc.val_samples, tc.val_samples // 4, rng), tok,
                  tc, rng, progress)
    t_collect = time.time() - t0
    before = {"train": routing_report(model, train), "val": routing_report(model, val)}

    history = fit_estimator(model, train, val, branch_costs(model), tc, rng, progress)
    after = {"train": routing_report(model, train), "val": routing_report(model, val)}
    fit = {"config": {k: v for k, v in tc.__dict__.items()}, "before": before, "after": after,
           "val_subjects": split.val, "seconds": round(time.time() - t0, 1),
           "collect_seconds": round(t_collect, 1)}
    return save_fit(tc.out, model, meta, "router_fit", fit, history)
