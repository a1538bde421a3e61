"""`edge-vlm train --model gesture`: fit the gesture and scene heads' motion net on a frozen
checkpoint.

The STTF and ANC stages train the vision head (fusion queries + recently changed tokens)
with the captions; alone it confuses gestures that differ in the direction and rhythm of
motion (docs/design.md, "Gesture head"). This stage adds
:class:`~edge_vlm.model.motion.MotionHead` (the token memory's motion state, see
:mod:`edge_vlm.model.motion`) on top of the frozen checkpoint:

1. ``collect``: every training-subject recording (``lightings_per_subject`` lightings, events
   only; with ``scenes`` also a recording of the scenes beyond the gestures:
   :func:`edge_vlm.sim.simulate_scene_recording`) is streamed through the inference engine
   itself (:meth:`~edge_vlm.inference.engine.StreamingCaptioner.perceive`, sparse, the node's
   parameters), so the head's inputs are exactly those it gets at run time: the
   motion state and the vision head's logits of every frame, with its targets
   (:mod:`.targets`: gesture 0..11 with 0 = no gesture, scene kind, direction, speed,
   position). Each recording is
   streamed a second time mirrored left-right with its labels mirrored
   (:data:`~edge_vlm.model.motion.MIRROR_LABEL`): with 14 training subjects the head
   otherwise learns the subjects' positions. ``extra_subjects`` adds simulated subjects with
   ids after ``subjects`` (the validation and test subjects do not change). A joint STTF+ANC
   checkpoint streams each recording through one pathway, cycling Tiny / Small / Medium /
   routed over recordings, so the head sees the vision logits of every branch;
2. ``fit``: the motion head (the only trainable part; the vision head's log-probabilities
   enter with a learned weight) for ``epochs`` passes, cross-entropy with label smoothing
   on the gesture, plus the scene groups' cross-entropies (targets a scene does not define
   are ignored),
   one-cycle learning rate; each batch is translated by a random (dy, dx) of up to ``shift``
   patches (:func:`shift_states`: the head otherwise learns where the training subjects
   stand); the epoch with the best per-frame accuracy on the validation subjects is kept
   (early stopping on validation: mean of the gesture and scene-kind accuracies);
3. one temperature per head group is fitted on the validation subjects
   (:mod:`.calibration`) and stored in the head;
4. the checkpoint is written with the head and a ``gesture_fit`` record (``gesture_fit.json``
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
from edge_vlm.model.anc import LEVELS
from edge_vlm.model.motion import HEADS, HeadLogits, split_heads
from edge_vlm.sim import simulate_recording, simulate_scene_recording
from edge_vlm.evaluation.trust import calibration
from edge_vlm.training.calibration import fit_temperature
from edge_vlm.training.config import LIGHTINGS, GestureFitConfig
from edge_vlm.training.data import SubjectSplit, recording_frames, subject_split
from edge_vlm.training.schedule import save_fit, seed_run
from edge_vlm.training.targets import (IGNORE, FrameTargets, concat_targets, frame_targets,
                                       mirror_targets)


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
    """The frames of one streamed recording (:func:`stream_recording`)."""
    motion: np.ndarray          # (N, C, g, g) float16 motion states
    vision: np.ndarray          # (N, K) float32 vision-head logits
    targets: FrameTargets       # (N,) per head group
    clip: np.ndarray            # (N,) segment index (consecutive frames of one target)


def _segments(t: FrameTargets) -> np.ndarray:
    """Index of the run of equal (gesture, kind) targets each frame belongs to."""
    key = t["gesture"] * 100 + t["kind"]
    return np.cumsum(np.r_[1, np.diff(key) != 0]) - 1 if len(key) else key


@torch.no_grad()
def stream_recording(model, params: dict, meta: dict, hist: np.ndarray, targets: FrameTargets,
                     level: int | None = None) -> StreamedFrames:
    """Stream one recording's frames (``hist`` (F, C, H, W) counts) through a fresh engine
    configured as the node (sparse); the motion state (float16) and vision logits of every
    frame, with its targets and segment index."""
    eng = engine_from_params(model, params, meta)
    if hasattr(model, "acfg"):
        eng.force_level = level
    motion, vision = [], []
    for f in range(len(hist)):
        p = eng.perceive(hist[f])
        motion.append(p.motion[0].numpy().astype(np.float16))
        vision.append(p.vision_logits.numpy())
    return StreamedFrames(motion=np.stack(motion), vision=np.stack(vision), targets=targets,
                          clip=_segments(targets))


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
    scenes: bool                # the scene recording instead of the gesture one
    sensor_seed: int            # 0: the nominal sensor, else a randomised one


def _simulate(job: StreamJob):
    if job.scenes:
        return simulate_scene_recording(job.subject, job.lighting, seed=job.seed,
                                        clip_duration_s=job.clip_s + 0.5, gap_s=job.gap_s,
                                        sensor_seed=job.sensor_seed)
    return simulate_recording(job.subject, job.lighting, seed=job.seed, clip_duration_s=job.clip_s,
                              gap_s=job.gap_s, with_frames=False, sensor_seed=job.sensor_seed)


def _job(job: StreamJob) -> list[StreamedFrames]:
    rec = _simulate(job)
    fs = recording_frames(rec, job.period, job.rec_id)
    tg = frame_targets(rec, fs.t_end)
    w = _WORKER
    out = [stream_recording(w.model, w.params, w.meta, fs.hist, tg, job.level)]
    if job.mirror:
        out.append(stream_recording(w.model, w.params, w.meta, fs.hist[..., ::-1].copy(),
                                    mirror_targets(tg), job.level))
    return out


class MotionFrames(TypedDict):
    """Collected frames (:func:`collect`): the motion head's inputs and targets."""
    motion: torch.Tensor        # (N, C, g, g) float32 motion states
    vision: torch.Tensor        # (N, K) vision-head logits
    targets: dict               # group -> (N,) int64 tensor (IGNORE: none)
    clip: np.ndarray            # (N,) segment index, unique over the recordings


