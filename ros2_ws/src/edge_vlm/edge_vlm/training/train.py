"""`edge-vlm train`: train the captioning model on simulated recordings (CPU friendly), or with
``--data`` on the real DVS128 Gesture download (:func:`train_real`).

Held-out subjects: subjects are split into train / validation / test with
``edge_vlm.sim.split_subjects``; validation picks the best epoch (early
stopping), test is reported once at the end. Everything is seeded. On real data the split is
the official one (``trials_to_train.txt`` / ``trials_to_test.txt``) with validation users held
out of the train trials, and the test report adds the paper's per-sample accuracy.
"""
from __future__ import annotations

import json
import os
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge_vlm.inference.factory import load_model
from edge_vlm.model.checkpoint import save_checkpoint
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.sttf import CaptionModel, causal_lm_loss, count_parameters, init_weights
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.training.config import TrainConfig
from edge_vlm.training.data import (FrameSet, SubjectSplit, history_indices, run_frames,
                                    sample_indices, subject_split)
from edge_vlm.training.plots import plot_confusion, plot_curves
from edge_vlm.training.real_data import dvs128_framesets, dvs128_split
from edge_vlm.training.schedule import (RunState, optimizer_step, resume_path, save_resume,
                                        seed_run, start_or_resume, warmup_cosine)


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


class Batch(NamedTuple):
    """Training windows of :func:`make_batch`: the model's inputs and the targets."""
    hist: torch.Tensor          # (B, T, C, H, W) uint8 event counts
    rgb: torch.Tensor | None    # (B, T, H, W, 3) uint8, None when no sample uses RGB
    has_rgb: torch.Tensor       # (B,) bool
    valid: torch.Tensor         # (B, T) bool: frame inside the target's recording
    ids: torch.Tensor           # (B, L) caption token ids (BOS ... EOS, padded)
    labels: torch.Tensor        # (B,) gesture class, 0-based


def make_batch(fs: FrameSet, idx: np.ndarray, cfg: ModelConfig, tok: Tokenizer, tc: TrainConfig,
               rng: np.random.Generator, use_rgb: np.ndarray | None = None,
               shift_px: int = 0) -> Batch:
    """A window of ``tc.window`` frames ending at each target frame (uint8, as the nodes bin
    them). ``shift_px`` > 0: augmentation, each window translated by a random (dy, dx) in
    [-shift_px, shift_px] (the same for all its frames: subjects stand elsewhere in the view)."""
    hidx, valid = history_indices(fs, idx, tc.window)
    b = len(idx)
    hist = fs.hist[hidx] * valid[:, :, None, None, None].astype(np.uint8)      # (B,T,C,H,W)
    if use_rgb is None:
        use_rgb = ((rng.random(b) < tc.rgb_prob) if fs.rgb is not None
                   else np.zeros(b, dtype=bool))
    shifts = rng.integers(-shift_px, shift_px + 1, size=(b, 2)) if shift_px > 0 else None
    if shifts is not None:
        hist = np.stack([shift_window(hist[i], int(dy), int(dx), (2, 3))
                         for i, (dy, dx) in enumerate(shifts)])
    rgb = None
    if use_rgb.any():
        frames = fs.rgb[hidx]
        if shifts is not None:
            frames = np.stack([shift_window(frames[i], int(dy), int(dx), (1, 2))
                               for i, (dy, dx) in enumerate(shifts)])
        rgb = torch.from_numpy(frames)
    ids = torch.tensor([tok.encode(fs.captions[i], cfg.max_len) for i in idx])
    labels = torch.from_numpy(fs.labels[idx] - 1)
    return Batch(torch.from_numpy(hist), rgb, torch.from_numpy(use_rgb), torch.from_numpy(valid),
                 ids, labels)


class SampleAccuracy(NamedTuple):
    """Per-sample (per labelled segment) accuracy and the number of segments scored."""
    accuracy: float
    segments: int


