"""`edge-vlm train --model gesture`: fit the gesture head's motion net on a frozen checkpoint.

The STTF and ANC stages train the vision head (fusion queries + recently changed tokens)
with the captions; it plateaued at ~0.45 per-frame accuracy on held-out subjects, mostly
confusing gestures that differ in the direction and rhythm of motion. This stage adds
:class:`~edge_vlm.model.motion.MotionHead` (the token memory's motion state, see
:mod:`.motion`) on top of the frozen checkpoint:

1. ``collect``: every training-subject recording (all lightings, events only) is streamed
   through the inference engine itself (:meth:`StreamingCaptioner.perceive`, dense, the
   node's parameters), so the head's inputs are exactly those it gets at run time: the
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

import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from edge_vlm.inference.engine import engine_from_params
from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint
from edge_vlm.model.motion import MIRROR_LABEL
from edge_vlm.training.config import LIGHTINGS, GestureFitConfig


_WORKER: dict = {}


def _worker_init(init: str, threads: int) -> None:
    from edge_vlm.evaluation.evaluate import node_params

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(init)
    if model.motion is None:
        model.add_motion_head()          # untrained: only its input (the motion state) is read here
    _, params, _ = node_params(graph=None)
    _WORKER.update(model=model, meta=meta, params=params)


@torch.no_grad()
def stream_recording(model, params: dict, meta: dict, hist: np.ndarray, labels: np.ndarray,
                     level: int | None = None) -> dict:
    """Stream one recording's frames (``hist`` (F, C, H, W) counts) through a fresh dense engine;
    the motion state (float16) and vision logits of its labelled frames, with their labels and
    clip index (consecutive frames of one label)."""
    eng = engine_from_params(model, params, meta, sparse=False)
    if hasattr(model, "acfg"):
        eng.force_level = level
    motion, vision, keep = [], [], []
    for f in range(len(hist)):
        p = eng.perceive(hist[f])
        if labels[f] > 0:
            motion.append(p["motion"][0].numpy().astype(np.float16))
            vision.append(p["vision_logits"].numpy())
            keep.append(f)
    keep = np.asarray(keep, dtype=np.int64)
    lab = labels[keep]
    clip = np.cumsum(np.r_[1, (np.diff(keep) != 1) | (np.diff(lab) != 0)]) - 1 if len(keep) else keep
    cfg = model.cfg
    return {"motion": np.stack(motion) if motion else np.zeros((0,), np.float16),
            "vision": np.stack(vision) if vision else np.zeros((0, cfg.num_classes), np.float32),
            "label": lab, "clip": clip}


def _job(args) -> list[dict]:
    from edge_vlm.training.data import recording_frames
    from edge_vlm.sim import simulate_recording

    subject, lighting, seed, clip_s, gap_s, period, rec_id, level, mirror = args
    rec = simulate_recording(subject, lighting, seed=seed, clip_duration_s=clip_s, gap_s=gap_s, with_frames=False)
    fs = recording_frames(rec, period, rec_id)
    w = _WORKER
    out = [stream_recording(w["model"], w["params"], w["meta"], fs.hist, fs.labels, level)]
    if mirror:
        out.append(stream_recording(w["model"], w["params"], w["meta"], fs.hist[..., ::-1].copy(),
                                    np.asarray(MIRROR_LABEL)[fs.labels], level))
    return out


def collect(tc: GestureFitConfig, subjects: list[int], mirror: bool, anc: bool, progress: bool) -> dict:
    """Stream the recordings of ``subjects`` x lightings (and their mirrors) in ``tc.workers``
    processes; concatenated per-frame arrays, clip indices made unique."""
    from concurrent.futures import ProcessPoolExecutor

    levels = (0, 1, 2, None) if anc else (None,)
    jobs = [(s, light, tc.seed * 100003 + s * 7 + i, tc.clip_s, tc.gap_s, tc.period_ns, k,
             levels[k % len(levels)], mirror)
            for k, (s, (i, light)) in enumerate((s, il) for s in subjects for il in enumerate(LIGHTINGS))]
    parts: list[dict] = []
    with ProcessPoolExecutor(max_workers=max(1, tc.workers), initializer=_worker_init,
                             initargs=(tc.init, max(1, tc.threads // max(1, tc.workers)))) as pool:
        it = pool.map(_job, jobs)
        if progress:
            try:
                from tqdm import tqdm
                it = tqdm(it, total=len(jobs), desc="gesture: stream", unit="rec")
            except ImportError:  # pragma: no cover
                pass
        for res in it:
            parts.extend(res)
    off, clips = 0, []
    for p in parts:
        clips.append(p["clip"] + off)
        off += int(p["clip"].max()) + 1 if len(p["clip"]) else 0
    return {"motion": torch.from_numpy(np.concatenate([p["motion"] for p in parts]).astype(np.float32)),
            "vision": torch.from_numpy(np.concatenate([p["vision"] for p in parts])),
            "label": torch.from_numpy(np.concatenate([p["label"] for p in parts])),
            "clip": np.concatenate(clips)}


@torch.no_grad()
def accuracy(head, data: dict, batch: int = 512) -> dict:
    """Per-frame accuracy and per-clip accuracy (majority vote of a clip's frames)."""
    head.eval()
    pred = torch.cat([head(data["motion"][s:s + batch], data["vision"][s:s + batch]).argmax(-1)
                      for s in range(0, len(data["label"]), batch)]).numpy()
    truth = data["label"].numpy() - 1
    clip = data["clip"]
    votes = np.zeros((int(clip.max()) + 1 if len(clip) else 0, head.net[-1].out_features), dtype=np.int64)
    np.add.at(votes, (clip, pred), 1)
    clip_truth = np.zeros(len(votes), dtype=np.int64)
    clip_truth[clip] = truth
    return {"accuracy": float((pred == truth).mean()) if len(truth) else 0.0,
            "clip_accuracy": float((votes.argmax(1) == clip_truth).mean()) if len(votes) else 0.0,
            "vision_accuracy": float((data["vision"].argmax(-1).numpy() == truth).mean()) if len(truth) else 0.0,
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


def fit_head(head, train: dict, val: dict, tc: GestureFitConfig, progress: bool = False) -> tuple[list, dict]:
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
            loss = F.cross_entropy(logits, train["label"][j] - 1, label_smoothing=tc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(j)
        va = accuracy(head, val)
        rec = {"epoch": epoch, "train_loss": tot / max(1, n), "val_accuracy": va["accuracy"],
               "val_clip_accuracy": va["clip_accuracy"], "vision_weight": float(head.vision_weight.detach()),
               "seconds": round(time.time() - t0, 1)}
        history.append(rec)
        if progress:
            print(json.dumps(rec), flush=True)
        if va["accuracy"] > best:
            best = va["accuracy"]
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    return history, best_state


def _file_id(path: str) -> str:
    """Content hash of a checkpoint ("" = the shipped one)."""
    import hashlib

    from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT

    with open(path or DEFAULT_CHECKPOINT, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def fit_gesture(tc: GestureFitConfig, progress: bool = True) -> dict:
    from edge_vlm.sim import split_subjects

    torch.manual_seed(tc.seed)
    torch.set_num_threads(tc.threads)
    t0 = time.time()
    model, meta = load_checkpoint(tc.init)
    train_ids, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    val_ids = list(held[:tc.val_subjects])
    anc = hasattr(model, "acfg")
    key = {"init": _file_id(tc.init), "subjects": tc.subjects, "val_subjects": tc.val_subjects,
           "test_subjects": tc.test_subjects, "seed": tc.seed, "clip_s": tc.clip_s, "gap_s": tc.gap_s,
           "period_ns": tc.period_ns, "mirror": tc.mirror}
    cached = torch.load(tc.cache, weights_only=False) if tc.cache and os.path.isfile(tc.cache) else None
    cache_hit = cached is not None and cached.get("key") == key
    if cache_hit:
        train, val = cached["train"], cached["val"]
    else:
        train = collect(tc, list(train_ids), tc.mirror, anc, progress)
        val = collect(tc, val_ids, False, anc, progress)
        if tc.cache:
            os.makedirs(os.path.dirname(os.path.abspath(tc.cache)) or ".", exist_ok=True)
            torch.save({"key": key, "train": train, "val": val}, tc.cache)
    t_collect = time.time() - t0

    model.cfg.motion_width = tc.motion_width
    model.add_motion_head()              # fresh, seeded head (replaces one the checkpoint had)
    head = model.motion
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    history, best_state = fit_head(head, train, val, tc, progress)
    head.load_state_dict(best_state)
    for p in head.parameters():
        p.requires_grad_(False)
    model.eval()
    best = max(history, key=lambda r: r["val_accuracy"])
    fit = {"config": dict(tc.__dict__), "best_epoch": best["epoch"], "val": accuracy(head, val),
           "train_frames": int(len(train["label"])), "val_subjects": val_ids, "train_subjects": list(train_ids),
           "seconds": round(time.time() - t0, 1), "collect_seconds": round(t_collect, 1),
           "streamed_frames_from_cache": bool(cache_hit)}
    save_checkpoint(tc.out, model, extra={**meta, "gesture_fit": fit})
    summary = {"checkpoint": tc.out, "checkpoint_bytes": os.path.getsize(tc.out), "history": history, **fit}
    with open(os.path.join(os.path.dirname(os.path.abspath(tc.out)), "gesture_fit.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