def _jobs(tc: GestureFitConfig, subjects: list[int], mirror: bool, anc: bool) -> list[StreamJob]:
    """Per subject: ``lightings_per_subject`` lightings (rotating over the subjects), a gesture
    recording and (``scenes``) a scene recording each; every other recording (``random_sensor``)
    on a randomised sensor."""
    levels = (0, 1, 2, None) if anc else (None,)
    jobs: list[StreamJob] = []
    n_light = max(1, min(tc.lightings_per_subject, len(LIGHTINGS)))
    for si, s in enumerate(subjects):
        for j in range(n_light):
            i = (si + j) % len(LIGHTINGS)
            for scenes in ((False, True) if tc.scenes else (False,)):
                k = len(jobs)
                seed = tc.seed * 100003 + s * 7 + i + (50021 if scenes else 0)
                jobs.append(StreamJob(s, LIGHTINGS[i], seed, tc.clip_s, tc.gap_s, tc.period_ns,
                                      k, levels[k % len(levels)], mirror, scenes,
                                      seed if tc.random_sensor and k % 2 else 0))
    return jobs


def collect(tc: GestureFitConfig, subjects: list[int], mirror: bool, anc: bool,
            progress: bool) -> MotionFrames:
    """Stream the recordings of ``subjects`` (:func:`_jobs`, and their mirrors) in
    ``tc.workers`` processes; concatenated per-frame arrays, segment indices made unique."""
    jobs = _jobs(tc, subjects, mirror, anc)
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
    tg = concat_targets([p["targets"] for p in parts])
    return MotionFrames(
        motion=torch.from_numpy(np.concatenate([p["motion"] for p in parts]).astype(np.float32)),
        vision=torch.from_numpy(np.concatenate([p["vision"] for p in parts])),
        targets={k: torch.from_numpy(v) for k, v in tg.items()},
        clip=np.concatenate(clips))