def vote_accuracy(segment: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> SampleAccuracy:
    """The DVS128 Gesture paper's per-sample accuracy: a labelled segment's class is the
    majority of its frames' predictions (a tie goes to the lower class). ``segment``: each
    scored frame's segment id (-1: none), ``truth`` / ``pred``: its class and prediction."""
    ids = np.unique(segment[segment >= 0])
    ok = 0
    for s in ids:
        m = segment == s
        ok += int(np.bincount(pred[m]).argmax() == truth[m][0])
    return SampleAccuracy(ok / max(1, len(ids)), int(len(ids)))


@torch.no_grad()
def evaluate(model: CaptionModel, fs: FrameSet, tok: Tokenizer, tc: TrainConfig, use_rgb: bool,
             max_samples: int = 600, seed: int = 1) -> dict:
    """Per-frame gesture accuracy, loss, confusion, teacher-forced token accuracy, active-token
    ratio; with segment ids (real data) also the per-sample accuracy of the scored frames."""
    model.eval()
    rng = np.random.default_rng(seed)
    idx = sample_indices(fs)
    if len(idx) > max_samples:
        idx = np.sort(rng.choice(idx, max_samples, replace=False))
    k = model.cfg.num_classes
    conf = np.zeros((k, k), dtype=np.int64)
    loss_sum, tok_ok, tok_n, act, truth, pred = 0.0, 0, 0, [], [], []
    for s in range(0, len(idx), 32):
        bi = idx[s:s + 32]
        b = make_batch(fs, bi, model.cfg, tok, tc, rng,
                       np.full(len(bi), use_rgb and fs.rgb is not None))
        out = model(b.hist, b.rgb, b.has_rgb, b.valid, b.ids[:, :-1])
        g = out["gesture"]
        truth.append(b.labels.numpy())
        pred.append(g.argmax(-1).numpy())
        np.add.at(conf, (truth[-1], pred[-1]), 1)
        loss_sum += float(F.cross_entropy(g, b.labels, reduction="sum"))
        tgt = b.ids[:, 1:]
        m = tgt != tok.pad
        tok_ok += int(((out["caption"].argmax(-1) == tgt) & m).sum())
        tok_n += int(m.sum())
        act.append(out["mask"].float().mean(dim=1))
    model.train()
    n = int(conf.sum())
    out = {"accuracy": float(np.trace(conf)) / max(1, n), "loss": loss_sum / max(1, n),
           "token_accuracy": tok_ok / max(1, tok_n), "frames": n, "confusion": conf.tolist(),
           "active_fraction": float(torch.cat(act).mean()) if act else 0.0}
    if fs.segment is not None and pred:
        samples = vote_accuracy(fs.segment[idx], np.concatenate(truth), np.concatenate(pred))
        out.update(sample_accuracy=samples.accuracy, segments=samples.segments)
    return out


class EpochMeans(NamedTuple):
    """Means over an epoch's training steps."""
    loss: float                 # gesture cross-entropy
    accuracy: float             # gesture accuracy of the training batches
    active: float               # change-mask active-token fraction


def _train_epoch(model: CaptionModel, opt, sched, fs: FrameSet, train_idx: np.ndarray,
                 tok: Tokenizer, tc: TrainConfig, rng: np.random.Generator, epoch: int,
                 progress: bool) -> EpochMeans:
    """``tc.steps_per_epoch`` steps on random batches of labelled frames: gesture loss +
    ``caption_weight`` x caption loss + the latency term on the expected active-token ratio."""
    model.train()
    it = range(tc.steps_per_epoch)
    if progress:
        it = tqdm(it, desc=f"epoch {epoch}/{tc.epochs}", unit="step")
    loss_sum, acc_sum, act_sum = 0.0, 0.0, 0.0
    for _ in it:
        bi = rng.choice(train_idx, tc.batch, replace=False)
        b = make_batch(fs, bi, model.cfg, tok, tc, rng)
        out = model(b.hist, b.rgb, b.has_rgb, b.valid, b.ids[:, :-1])
        g = out["gesture"]
        lg = F.cross_entropy(g, b.labels)
        lc = causal_lm_loss(out["caption"], b.ids[:, 1:], tok.pad)
        la = out["p_change"].mean()                 # expected active-token ratio (latency term)
        loss = lg + tc.caption_weight * lc + tc.active_weight * F.relu(la - tc.active_target)
        optimizer_step(opt, sched, loss, model.parameters())
        loss_sum += float(lg.detach())
        acc_sum += float((g.detach().argmax(-1) == b.labels).float().mean())
        act_sum += float(out["mask"].float().mean())
        if progress:
            it.set_postfix(gesture=f"{float(lg):.3f}", caption=f"{float(lc):.3f}",
                           active=f"{float(la):.3f}")
    n = tc.steps_per_epoch
    return EpochMeans(loss_sum / n, acc_sum / n, act_sum / n)


def _new_model(tc: TrainConfig, fs_train: FrameSet) -> tuple[Tokenizer, CaptionModel]:
    """The tokenizer of the training captions and a freshly initialised model."""
    tok = Tokenizer.build([c for c in fs_train.captions if c]
                          + [r for rs in fs_train.references for r in rs])
    model = CaptionModel(ModelConfig(dim=tc.dim, depth=tc.depth, max_age=tc.window,
                                     vocab=tok.vocab))
    init_weights(model)
    return tok, model


def _test_report(tc: TrainConfig, tok: Tokenizer, fs_val: FrameSet, split: SubjectSplit,
                 progress: bool) -> dict:
    """The best checkpoint on all validation frames and, once, on the held-out test subjects
    (events only, and RGB + events); the confusion figure of the test subjects."""
    best_model, _ = load_model(tc.out)
    fs_test = run_frames(tc, split.test, progress)
    val = evaluate(best_model, fs_val, tok, tc, use_rgb=False, max_samples=10**9)
    test = evaluate(best_model, fs_test, tok, tc, use_rgb=False, max_samples=10**9)
    test_rgb = evaluate(best_model, fs_test, tok, tc, use_rgb=True, max_samples=10**9)
    plot_confusion(np.array(test["confusion"]),
                   os.path.join(os.path.dirname(os.path.abspath(tc.out)), "confusion_test.png"),
                   f"test subjects {split.test}, events only: per-frame accuracy "
                   f"{test['accuracy']:.3f}")
    return {"val": {k: v for k, v in val.items() if k != "confusion"},
            "test_events_only": test,
            "test_rgb_events": {k: v for k, v in test_rgb.items() if k != "confusion"}}


class Fit(NamedTuple):
    """A finished training loop (the best epoch's checkpoint is at ``tc.out``)."""
    tok: Tokenizer
    model: CaptionModel         # after the last epoch run
    state: RunState
    train_frames: int           # labelled training frames


def _fit(tc: TrainConfig, fs_train: FrameSet, fs_val: FrameSet, rng: np.random.Generator,
         model_id: str, t_start: float, progress: bool, resume: bool) -> Fit:
    """The epochs of a run: train, validate, keep the best epoch (early stopping after
    ``tc.patience`` epochs without improvement), save the resume state after each one.
    ``t_start``: when the run started (the records' ``seconds``)."""
    tok, model = _new_model(tc, fs_train)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = warmup_cosine(opt, 100, tc.epochs * tc.steps_per_epoch)
    train_idx = sample_indices(fs_train)
    state = start_or_resume(tc.out, resume, model, opt, sched, rng)
    for epoch in range(state.epoch + 1, tc.epochs + 1):
        if state.bad >= tc.patience:
            break
        means = _train_epoch(model, opt, sched, fs_train, train_idx, tok, tc, rng, epoch,
                             progress)
        val = evaluate(model, fs_val, tok, tc, use_rgb=False, max_samples=tc.eval_frames)
        rec = {"epoch": epoch, "train_loss": means.loss, "train_accuracy": means.accuracy,
               "train_active": means.active, "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "val_token_accuracy": val["token_accuracy"],
               "val_active": val["active_fraction"], "seconds": round(time.time() - t_start, 1)}
        state.history.append(rec)
        print(json.dumps(rec), flush=True)
        if state.improved(val["accuracy"] + 0.1 * val["token_accuracy"], epoch):
            save_checkpoint(tc.out, model, extra={"model_id": model_id,
                                                  "train_config": tc.__dict__, "epoch": epoch})
        elif state.bad >= tc.patience:
            print(f"early stopping at epoch {epoch} (best {state.best_epoch})", flush=True)
        save_resume(resume_path(tc.out), model, opt, sched, rng, state)
    return Fit(tok, model, state, int(len(train_idx)))


def _model_id(tc: TrainConfig) -> str:
    return f"sttf-d{tc.dim}-l{tc.depth}-w{tc.window}-s{tc.seed}"


def train(tc: TrainConfig, progress: bool = True, resume: bool = False) -> dict:
    """Train, keep the best epoch on validation (early stopping), report test once at the end.

    ``resume``: continue from ``<out>.resume`` (saved after every epoch: model, optimizer,
    scheduler, RNG states, history)."""
    rng = seed_run(tc)
    t_start = time.time()
    split = subject_split(tc)
    fs_train = run_frames(tc, split.train, progress)
    fs_val = run_frames(tc, split.val, progress)
    t_data = time.time() - t_start
    fit = _fit(tc, fs_train, fs_val, rng, _model_id(tc), t_start, progress, resume)
    out_dir = os.path.dirname(os.path.abspath(tc.out))
    plot_curves(fit.state.history, os.path.join(out_dir, "training_curves.png"))
    summary = {"model_id": _model_id(tc), "best_epoch": fit.state.best_epoch,
               "history": fit.state.history, "parameters": count_parameters(fit.model),
               **_test_report(tc, fit.tok, fs_val, split, progress),
               "data_seconds": round(t_data, 1), "total_seconds": round(time.time() - t_start, 1),
               "train_frames": fit.train_frames, "val_subjects": split.val,
               "test_subjects": split.test, "checkpoint": tc.out,
               "checkpoint_bytes": os.path.getsize(tc.out)}
    with open(os.path.join(out_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _real_frames(tc: TrainConfig, split: str) -> FrameSet:
    """One split of the DvsGesture folder ``tc.data`` on the run's frame grid."""
    path = os.path.join(tc.frames_dir, f"dvs128_{split}.npy") if tc.frames_dir else None
    return dvs128_framesets(tc.data, split, tc.period_ns, val_users=tc.val_users, seed=tc.seed,
                            context=tc.window - 1, frames_path=path)


def _real_test_report(tc: TrainConfig, tok: Tokenizer, fs_val: FrameSet) -> dict:
    """The best checkpoint on all validation frames and, once, on the official test trials
    (``tc.test_frames`` of their labelled frames, 0 = all): per-frame and per-sample accuracy."""
    best_model, _ = load_model(tc.out)
    fs_test = _real_frames(tc, "test")
    val = evaluate(best_model, fs_val, tok, tc, use_rgb=False, max_samples=10**9)
    test = evaluate(best_model, fs_test, tok, tc, use_rgb=False,
                    max_samples=tc.test_frames or 10**9)
    plot_confusion(np.array(test["confusion"]),
                   os.path.join(os.path.dirname(os.path.abspath(tc.out)), "confusion_test.png"),
                   f"DvsGesture test trials: per-frame accuracy {test['accuracy']:.3f}, "
                   f"per-sample {test['sample_accuracy']:.3f}")
    return {"val": {k: v for k, v in val.items() if k != "confusion"}, "test_events_only": test,
            "test_accuracy_frames": test["accuracy"],
            "test_accuracy_samples": test["sample_accuracy"], "test_segments": test["segments"]}


def train_real(tc: TrainConfig, progress: bool = True, resume: bool = False) -> dict:
    """:func:`train` on the DvsGesture folder ``tc.data``: the official train trials without
    ``tc.val_users`` held-out users (validation: early stopping), then the official test trials
    once. Raises ValueError / FileNotFoundError for a folder that is not a DvsGesture folder."""
    if tc.val_users < 1:
        raise ValueError(f"--val-users must be >= 1 (validation picks the epoch), "
                         f"got {tc.val_users}")
    split = dvs128_split(tc.data, tc.val_users, tc.seed)
    rng = seed_run(tc)
    t_start = time.time()
    fs_train = _real_frames(tc, "train")
    fs_val = _real_frames(tc, "val")
    t_data = time.time() - t_start
    model_id = _model_id(tc) + "-dvs128"
    fit = _fit(tc, fs_train, fs_val, rng, model_id, t_start, progress, resume)
    del fs_train
    out_dir = os.path.dirname(os.path.abspath(tc.out))
    plot_curves(fit.state.history, os.path.join(out_dir, "training_curves.png"))
    summary = {"model_id": model_id, "data": os.path.abspath(tc.data),
               "best_epoch": fit.state.best_epoch, "history": fit.state.history,
               "parameters": count_parameters(fit.model),
               **_real_test_report(tc, fit.tok, fs_val),
               "data_seconds": round(t_data, 1), "total_seconds": round(time.time() - t_start, 1),
               "train_frames": fit.train_frames, "train_trials": len(split.train),
               "val_users": split.val_users, "val_trials": len(split.val),
               "test_trials": len(split.test), "checkpoint": tc.out,
               "checkpoint_bytes": os.path.getsize(tc.out)}
    with open(os.path.join(out_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
