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

import numpy as np
import torch
import torch.nn.functional as F

from edge_vlm.model.sttf import (CaptionModel, ModelConfig, causal_lm_loss, count_parameters,
    init_weights)
from edge_vlm.training.data import FrameSet, build_frames, history_indices, sample_indices
from edge_vlm.model.checkpoint import save_checkpoint
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.training.config import LIGHTINGS, TrainConfig


def shift_window(x: np.ndarray, dy: int, dx: int, axes: tuple[int, int]) -> np.ndarray:
    """Translate images along ``axes`` (y, x) by (dy, dx) pixels, zero-filled (no wrap-around)."""
    out = np.zeros_like(x)
    ay, ax = axes
    h, w = x.shape[ay], x.shape[ax]
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    src[ay], dst[ay] = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src[ax], dst[ax] = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[tuple(dst)] = x[tuple(src)]
    return out


def make_batch(fs: FrameSet, idx: np.ndarray, cfg: ModelConfig, tok: Tokenizer, tc: TrainConfig,
               rng: np.random.Generator, use_rgb: np.ndarray | None = None, shift_px: int = 0):
    """A window of ``tc.window`` frames ending at each target frame (uint8, as the nodes bin them).
    ``shift_px`` > 0: augmentation, each window translated by a random (dy, dx) in
    [-shift_px, shift_px] (the same for all its frames: subjects stand elsewhere in the view)."""
    hidx, valid = history_indices(fs, idx, tc.window)
    b = len(idx)
    hist = fs.hist[hidx] * valid[:, :, None, None, None].astype(np.uint8)      # (B,T,C,H,W)
    if use_rgb is None:
        use_rgb = (rng.random(b) < tc.rgb_prob) if fs.rgb is not None else np.zeros(b, dtype=bool)
    shifts = rng.integers(-shift_px, shift_px + 1, size=(b, 2)) if shift_px > 0 else None
    if shifts is not None:
        hist = np.stack([shift_window(hist[i], int(dy), int(dx), (2, 3)) for i, (dy, dx) in enumerate(shifts)])
    rgb = None
    if use_rgb.any():
        frames = fs.rgb[hidx]
        if shifts is not None:
            frames = np.stack([shift_window(frames[i], int(dy), int(dx), (1, 2))
                               for i, (dy, dx) in enumerate(shifts)])
        rgb = torch.from_numpy(frames)
    ids = torch.tensor([tok.encode(fs.captions[i], cfg.max_len) for i in idx])
    labels = torch.from_numpy(fs.labels[idx] - 1)
    return (torch.from_numpy(hist), rgb, torch.from_numpy(use_rgb), torch.from_numpy(valid), ids, labels)


@torch.no_grad()
def evaluate(model: CaptionModel, fs: FrameSet, tok: Tokenizer, tc: TrainConfig, use_rgb: bool,
             max_samples: int = 600, seed: int = 1) -> dict:
    """Per-frame gesture accuracy, loss, confusion, teacher-forced token accuracy, active-token ratio."""
    model.eval()
    rng = np.random.default_rng(seed)
    idx = sample_indices(fs)
    if len(idx) > max_samples:
        idx = np.sort(rng.choice(idx, max_samples, replace=False))
    k = model.cfg.num_classes
    conf = np.zeros((k, k), dtype=np.int64)
    loss_sum, tok_ok, tok_n, act = 0.0, 0, 0, []
    for s in range(0, len(idx), 32):
        bi = idx[s:s + 32]
        hist, rgb, has_rgb, valid, ids, labels = make_batch(
            fs, bi, model.cfg, tok, tc, rng, np.full(len(bi), use_rgb and fs.rgb is not None))
        out = model(hist, rgb, has_rgb, valid, ids[:, :-1])
        g = out["gesture"]
        np.add.at(conf, (labels.numpy(), g.argmax(-1).numpy()), 1)
        loss_sum += float(F.cross_entropy(g, labels, reduction="sum"))
        tgt = ids[:, 1:]
        m = tgt != tok.pad
        tok_ok += int(((out["caption"].argmax(-1) == tgt) & m).sum())
        tok_n += int(m.sum())
        act.append(out["mask"].float().mean(dim=1))
    model.train()
    n = int(conf.sum())
    return {"accuracy": float(np.trace(conf)) / max(1, n), "loss": loss_sum / max(1, n),
            "token_accuracy": tok_ok / max(1, tok_n), "frames": n, "confusion": conf.tolist(),
            "active_fraction": float(torch.cat(act).mean()) if act else 0.0}


def plot_curves(history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="validation")
    ax[0].set_title("gesture loss")
    ax[1].plot(ep, [h["train_accuracy"] for h in history], label="train")
    ax[1].plot(ep, [h["val_accuracy"] for h in history], label="validation")
    ax[1].set_title("gesture accuracy (per frame)")
    ax[2].plot(ep, [h["train_active"] for h in history], label="train")
    ax[2].plot(ep, [h["val_active"] for h in history], label="validation")
    ax[2].set_title("change-mask active-token fraction")
    for a in ax:
        a.set_xlabel("epoch")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(conf: np.ndarray, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES

    norm = conf / np.maximum(1, conf.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(norm)), GESTURE_CLASSES[:len(norm)], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(norm)), GESTURE_CLASSES[:len(norm)], fontsize=7)
    for i in range(len(norm)):
        for j in range(len(norm)):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _state_path(out: str) -> str:
    return out + ".resume"


def save_resume(path: str, model, opt, sched, rng: np.random.Generator, progress: dict) -> None:
    """Everything needed to continue training after ``progress['epoch']`` (``--resume``)."""
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), **progress}, path)