@torch.no_grad()
def head_logits(head, data: MotionFrames, batch: int = 512) -> HeadLogits:
    """The head's logits (with its stored temperatures NOT applied) over collected frames."""
    head.eval()
    out = torch.cat([head(data["motion"][s:s + batch], data["vision"][s:s + batch])
                     for s in range(0, len(data["clip"]), batch)])
    return split_heads(head.cfg, out)


def _acc(pred: np.ndarray, truth: np.ndarray) -> float | None:
    keep = truth != IGNORE
    return float((pred[keep] == truth[keep]).mean()) if keep.any() else None


@torch.no_grad()
def accuracy(head, data: MotionFrames, batch: int = 512) -> dict:
    """Per-frame accuracies: gesture over all frames (0 = no gesture included) and over the
    gesture frames, per-clip gesture accuracy (majority vote of a gesture clip's frames), scene
    kind, direction, speed, position; and the ECE of the calibrated gesture confidence."""
    lg = head_logits(head, data, batch)
    t = {k: v.numpy() for k, v in data["targets"].items()}
    pred = lg.gesture.argmax(-1).numpy()
    truth, clip = t["gesture"], data["clip"]
    gest = truth > 0
    votes = np.zeros((int(clip.max()) + 1 if len(clip) else 0, lg.gesture.shape[-1]), np.int64)
    np.add.at(votes, (clip[gest], pred[gest]), 1)
    clip_truth = np.zeros(len(votes), dtype=np.int64)
    clip_truth[clip[gest]] = truth[gest]
    has = votes.sum(1) > 0
    temp = getattr(head, "temperature", None)
    t0 = float(temp[0]) if temp is not None else 1.0
    conf = torch.softmax(lg.gesture / t0, -1).max(-1).values.numpy()
    out = {"accuracy": _acc(pred, truth), "gesture_accuracy": _acc(pred[gest], truth[gest]),
           "clip_accuracy": float((votes.argmax(1)[has] == clip_truth[has]).mean())
           if has.any() else None,
           "vision_accuracy": _acc(data["vision"].argmax(-1).numpy()[gest] + 1, truth[gest]),
           "ece": calibration(conf, pred == truth).ece,
           "frames": int(len(truth)), "gesture_frames": int(gest.sum()),
           "clips": int(has.sum())}
    for group in ("kind", "direction", "speed", "position"):
        lgg = getattr(lg, group)
        if lgg is not None:
            out[f"{group}_accuracy"] = _acc(lgg.argmax(-1).numpy(), t[group])
    return out


def early_stop_score(acc: dict) -> float:
    """The early-stopping score: mean of the gesture and scene-kind accuracies."""
    vals = [v for v in (acc["accuracy"], acc.get("kind_accuracy")) if v is not None]
    return float(np.mean(vals)) if vals else 0.0


