"""`edge-vlm train`: train the captioning model on simulated recordings (CPU friendly).

Held-out subjects: subjects are split into train / validation / test with
``edge_vlm.sim.split_subjects``; validation picks the best epoch (early
stopping), test is reported once at the end. Everything is seeded.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .captioner import CaptionModel, ModelConfig, causal_lm_loss, count_parameters, init_weights
from .data import FrameSet, build_frames, history_indices, sample_indices
from .engine import save_checkpoint
from .tokenizer import Tokenizer

LIGHTINGS = ("lab", "fluorescent", "natural")


@dataclass
class TrainConfig:
    out: str = "data/train/captioner.pt"
    subjects: int = 20
    val_subjects: int = 3
    test_subjects: int = 3
    clip_s: float = 1.5
    gap_s: float = 0.3
    epochs: int = 20
    batch: int = 32
    steps_per_epoch: int = 125
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    threads: int = 2
    workers: int = 2
    patience: int = 4
    rgb_prob: float = 0.3
    event_count_threshold: int = 3
    period_ns: int = 33_333_333
    dim: int = 96
    history: int = 16
    caption_weight: float = 1.0


def to_patches(img: np.ndarray, patch: int) -> np.ndarray:
    """(M, C, H, W) -> (M, N, C, patch*patch), the layout of :func:`patchify` before flattening."""
    m, c, h, w = img.shape
    g = h // patch
    x = img.reshape(m, c, g, patch, g, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(m, g * g, c, patch * patch)


def make_batch(fs: FrameSet, idx: np.ndarray, cfg: ModelConfig, tok: Tokenizer, tc: TrainConfig,
               rng: np.random.Generator, use_rgb: np.ndarray | None = None):
    """Patches (B,K,N,patch_dim) exactly as the streaming engine builds them (denoised log1p events + RGB)."""
    hidx, valid = history_indices(fs, idx, cfg.history)
    b, k = hidx.shape
    flat = hidx.reshape(-1)
    ev = to_patches(fs.hist[flat], cfg.patch)                          # uint8 (BK, N, 4, 64)
    counts = ev.sum(axis=(2, 3), dtype=np.int32) * valid.reshape(-1, 1)
    active = counts >= tc.event_count_threshold
    evf = np.log1p(ev.astype(np.float32)) * active[:, :, None, None]
    if use_rgb is None:
        use_rgb = (rng.random(b) < tc.rgb_prob) if fs.rgb is not None else np.zeros(b, dtype=bool)
    rgbp = np.zeros(evf.shape[:2] + (cfg.rgb_channels, cfg.patch * cfg.patch), dtype=np.float32)
    sel = np.repeat(use_rgb, k) & valid.reshape(-1)
    if sel.any():
        img = fs.rgb[flat[sel]].transpose(0, 3, 1, 2)
        rgbp[sel] = to_patches(img, cfg.patch).astype(np.float32) / 255.0 - 0.5
    patches = np.concatenate([evf, rgbp], axis=2).reshape(b, k, cfg.num_tokens, cfg.patch_dim)
    ids = torch.tensor([tok.encode(fs.captions[i], cfg.max_len) for i in idx])
    labels = torch.from_numpy(fs.labels[idx] - 1)
    return (torch.from_numpy(patches), torch.from_numpy(active.reshape(b, k, -1)), torch.from_numpy(use_rgb),
            ids, labels)


@torch.no_grad()
def evaluate(model: CaptionModel, fs: FrameSet, tok: Tokenizer, tc: TrainConfig, use_rgb: bool,
             max_samples: int = 800, seed: int = 1) -> dict:
    """Per-frame gesture accuracy and teacher-forced caption loss / token accuracy."""
    model.eval()
    rng = np.random.default_rng(seed)
    idx = sample_indices(fs)
    if len(idx) > max_samples:
        idx = np.sort(rng.choice(idx, max_samples, replace=False))
    correct, n, loss_sum, tok_ok, tok_n = 0, 0, 0.0, 0, 0
    for s in range(0, len(idx), 64):
        bi = idx[s:s + 64]
        frames, active, has_rgb, ids, labels = make_batch(
            fs, bi, model.cfg, tok, tc, rng, np.full(len(bi), use_rgb and fs.rgb is not None))
        g, logits = model(frames, active, has_rgb, ids[:, :-1])
        correct += int((g.argmax(-1) == labels).sum())
        n += len(bi)
        loss_sum += float(F.cross_entropy(g, labels, reduction="sum"))
        tgt = ids[:, 1:]
        m = tgt != tok.pad
        tok_ok += int(((logits.argmax(-1) == tgt) & m).sum())
        tok_n += int(m.sum())
    model.train()
    return {"accuracy": correct / max(1, n), "loss": loss_sum / max(1, n), "token_accuracy": tok_ok / max(1, tok_n),
            "frames": n}


def plot_curves(history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="validation")
    ax[0].set_title("gesture loss")
    ax[1].plot(ep, [h["train_accuracy"] for h in history], label="train")
    ax[1].plot(ep, [h["val_accuracy"] for h in history], label="validation")
    ax[1].set_title("gesture accuracy (per frame)")
    for a in ax:
        a.set_xlabel("epoch")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(tc: TrainConfig, progress: bool = True) -> dict:
    from ..sim import split_subjects

    torch.manual_seed(tc.seed)
    torch.set_num_threads(tc.threads)
    rng = np.random.default_rng(tc.seed)
    t_start = time.time()
    train_ids, test_ids = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    val_ids, test_ids = list(test_ids[:tc.val_subjects]), list(test_ids[tc.val_subjects:])
    kw = dict(seed=tc.seed, period=tc.period_ns, clip_s=tc.clip_s, gap_s=tc.gap_s, workers=tc.workers,
              progress=progress)
    fs_train = build_frames(list(train_ids), LIGHTINGS, **kw)
    fs_val = build_frames(val_ids, LIGHTINGS, **kw)
    t_data = time.time() - t_start

    tok = Tokenizer.build([c for c in fs_train.captions if c] + [r for rs in fs_train.references for r in rs])
    cfg = ModelConfig(dim=tc.dim, history=tc.history, vocab=tok.vocab)
    model = CaptionModel(cfg)
    init_weights(model)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total_steps = tc.epochs * tc.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps))))
    train_idx = sample_indices(fs_train)
    history, best, best_epoch, bad = [], -1.0, 0, 0
    os.makedirs(os.path.dirname(os.path.abspath(tc.out)) or ".", exist_ok=True)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    for epoch in range(1, tc.epochs + 1):
        model.train()
        it = range(tc.steps_per_epoch)
        if progress and tqdm is not None:
            it = tqdm(it, desc=f"epoch {epoch}/{tc.epochs}", unit="step")
        loss_sum, acc_sum = 0.0, 0.0
        for _ in it:
            bi = rng.choice(train_idx, tc.batch, replace=False)
            frames, active, has_rgb, ids, labels = make_batch(fs_train, bi, cfg, tok, tc, rng)
            g, logits = model(frames, active, has_rgb, ids[:, :-1])
            lg = F.cross_entropy(g, labels)
            lc = causal_lm_loss(logits, ids[:, 1:], tok.pad)
            loss = lg + tc.caption_weight * lc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += float(lg.detach())
            acc_sum += float((g.detach().argmax(-1) == labels).float().mean())
            if progress and tqdm is not None:
                it.set_postfix(gesture=f"{float(lg):.3f}", caption=f"{float(lc):.3f}")
        val = evaluate(model, fs_val, tok, tc, use_rgb=False)
        rec = {"epoch": epoch, "train_loss": loss_sum / tc.steps_per_epoch,
               "train_accuracy": acc_sum / tc.steps_per_epoch, "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "val_token_accuracy": val["token_accuracy"]}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        score = val["accuracy"] + 0.1 * val["token_accuracy"]
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            save_checkpoint(tc.out, model, extra={"model_id": f"captioner-d{tc.dim}-h{tc.history}-s{tc.seed}",
                                                  "train_config": tc.__dict__, "epoch": epoch})
        else:
            bad += 1
            if bad >= tc.patience:
                print(f"early stopping at epoch {epoch} (best {best_epoch})", flush=True)
                break
    out_dir = os.path.dirname(os.path.abspath(tc.out))
    plot_curves(history, os.path.join(out_dir, "training_curves.png"))
    summary = {"best_epoch": best_epoch, "history": history, "parameters": count_parameters(model),
               "data_seconds": round(t_data, 1), "total_seconds": round(time.time() - t_start, 1),
               "train_frames": int(len(train_idx)), "val_subjects": val_ids, "test_subjects": test_ids,
               "checkpoint": tc.out, "checkpoint_bytes": os.path.getsize(tc.out)}
    with open(os.path.join(out_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