def load_resume(path: str, model, opt, sched, rng: np.random.Generator) -> dict:
    """Restore what :func:`save_resume` wrote; returns the progress (history, best, best_epoch, bad, epoch)."""
    st = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    sched.load_state_dict(st["sched"])
    rng.bit_generator.state = st["rng"]
    torch.set_rng_state(st["torch_rng"])
    print(f"resumed after epoch {st['epoch']}", flush=True)
    return {k: st[k] for k in ("history", "best", "best_epoch", "bad", "epoch")}


def train(tc: TrainConfig, progress: bool = True, resume: bool = False) -> dict:
    """Train, keep the best epoch on validation (early stopping), report test once at the end.

    ``resume``: continue from ``<out>.resume`` (saved after every epoch: model, optimizer,
    scheduler, RNG states, history)."""
    from edge_vlm.sim import split_subjects

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
    cfg = ModelConfig(dim=tc.dim, depth=tc.depth, max_age=tc.window, vocab=tok.vocab)
    model = CaptionModel(cfg)
    init_weights(model)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total_steps = tc.epochs * tc.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps))))
    train_idx = sample_indices(fs_train)
    history, best, best_epoch, bad, first_epoch = [], -1.0, 0, 0, 1
    os.makedirs(os.path.dirname(os.path.abspath(tc.out)) or ".", exist_ok=True)
    state_path = _state_path(tc.out)
    if resume and os.path.isfile(state_path):
        st = load_resume(state_path, model, opt, sched, rng)
        history, best, best_epoch, bad, first_epoch = (st["history"], st["best"], st["best_epoch"], st["bad"],
                                                       st["epoch"] + 1)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    model_id = f"sttf-d{tc.dim}-l{tc.depth}-w{tc.window}-s{tc.seed}"
    for epoch in range(first_epoch, tc.epochs + 1):
        if bad >= tc.patience:
            break
        model.train()
        it = range(tc.steps_per_epoch)
        if progress and tqdm is not None:
            it = tqdm(it, desc=f"epoch {epoch}/{tc.epochs}", unit="step")
        loss_sum, acc_sum, act_sum = 0.0, 0.0, 0.0
        for _ in it:
            bi = rng.choice(train_idx, tc.batch, replace=False)
            hist, rgb, has_rgb, valid, ids, labels = make_batch(fs_train, bi, cfg, tok, tc, rng)
            out = model(hist, rgb, has_rgb, valid, ids[:, :-1])
            g = out["gesture"]
            lg = F.cross_entropy(g, labels)
            lc = causal_lm_loss(out["caption"], ids[:, 1:], tok.pad)
            la = out["p_change"].mean()                 # expected active-token ratio (latency term)
            loss = lg + tc.caption_weight * lc + tc.active_weight * F.relu(la - tc.active_target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += float(lg.detach())
            acc_sum += float((g.detach().argmax(-1) == labels).float().mean())
            act_sum += float(out["mask"].float().mean())
            if progress and tqdm is not None:
                it.set_postfix(gesture=f"{float(lg):.3f}", caption=f"{float(lc):.3f}", active=f"{float(la):.3f}")
        val = evaluate(model, fs_val, tok, tc, use_rgb=False, max_samples=tc.eval_frames)
        rec = {"epoch": epoch, "train_loss": loss_sum / tc.steps_per_epoch,
               "train_accuracy": acc_sum / tc.steps_per_epoch, "train_active": act_sum / tc.steps_per_epoch,
               "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_token_accuracy": val["token_accuracy"],
               "val_active": val["active_fraction"], "seconds": round(time.time() - t_start, 1)}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        score = val["accuracy"] + 0.1 * val["token_accuracy"]
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            save_checkpoint(tc.out, model, extra={"model_id": model_id, "train_config": tc.__dict__, "epoch": epoch})
        else:
            bad += 1
            if bad >= tc.patience:
                print(f"early stopping at epoch {epoch} (best {best_epoch})", flush=True)
        save_resume(state_path, model, opt, sched, rng,
                    {"history": history, "best": best, "best_epoch": best_epoch, "bad": bad, "epoch": epoch})
    out_dir = os.path.dirname(os.path.abspath(tc.out))
    plot_curves(history, os.path.join(out_dir, "training_curves.png"))
    # the best checkpoint on validation and on the held-out test subjects (reported once)
    from edge_vlm.model.checkpoint import load_checkpoint

    best_model, _ = load_checkpoint(tc.out)
    fs_test = build_frames(test_ids, LIGHTINGS, **kw)
    val = evaluate(best_model, fs_val, tok, tc, use_rgb=False, max_samples=10**9)
    test = evaluate(best_model, fs_test, tok, tc, use_rgb=False, max_samples=10**9)
    test_rgb = evaluate(best_model, fs_test, tok, tc, use_rgb=True, max_samples=10**9)
    plot_confusion(np.array(test["confusion"]), os.path.join(out_dir, "confusion_test.png"),
                   f"test subjects {test_ids}, events only: per-frame accuracy {test['accuracy']:.3f}")
    summary = {"model_id": model_id, "best_epoch": best_epoch, "history": history,
               "parameters": count_parameters(model),
               "val": {k: v for k, v in val.items() if k != "confusion"},
               "test_events_only": test, "test_rgb_events": {k: v for k, v in test_rgb.items() if k != "confusion"},
               "data_seconds": round(t_data, 1), "total_seconds": round(time.time() - t_start, 1),
               "train_frames": int(len(train_idx)), "val_subjects": val_ids, "test_subjects": test_ids,
               "checkpoint": tc.out, "checkpoint_bytes": os.path.getsize(tc.out)}
    with open(os.path.join(out_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