def shift_states(state: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Motion states ``(B, C, g, g)`` translated by ``(dy, dx)`` patches (content moves down /
    right for positive values), the cells moved in zero (= no events, age beyond the horizon)."""
    if dy == 0 and dx == 0:
        return state
    s = max(abs(dy), abs(dx))
    g = state.shape[-1]
    padded = F.pad(state, (s, s, s, s))
    return padded[..., s - dy:s - dy + g, s - dx:s - dx + g]


def head_loss(head, logits: torch.Tensor, targets: dict, smoothing: float) -> torch.Tensor:
    """Gesture cross-entropy (label smoothing) plus, with a scene head, the scene kind's and
    half the direction's, speed's and position's (IGNORE targets left out)."""
    lg = split_heads(head.cfg, logits)
    if not head.cfg.scene_head:
        return F.cross_entropy(lg.gesture[:, 1:], targets["gesture"] - 1,
                               label_smoothing=smoothing)
    loss = F.cross_entropy(lg.gesture, targets["gesture"], label_smoothing=smoothing)
    for group, weight in (("kind", 1.0), ("direction", 0.5), ("speed", 0.5), ("position", 0.5)):
        t = targets[group]
        if bool((t != IGNORE).any()):          # a batch without targets of a group adds nothing
            loss = loss + weight * F.cross_entropy(getattr(lg, group), t, ignore_index=IGNORE,
                                                   label_smoothing=smoothing if group == "kind"
                                                   else 0.0)
    return loss


class HeadFit(NamedTuple):
    """:func:`fit_head`'s result."""
    history: list[dict]         # one record per epoch
    best_state: dict            # the head's state dict at its best validation score


def fit_head(head, train: MotionFrames, val: MotionFrames, tc: GestureFitConfig,
             progress: bool = False) -> HeadFit:
    """Train ``head`` on collected frames; returns (history, best state dict on validation)."""
    g = torch.Generator().manual_seed(tc.seed)
    gs = torch.Generator().manual_seed(tc.seed + 1)
    opt = torch.optim.AdamW(head.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n = len(train["clip"])
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
            loss = head_loss(head, head(state, train["vision"][j]),
                             {k: v[j] for k, v in train["targets"].items()}, tc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(j)
        va = accuracy(head, val)
        rec = {"epoch": epoch, "train_loss": tot / max(1, n), "val_score": early_stop_score(va),
               "val_accuracy": va["accuracy"], "val_gesture_accuracy": va["gesture_accuracy"],
               "val_clip_accuracy": va["clip_accuracy"], "val_kind_accuracy":
               va.get("kind_accuracy"), "vision_weight": float(head.vision_weight.detach()),
               "seconds": round(time.time() - t0, 1)}
        history.append(rec)
        if progress:
            print(json.dumps(rec), flush=True)
        if rec["val_score"] > best:
            best = rec["val_score"]
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    return HeadFit(history, best_state)


def calibrate_head(head, val: MotionFrames) -> list[float]:
    """Fit one temperature per head group on the validation frames (:mod:`.calibration`) and
    store them in ``head.temperature``."""
    lg = head_logits(head, val)
    temps = [fit_temperature(x, val["targets"][k]) if x is not None else 1.0
             for k, x in zip(HEADS, lg)]
    head.temperature.copy_(torch.tensor(temps))
    return temps


def model_id(model) -> str:
    """Hash of the weights that make the collected frames (every parameter and buffer but the
    motion heads': a head reads the motion state, it does not make it), so refitting the
    heads of a checkpoint keeps its cache valid."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not name.startswith(("motion.", "level_motion.")):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class CollectedFrames(NamedTuple):
    """The frames of the training and validation subjects, and whether they came from the
    cache file."""
    train: MotionFrames
    val: MotionFrames
    from_cache: bool


def _load_part(path: str, key: dict) -> dict | None:
    """The cache file's content when it holds ``key``, else None."""
    cached = torch.load(path, weights_only=False) if path and os.path.isfile(path) else None
    return cached if cached is not None and cached.get("key") == key else None


def _save_part(path: str, content: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        torch.save(content, path)


def concat_frames(a: MotionFrames, b: MotionFrames) -> MotionFrames:
    """Two collections of frames as one (``b``'s segment indices after ``a``'s)."""
    off = int(a["clip"].max()) + 1 if len(a["clip"]) else 0
    return MotionFrames(motion=torch.cat([a["motion"], b["motion"]]),
                        vision=torch.cat([a["vision"], b["vision"]]),
                        targets={k: torch.cat([a["targets"][k], b["targets"][k]])
                                 for k in a["targets"]},
                        clip=np.concatenate([a["clip"], b["clip"] + off]))


def extra_subject_ids(tc: GestureFitConfig) -> list[int]:
    """The ``extra_subjects`` training subjects: ids after ``subjects``, so the validation and
    test subjects (drawn from 1..``subjects``) stay the same."""
    return list(range(tc.subjects + 1, tc.subjects + 1 + max(0, tc.extra_subjects)))


def _collect_or_load(tc: GestureFitConfig, split: SubjectSplit, model,
                     progress: bool) -> CollectedFrames:
    """:func:`collect` the training (mirrored too with ``tc.mirror``) and validation
    subjects, or read them from ``tc.cache`` when it holds the same checkpoint and data;
    write the cache. The extra subjects (:func:`extra_subject_ids`) are kept in a second file
    (``<cache>.extra<N>.pt``), so adding them reuses the first."""
    anc = hasattr(model, "acfg")
    key = {"model": model_id(model), "subjects": tc.subjects, "val_subjects": tc.val_subjects,
           "test_subjects": tc.test_subjects, "seed": tc.seed, "clip_s": tc.clip_s,
           "gap_s": tc.gap_s, "period_ns": tc.period_ns, "mirror": tc.mirror,
           "scenes": tc.scenes, "lightings_per_subject": tc.lightings_per_subject,
           "random_sensor": tc.random_sensor, "targets": 2}
    cached = _load_part(tc.cache, key)
    from_cache = cached is not None
    if cached is None:
        cached = {"key": key, "train": collect(tc, split.train, tc.mirror, anc, progress),
                  "val": collect(tc, split.val, False, anc, progress)}
        _save_part(tc.cache, cached)
    train, val = cached["train"], cached["val"]
    extra = extra_subject_ids(tc)
    if extra:
        path = f"{os.path.splitext(tc.cache)[0]}.extra{len(extra)}.pt" if tc.cache else ""
        ekey = {**key, "extra": extra}
        part = _load_part(path, ekey)
        from_cache = from_cache and part is not None
        if part is None:
            part = {"key": ekey, "train": collect(tc, extra, tc.mirror, anc, progress)}
            _save_part(path, part)
        train = concat_frames(train, part["train"])
    return CollectedFrames(train, val, from_cache)


def fit_gesture(tc: GestureFitConfig, progress: bool = True) -> dict:
    """Add a motion head to the checkpoint ``tc.init`` and fit it on its frozen model; write
    the checkpoint with a ``gesture_fit`` record and ``gesture_fit.json`` next to it."""
    seed_run(tc)
    t0 = time.time()
    model, meta = load_model(tc.init)
    split = subject_split(tc)
    frames = _collect_or_load(tc, split, model, progress)
    t_collect = time.time() - t0

    model.cfg.scene_head = bool(tc.scenes)
    head = new_head(model, tc)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    history, best_state = fit_head(head, frames.train, frames.val, tc, progress)
    head.load_state_dict(best_state)
    for p in head.parameters():
        p.requires_grad_(False)
    model.eval()
    uncalibrated = accuracy(head, frames.val)["ece"]
    temps = calibrate_head(head, frames.val) if tc.scenes else []
    best = max(history, key=lambda r: r["val_score"])
    fit = {"config": dict(tc.__dict__), "best_epoch": best["epoch"],
           "val": accuracy(head, frames.val), "val_ece_uncalibrated": uncalibrated,
           "temperatures": dict(zip(HEADS, temps)),
           "train_frames": int(len(frames.train["clip"])),
           "val_subjects": split.val, "train_subjects": split.train + extra_subject_ids(tc),
           "seconds": round(time.time() - t0, 1), "collect_seconds": round(t_collect, 1),
           "streamed_frames_from_cache": frames.from_cache}
    name = f"gesture_fit_{tc.level}" if tc.level else "gesture_fit"
    return save_fit(tc.out, model, meta, name, fit, history)


def new_head(model, tc: GestureFitConfig):
    """The fresh, seeded head the fit trains (replacing the one the checkpoint had): the shared
    head ``motion`` of ``tc.motion_width`` channels, or with ``tc.level`` that level's own head
    of a joint STTF+ANC checkpoint (:meth:`~edge_vlm.model.anc.AncModel.add_level_head`; the
    shared head and ``cfg.motion_width`` stay as they are)."""
    if not tc.level:
        model.cfg.motion_width = tc.motion_width
        model.add_motion_head()
        return model.motion
    if not hasattr(model, "acfg") or tc.level not in LEVELS:
        raise ValueError(f"--level {tc.level}: needs a joint STTF+ANC checkpoint and one of "
                         f"{', '.join(LEVELS)}")
    # seeded here, not only at the start: loading a checkpoint that already has level heads
    # draws more random numbers, and a rerun on its own output must make the same head
    torch.manual_seed(tc.seed)
    return model.add_level_head(LEVELS.index(tc.level), tc.motion_width)
