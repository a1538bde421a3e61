"""`edge-vlm train --model anc`: the joint STTF + ANC model, grown from a trained STTF checkpoint.

Composite loss per step (windows as in STTF training, batch ``batch``):

* task: for every branch b, gesture cross-entropy + ``caption_weight`` x caption LM loss
  (each branch through its own decoder pathway), channel gates at a per-sample budget
  beta (1 with probability 1/2, else uniform in [``beta_min``, 1]);
* router: Gumbel-softmax weights g over the levels times the per-sample penalty of each
  branch, ``loss_b (detached) + cost_weight * FLOPs_b / FLOPs_medium``, plus
  ``complexity_weight`` x the cross-entropy of the router logits against the frame's
  complexity level (:func:`~edge_vlm.model.anc.complexity_level` of the simulator's hand
  speed), minus ``balance_weight`` x the entropy of the batch-mean routing probabilities.
  Without the complexity term the router collapsed onto Tiny in the first shipped run
  (the branches' losses differ less than their FLOPs cost, and an entropy term alone did
  not prevent it, see docs/design.md);
* gates: ``gate_weight`` x (mean gate - beta)^2 per gated block, so the kept channel
  fraction follows the budget;
* augmentation: every training window is translated by a random offset of up to
  ``shift_px`` pixels (the STTF run overfits the 14 training subjects' positions);
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
import math
import os
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from edge_vlm.model.anc import LEVELS, AncModel, complexity_level
from edge_vlm.model.sttf import count_parameters
from edge_vlm.training.data import build_frames, sample_indices
from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint
from edge_vlm.model.flops import vit_flops
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.training.train import load_resume, make_batch, plot_confusion, save_resume
from edge_vlm.training.config import LIGHTINGS, AncTrainConfig


def branch_costs(model: AncModel) -> torch.Tensor:
    """Dense FLOPs of each branch relative to Medium (the router's cost term)."""
    c, a = model.cfg, model.acfg
    fl = [vit_flops(replace(c, mlp_ratio=r), [c.num_tokens] * d) for d, r in zip(a.depths, a.mlp_ratios)]
    return torch.tensor(fl) / fl[-1]


def _losses(model: AncModel, out: dict, ids: torch.Tensor, labels: torch.Tensor, pad: int, cw: float):
    """Per-branch, per-sample task loss (B, 3)."""
    per = []
    for o in out["branches"]:
        ce = F.cross_entropy(o["gesture"], labels, reduction="none")
        lm = F.cross_entropy(o["caption"].transpose(1, 2), ids[:, 1:], ignore_index=pad, reduction="none")
        lm = lm.sum(dim=1) / (ids[:, 1:] != pad).sum(dim=1).clamp(min=1)
        per.append(ce + cw * lm)
    return torch.stack(per, dim=1)


@torch.no_grad()
def evaluate_anc(model: AncModel, fs, tok: Tokenizer, tc: AncTrainConfig, max_samples: int, seed: int = 1,
                 beta: float = 1.0) -> dict:
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
        hist, rgb, has_rgb, valid, ids, labels = make_batch(fs, bi, model.cfg, tok, tc, rng,
                                                            np.zeros(len(bi), dtype=bool))
        out = model(hist, rgb, has_rgb, valid, ids[:, :-1], beta=torch.full((len(bi),), beta))
        preds = torch.stack([o["gesture"].argmax(-1) for o in out["branches"]], dim=1)    # (B, 3)
        route = out["router"].argmax(-1)
        routed = preds[torch.arange(len(bi)), route]
        correct[:3] += (preds == labels[:, None]).sum(dim=0).numpy()
        correct[3] += int((routed == labels).sum())
        chosen += np.bincount(route.numpy(), minlength=3)
        if fs.speed is not None:
            level_hits += int((route.numpy() == complexity_level(fs.speed[bi])).sum())
        np.add.at(conf, (labels.numpy(), routed.numpy()), 1)
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


def train_anc(tc: AncTrainConfig, progress: bool = True, resume: bool = False) -> dict:
    from edge_vlm.sim import split_subjects

    torch.manual_seed(tc.seed)
    torch.set_num_threads(tc.threads)
    rng = np.random.default_rng(tc.seed)
    t_start = time.time()
    sttf, meta = load_checkpoint(tc.init)
    model = AncModel.grow_from(sttf)
    tok = Tokenizer(model.cfg.vocab)
    train_ids, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    val_ids, test_ids = list(held[:tc.val_subjects]), list(held[tc.val_subjects:])
    kw = dict(seed=tc.seed, period=tc.period_ns, clip_s=tc.clip_s, gap_s=tc.gap_s, workers=tc.workers,
              progress=progress)
    fs_train = build_frames(list(train_ids), LIGHTINGS, **kw)
    fs_val = build_frames(val_ids, LIGHTINGS, **kw)
    t_data = time.time() - t_start
    tc = replace(tc, window=model.cfg.max_age)
    frozen = ("mask_net.", "embed.")
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(frozen))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    total = tc.epochs * tc.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    costs = branch_costs(model)
    train_idx = sample_indices(fs_train)
    history, best, best_epoch, bad, first = [], -1.0, 0, 0, 1
    os.makedirs(os.path.dirname(os.path.abspath(tc.out)) or ".", exist_ok=True)
    state_path = tc.out + ".resume"
    if resume and os.path.isfile(state_path):
        st = load_resume(state_path, model, opt, sched, rng)
        history, best, best_epoch, bad, first = st["history"], st["best"], st["best_epoch"], st["bad"], st["epoch"] + 1
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    model_id = f"sttf-anc-d{model.cfg.dim}-s{tc.seed}"
    gated = [blk for br in model.branches for blk in br.blocks]
    for epoch in range(first, tc.epochs + 1):
        if bad >= tc.patience:
            break
        model.train()
        it = range(tc.steps_per_epoch)
        if progress and tqdm is not None:
            it = tqdm(it, desc=f"anc epoch {epoch}/{tc.epochs}", unit="step")
        sums = np.zeros(5)
        for _ in it:
            bi = rng.choice(train_idx, tc.batch, replace=False)
            hist, rgb, has_rgb, valid, ids, labels = make_batch(fs_train, bi, model.cfg, tok, tc, rng,
                                                                shift_px=tc.shift_px)
            u = torch.from_numpy(rng.random(len(bi))).float()
            beta = torch.where(u < 0.5, torch.ones_like(u), tc.beta_min + (1 - tc.beta_min) * torch.rand_like(u))
            k = int(rng.integers(1, tc.sparse_max_age + 1)) if rng.random() < tc.sparse_prob else None
            out = model(hist, rgb, has_rgb, valid, ids[:, :-1], beta=beta, sparse_from=k)
            per = _losses(model, out, ids, labels, tok.pad, tc.caption_weight)            # (B, 3)
            task = per.mean(dim=0).sum()
            g = F.gumbel_softmax(out["router"], tau=1.0, hard=False)
            penalty = per.detach() + tc.cost_weight * costs[None]
            mean_p = torch.softmax(out["router"], dim=-1).mean(dim=0)
            balance = (mean_p * torch.log(mean_p.clamp(min=1e-8))).sum()               # = -entropy
            level = torch.from_numpy(complexity_level(fs_train.speed[bi]))
            l_router = ((g * penalty).sum(dim=1).mean() + tc.balance_weight * balance
                        + tc.complexity_weight * F.cross_entropy(out["router"], level))
            l_gate = sum(((blk.gates(beta).mean(dim=1) - beta) ** 2).mean() for blk in gated) / len(gated)
            loss = task + l_router + tc.gate_weight * l_gate
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            pred = out["branches"][2]["gesture"].detach().argmax(-1)
            sums += [float(task.detach()), float(l_router.detach()), float(l_gate.detach()),
                     float((pred == labels).float().mean()), float(out["router"].argmax(-1).float().mean())]
            if progress and tqdm is not None:
                it.set_postfix(task=f"{float(task):.3f}", router=f"{float(l_router):.3f}")
        val = evaluate_anc(model, fs_val, tok, tc, tc.eval_frames)
        rec = {"epoch": epoch, "train_task_loss": sums[0] / tc.steps_per_epoch,
               "train_router_loss": sums[1] / tc.steps_per_epoch, "train_gate_loss": sums[2] / tc.steps_per_epoch,
               "train_accuracy_medium": sums[3] / tc.steps_per_epoch,
               "train_mean_level": sums[4] / tc.steps_per_epoch,
               **{k: v for k, v in val.items() if k != "confusion"}, "seconds": round(time.time() - t_start, 1)}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        score = val["accuracy_routed"] + 0.5 * val["accuracy_medium"]
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            save_checkpoint(tc.out, model, extra={**{k: v for k, v in meta.items() if k != "train_config"},
                                                  "model_id": model_id, "grown_from": meta.get("model_id"),
                                                  "anc_train_config": tc.__dict__, "epoch": epoch})
        else:
            bad += 1
        save_resume(state_path, model, opt, sched, rng,
                    {"history": history, "best": best, "best_epoch": best_epoch, "bad": bad, "epoch": epoch})
    out_dir = os.path.dirname(os.path.abspath(tc.out))
    best_model, _ = load_checkpoint(tc.out)
    fs_test = build_frames(test_ids, LIGHTINGS, **kw)
    test = evaluate_anc(best_model, fs_test, tok, tc, 1500)
    plot_confusion(np.array(test["confusion"]), os.path.join(out_dir, "confusion_test_anc.png"),
                   f"joint STTF+ANC, test subjects {test_ids}: routed per-frame accuracy {test['accuracy_routed']:.3f}")
    summary = {"model_id": model_id, "best_epoch": best_epoch, "history": history,
               "parameters": count_parameters(best_model), "test": test, "data_seconds": round(t_data, 1),
               "total_seconds": round(time.time() - t_start, 1), "val_subjects": val_ids, "test_subjects": test_ids,
               "checkpoint": tc.out, "checkpoint_bytes": os.path.getsize(tc.out)}
    with open(os.path.join(out_dir, "train_summary_anc.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
