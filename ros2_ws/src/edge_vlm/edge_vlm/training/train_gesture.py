"""`edge-vlm train --model gesture`: fit the gesture head's motion net on a frozen checkpoint.

The STTF and ANC stages train the vision head (fusion queries + recently changed tokens)
with the captions; alone it confuses gestures that differ in the direction and rhythm of
motion (docs/design.md, "Gesture head"). This stage adds
:class:`~edge_vlm.model.motion.MotionHead` (the token memory's motion state, see
:mod:`edge_vlm.model.motion`) on top of the frozen checkpoint:

1. ``collect``: every training-subject recording (all lightings, events only) is streamed
   through the inference engine itself
   (:meth:`~edge_vlm.inference.engine.StreamingCaptioner.perceive`, dense, the node's
   parameters), so the head's inputs are exactly those it gets at run time: the
   motion state and the vision head's logits of every labelled frame. Each recording is
   streamed a second time mirrored left-right with its labels mirrored
   (:data:`~edge_vlm.model.motion.MIRROR_LABEL`): with 14 training subjects the head
   otherwise learns the subjects' positions. A joint STTF+ANC checkpoint streams each
   recording through one pathway, cycling Tiny / Small / Medium / routed over recordings,
   so the head sees the vision logits of every branch;
2. ``fit``: the motion head (the only trainable part; the vision head's log-probabilities
   enter with a learned weight) for ``epochs`` passes, cross-entropy with label smoothing,
   one-cycle learning rate; each batch is translated by a random (dy, dx) of up to ``shift``
   patches (:func:`shift_states`: the head otherwise learns where the training subjects
   stand); the epoch with the best per-frame accuracy on the validation subjects is kept
   (early stopping on validation);
3. the checkpoint is written with the head and a ``gesture_fit`` record (``gesture_fit.json``
   next to it: per-epoch history, per-frame and per-clip validation accuracy).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge_vlm.cores.graph import replay_params
from edge_vlm.inference.factory import engine_from_params, load_model
from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT
from edge_vlm.model.motion import MIRROR_LABEL
from edge_vlm.sim import simulate_recording
from edge_vlm.training.config import LIGHTINGS, GestureFitConfig
from edge_vlm.training.data import SubjectSplit, recording_frames, subject_split
from edge_vlm.training.schedule import save_fit, seed_run


@dataclass
class _Worker:
    """A streaming process's model (with a motion head), checkpoint metadata and the
    vlm_captioner parameters of the graph (set by :func:`_worker_init`)."""
    model: Any = None
    meta: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


_WORKER = _Worker()


def _worker_init(init: str, threads: int) -> None:
    torch.set_num_threads(threads)
    model, meta = load_model(init)
    if model.motion is None:
        model.add_motion_head()          # untrained: only its input (the motion state) is read
    _WORKER.model, _WORKER.meta = model, meta
    _WORKER.params = replay_params(graph=None).captioner


class StreamedFrames(TypedDict):
    """The labelled frames of one streamed recording (:func:`stream_recording`)."""
    motion: np.ndarray          # (N, C, g, g) float16 motion states
    vision: np.ndarray          # (N, K) float32 vision-head logits
    label: np.ndarray           # (N,) int64 gesture label (1-based)
    clip: np.ndarray            # (N,) clip index (consecutive frames of one label)


@torch.no_grad()
def stream_recording(model, params: dict, meta: dict, hist: np.ndarray, labels: np.ndarray,
                     level: int | None = None) -> StreamedFrames:
    """Stream one recording's frames (``hist`` (F, C, H, W) counts) through a fresh dense
    engine; the motion state (float16) and vision logits of its labelled frames, with their
    labels and clip index (consecutive frames of one label)."""
    eng = engine_from_params(model, params, meta, sparse=False)
    if hasattr(model, "acfg"):
        eng.force_level = level
    motion, vision, keep = [], [], []
    for f in range(len(hist)):
        p = eng.perceive(hist[f])
        if labels[f] > 0:
            motion.append(p.motion[0].numpy().astype(np.float16))
            vision.append(p.vision_logits.numpy())
            keep.append(f)
    keep = np.asarray(keep, dtype=np.int64)
    lab = labels[keep]
    clip = (np.cumsum(np.r_[1, (np.diff(keep) != 1) | (np.diff(lab) != 0)]) - 1 if len(keep)
            else keep)
    cfg = model.cfg
    return StreamedFrames(
        motion=np.stack(motion) if motion else np.zeros((0,), np.float16),
        vision=np.stack(vision) if vision else np.zeros((0, cfg.num_classes), np.float32),
        label=lab, clip=clip)


class StreamJob(NamedTuple):
    """One recording to simulate and stream (a :func:`collect` worker's task)."""
    subject: int
    lighting: str
    seed: int
    clip_s: float
    gap_s: float
    period: int
    rec_id: int
    level: int | None           # ANC pathway to stream through (None: routed / STTF)
    mirror: bool                # also stream it mirrored left-right


def _job(job: StreamJob) -> list[StreamedFrames]:
    rec = simulate_recording(job.subject, job.lighting, seed=job.seed, clip_duration_s=job.clip_s,
                             gap_s=job.gap_s, with_frames=False)
    fs = recording_frames(rec, job.period, job.rec_id)
    w = _WORKER
    out = [stream_recording(w.model, w.params, w.meta, fs.hist, fs.labels, job.level)]
    if job.mirror:
        out.append(stream_recording(w.model, w.params, w.meta, fs.hist[..., ::-1].copy(),
                                    np.asarray(MIRROR_LABEL)[fs.labels], job.level))
    return out


class MotionFrames(TypedDict):
    """Collected frames (:func:`collect`): the motion head's inputs and targets."""
    motion: torch.Tensor        # (N, C, g, g) float32 motion states
    vision: torch.Tensor        # (N, K) vision-head logits
    label: torch.Tensor         # (N,) gesture label (1-based)
    clip: np.ndarray            # (N,) clip index, unique over the recordings


def collect(tc: GestureFitConfig, subjects: list[int], mirror: bool, anc: bool,
            progress: bool) -> MotionFrames:
    """Stream the recordings of ``subjects`` x lightings (and their mirrors) in ``tc.workers``
    processes; concatenated per-frame arrays, clip indices made unique."""
    levels = (0, 1, 2, None) if anc else (None,)
    jobs = [StreamJob(s, light, tc.seed * 100003 + s * 7 + i, tc.clip_s, tc.gap_s, tc.period_ns,
                      k, levels[k % len(levels)], mirror)
            for k, (s, (i, light)) in enumerate((s, il) for s in subjects
                                                for il in enumerate(LIGHTINGS))]
    parts: list[StreamedFrames] = []
    with ProcessPoolExecutor(max_workers=max(1, tc.workers), initializer=_worker_init,
                             initargs=(tc.init, max(1, tc.threads // max(1, tc.workers)))) as pool:
        it = pool.map(_job, jobs)
        if progress:
            it = tqdm(it, total=len(jobs), desc="gesture: stream", unit="rec")
        for res in it:
            parts.extend(res)
    off, clips = 0, []
    for p in parts:
        clips.append(p["clip"] + off)
        off += int(p["clip"].max()) + 1 if len(p["clip"]) else 0
    return MotionFrames(
        motion=torch.from_numpy(np.concatenate([p["motion"] for p in parts]).astype(np.float32)),
        vision=torch.from_numpy(np.concatenate([p["vision"] for p in parts])),
        label=torch.from_numpy(np.concatenate([p["label"] for p in parts])),
        clip=np.concatenate(clips))


@torch.no_grad()
def accuracy(head, data: MotionFrames, batch: int = 512) -> dict:
    """Per-frame accuracy and per-clip accuracy (majority vote of a clip's frames)."""
    head.eval()
    pred = torch.cat([head(data["motion"][s:s + batch], data["vision"][s:s + batch]).argmax(-1)
                      for s in range(0, len(data["label"]), batch)]).numpy()
    truth = data["label"].numpy() - 1
    clip = data["clip"]
    votes = np.zeros((int(clip.max()) + 1 if len(clip) else 0, head.net[-1].out_features),
                     dtype=np.int64)
    np.add.at(votes, (clip, pred), 1)
    clip_truth = np.zeros(len(votes), dtype=np.int64)
    clip_truth[clip] = truth
    vision = data["vision"].argmax(-1).numpy()
    return {"accuracy": float((pred == truth).mean()) if len(truth) else 0.0,
            "clip_accuracy": float((votes.argmax(1) == clip_truth).mean()) if len(votes) else 0.0,
            "vision_accuracy": float((vision == truth).mean()) if len(truth) else 0.0,
            "frames": int(len(truth)), "clips": int(len(votes))}


def shift_states(state: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Motion states ``(B, C, g, g)`` translated by ``(dy, dx)`` patches (content moves down /
    right for positive values), the cells moved in zero (= no events, age beyond the horizon)."""
    if dy == 0 and dx == 0:
        return state
    s = max(abs(dy), abs(dx))
    g = state.shape[-1]
    padded = F.pad(state, (s, s, s, s))
    return padded[..., s - dy:s - dy + g, s - dx:s - dx + g]


class HeadFit(NamedTuple):
    """:func:`fit_head`'s result."""
    history: list[dict]         # one record per epoch
    best_state: dict            # the head's state dict at its best validation accuracy


def fit_head(head, train: MotionFrames, val: MotionFrames, tc: GestureFitConfig,
             progress: bool = False) -> HeadFit:
    """Train ``head`` on collected frames; returns (history, best state dict on validation)."""
    g = torch.Generator().manual_seed(tc.seed)
    gs = torch.Generator().manual_seed(tc.seed + 1)
    opt = torch.optim.AdamW(head.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n = len(train["label"])
    steps = tc.epochs * ((n + tc.batch - 1) // tc.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=max(1, steps))
    history, best, best_state = [], -1.0, None
    for epoch in range(1, tc.epochs + 1):
        head.train()
        perm = torch.randperm(n, generator=g)
        tot, t0 = 0.0, time.time()
        for s in range(0, n, tc.batch):
            j = perm[s:s + tc.batch]
            state = train["motion"][j]
            if tc.shift > 0:
                dy, dx = torch.randint(-tc.shift, tc.shift + 1, (2,), generator=gs).tolist()
                state = shift_states(state, dy, dx)
            logits = head(state, train["vision"][j])
            loss = F.cross_entropy(logits, train["label"][j] - 1,
                                   label_smoothing=tc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(j)
        va = accuracy(head, val)
        rec = {"epoch": epoch, "train_loss": tot / max(1, n), "val_accuracy": va["accuracy"],
               "val_clip_accuracy": va["clip_accuracy"],
               "vision_weight": float(head.vision_weight.detach()),
               "seconds": round(time.time() - t0, 1)}
        history.append(rec)
        if progress:
            print(json.dumps(rec), flush=True)
        if va["accuracy"] > best:
            best = va["accuracy"]
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    return HeadFit(history, best_state)


def _file_id(path: str) -> str:
    """Content hash of a checkpoint ("" = the shipped one)."""
    with open(path or DEFAULT_CHECKPOINT, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


class CollectedFrames(NamedTuple):
    """The frames of the training and validation subjects, and whether they came from the
    cache file."""
    train: MotionFrames
    val: MotionFrames
    from_cache: bool


def _collect_or_load(tc: GestureFitConfig, split: SubjectSplit, anc: bool,
                     progress: bool) -> CollectedFrames:
    """:func:`collect` the training (mirrored too with ``tc.mirror``) and validation
    subjects, or read them from ``tc.cache`` when it holds the same checkpoint and data;
    write the cache."""
    key = {"init": _file_id(tc.init), "subjects": tc.subjects, "val_subjects": tc.val_subjects,
           "test_subjects": tc.test_subjects, "seed": tc.seed, "clip_s": tc.clip_s,
           "gap_s": tc.gap_s, "period_ns": tc.period_ns, "mirror": tc.mirror}
    cached = (torch.load(tc.cache, weights_only=False)
              if tc.cache and os.path.isfile(tc.cache) else None)
    if cached is not None and cached.get("key") == key:
        return CollectedFrames(cached["train"], cached["val"], True)
    train = collect(tc, split.train, tc.mirror, anc, progress)
    val = collect(tc, split.val, False, anc, progress)
    if tc.cache:
        os.makedirs(os.path.dirname(os.path.abspath(tc.cache)) or ".", exist_ok=True)
        torch.save({"key": key, "train": train, "val": val}, tc.cache)
    return CollectedFrames(train, val, False)


def fit_gesture(tc: GestureFitConfig, progress: bool = True) -> dict:
    """Add a motion head to the checkpoint ``tc.init`` and fit it on its frozen model; write
    the checkpoint with a ``gesture_fit`` record and ``gesture_fit.json`` next to it."""
    seed_run(tc)
    t0 = time.time()
    model, meta = load_model(tc.init)
    split = subject_split(tc)
    frames = _collect_or_load(tc, split, hasattr(model, "acfg"), progress)
    t_collect = time.time() - t0

    model.cfg.motion_width = tc.motion_width
    model.add_motion_head()              # fresh, seeded head (replaces one the checkpoint had)
    head = model.motion
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    history, best_state = fit_head(head, frames.train, frames.val, tc, progress)
    head.load_state_dict(best_state)
    for p in head.parameters():
        p.requires_grad_(False)
    model.eval()
    best = max(history, key=lambda r: r["val_accuracy"])
    fit = {"config": dict(tc.__dict__), "best_epoch": best["epoch"],
           "val": accuracy(head, frames.val), "train_frames": int(len(frames.train["label"])),
           "val_subjects": split.val, "train_subjects": split.train,
           "seconds": round(time.time() - t0, 1), "collect_seconds": round(t_collect, 1),
           "streamed_frames_from_cache": frames.from_cache}
    return save_fit(tc.out, model, meta, "gesture_fit", fit, history)
