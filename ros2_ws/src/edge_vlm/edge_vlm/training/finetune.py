"""`edge-vlm finetune CKPT --data DIR`: adapt a checkpoint's gesture and scene heads to a team's
own labelled recordings.

What is adapted: only the motion head (``model.motion``: the gesture head, and with
``cfg.scene_head`` the scene groups), starting from the checkpoint's trained head, on the frozen
encoder. Why: a few labelled minutes are far too few to retrain the encoder and the captioner
(they would overfit and forget the other scenes), while the head is small, its inputs (the
motion state and the vision logits of every frame) are exactly what the engine computes at run
time, and the captions follow what the heads found (grounded captions), so they adapt with it.

1. the folder's labelled recordings (:func:`~edge_vlm.training.real_data.labelled_recordings`:
   AEDAT 3.1 trials + labels CSV in the DvsGesture layout, ROS 2 bags labelled on
   ``/edge_vlm/ground_truth``) are cut into frames on the training grid; whole recordings are
   held out for validation (``val_share``, picked with ``seed``); a single recording is split in
   time instead (its last labelled segments);
2. each part is streamed through the frozen engine
   (:func:`~edge_vlm.training.train_gesture.stream_recording`), the training parts mirrored too;
   targets (:func:`team_targets`): a labelled frame is its gesture (kind ``gesture``, direction
   ``none``); a frame outside the segments is "no gesture" with its scene kind unknown (a team's
   background may move); without a scene head only the labelled frames are used (the 11-class
   head has no "no gesture" output). With a scene head, a simulated recording of the scenes
   beyond the gestures is mixed into the training frames (:func:`rehearsal`): the team's
   labels define no scene group but kind ``gesture``, which alone would teach the head that
   everything is a gesture;
3. :func:`~edge_vlm.training.train_gesture.fit_head` from the checkpoint's head at a lower
   learning rate; the best validation epoch is kept;
4. the temperatures of the groups whose validation frames hold two classes or more are refitted
   (:func:`~edge_vlm.training.train_gesture.calibrate_head`); the others keep the checkpoint's
   (one class only would make them overconfident);
5. the checkpoint's head and the fine-tuned head are scored on the same held-out frames
   (``before``, ``after``; ``improved``: the per-frame gesture accuracy, "no gesture" included,
   went up), and the checkpoint is written with a ``finetune`` record (``finetune.json`` next
   to it). A joint STTF+ANC checkpoint's level heads (:attr:`AncConfig.motion_widths`: the
   heads that answer for Tiny or Small) are adapted the same way, each on the same frames,
   with its own record under ``levels``.
"""
from __future__ import annotations

import copy
import time
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from edge_vlm.cores.graph import replay_params
from edge_vlm.inference.factory import load_model
from edge_vlm.model.motion import HEADS
from edge_vlm.sim import simulate_scene_recording
from edge_vlm.training.config import LIGHTINGS, GestureFitConfig
from edge_vlm.training.data import FrameSet, recording_frames
from edge_vlm.training.real_data import labelled_recordings, recordings_framesets
from edge_vlm.training.schedule import save_fit, seed_run
from edge_vlm.training.targets import (IGNORE, FrameTargets, concat_targets, frame_targets,
                                       mirror_targets)
from edge_vlm.training.train_gesture import (MotionFrames, StreamedFrames, accuracy,
                                             calibrate_head, early_stop_score, fit_head,
                                             stream_recording)

#: CKPT values that name the shipped checkpoint
SHIPPED = ("", "shipped")


def team_targets(labels: np.ndarray) -> FrameTargets:
    """Head targets of a team's frames (``labels`` 0 = outside any segment, else DVS128 id):
    a labelled frame is its gesture, kind ``gesture``, direction ``none`` (speed and position
    unknown); outside the segments "no gesture", every other group unknown (IGNORE)."""
    n = len(labels)
    gest = np.asarray(labels) > 0
    out = FrameTargets(gesture=np.asarray(labels, dtype=np.int64).copy(),
                       kind=np.full(n, IGNORE, np.int64), direction=np.full(n, IGNORE, np.int64),
                       speed=np.full(n, IGNORE, np.int64), position=np.full(n, IGNORE, np.int64))
    out["kind"][gest] = HEADS["kind"].index("gesture")
    out["direction"][gest] = HEADS["direction"].index("none")
    return out


class Part(NamedTuple):
    """Frames ``start..stop-1`` of a :class:`FrameSet`: one recording, or one side of its cut."""
    name: str
    start: int
    stop: int


class DataSplit(NamedTuple):
    """Training and validation parts, and how they were split (``recording`` or ``time``)."""
    train: list[Part]
    val: list[Part]
    by: str


def _recording_parts(fs: FrameSet, names: list[str]) -> list[Part]:
    parts = []
    for i, name in enumerate(names):
        idx = np.flatnonzero(fs.rec_index == i)
        if len(idx):
            parts.append(Part(name, int(idx[0]), int(idx[-1]) + 1))
    return parts


def _time_split(fs: FrameSet, part: Part, val_share: float) -> DataSplit:
    """One recording: its last ``val_share`` of labelled segments (at least one, at least one
    left) for validation, cut after the last training segment's last frame."""
    seg = fs.segment[part.start:part.stop]
    ids = [int(s) for s in np.unique(seg[seg >= 0])]
    if len(ids) < 2:
        raise ValueError(f"{part.name}: a single recording needs at least 2 labelled segments "
                         f"(one to hold out for validation), it has {len(ids)}")
    first = {s: int(np.flatnonzero(seg == s)[0]) for s in ids}
    order = sorted(ids, key=first.get)
    n_val = min(len(ids) - 1, max(1, round(val_share * len(ids))))
    cut = part.start + first[order[len(ids) - n_val]]
    return DataSplit([Part(part.name, part.start, cut)], [Part(part.name, cut, part.stop)], "time")


def _check_share(val_share: float) -> None:
    if not 0.0 < val_share < 1.0:
        raise ValueError(f"--val-share must be between 0 and 1, got {val_share}")


def split_data(fs: FrameSet, names: list[str], val_share: float, seed: int) -> DataSplit:
    """Hold out ``round(val_share * n)`` of the ``n`` recordings (at least one, at least one
    left; picked with ``seed``) for validation; a single recording is split in time."""
    _check_share(val_share)
    parts = _recording_parts(fs, names)
    if len(parts) == 1:
        return _time_split(fs, parts[0], val_share)
    n_val = min(len(parts) - 1, max(1, round(val_share * len(parts))))
    held = set(np.random.default_rng(seed).permutation(len(parts))[:n_val].tolist())
    return DataSplit([p for i, p in enumerate(parts) if i not in held],
                     [p for i, p in enumerate(parts) if i in held], "recording")


class Streamer(NamedTuple):
    """The frozen model, its checkpoint metadata and the node's captioner parameters."""
    model: torch.nn.Module
    meta: dict
    params: dict


def _motion_frames(streamed: list[StreamedFrames], labelled_only: bool) -> MotionFrames:
    """Concatenated streamed parts (segment indices made unique); ``labelled_only``: the frames
    with a gesture label only."""
    off, clips = 0, []
    for p in streamed:
        clips.append(p["clip"] + off)
        off += int(p["clip"].max()) + 1 if len(p["clip"]) else 0
    tg = concat_targets([p["targets"] for p in streamed])
    keep = tg["gesture"] > 0 if labelled_only else np.ones(len(tg["gesture"]), bool)
    motion = np.concatenate([p["motion"] for p in streamed])[keep]
    return MotionFrames(motion=torch.from_numpy(motion.astype(np.float32)),
                        vision=torch.from_numpy(np.concatenate([p["vision"] for p in streamed])
                                                [keep]),
                        targets={k: torch.from_numpy(v[keep]) for k, v in tg.items()},
                        clip=np.concatenate(clips)[keep])


def _stream(st: Streamer, hist: np.ndarray, tg: FrameTargets,
            mirror: bool) -> list[StreamedFrames]:
    """One recording streamed through a fresh engine, and with ``mirror`` left-right mirrored
    with its targets mirrored."""
    out = [stream_recording(st.model, st.params, st.meta, hist, tg)]
    if mirror:
        out.append(stream_recording(st.model, st.params, st.meta, hist[..., ::-1].copy(),
                                    mirror_targets(tg)))
    return out


def stream_parts(st: Streamer, fs: FrameSet, parts: list[Part], mirror: bool,
                 progress: bool = False, desc: str = "") -> list[StreamedFrames]:
    """Each part streamed (:func:`_stream`) with :func:`team_targets`."""
    out: list[StreamedFrames] = []
    for p in (tqdm(parts, desc=desc, unit="rec") if progress else parts):
        out += _stream(st, fs.hist[p.start:p.stop], team_targets(fs.labels[p.start:p.stop]),
                       mirror)
    return out


def rehearsal(st: Streamer, tc: GestureFitConfig, subject: int = 1) -> list[StreamedFrames]:
    """A simulated recording of the scenes beyond the gestures (as ``edge-vlm train --model
    gesture`` streams them), mirrored too: mixed into the training frames so that the scene
    groups, which a team's labels do not define (only kind ``gesture`` on its segments), keep
    what they learned instead of drifting to "gesture" everywhere."""
    rec = simulate_scene_recording(subject, LIGHTINGS[0], seed=tc.seed,
                                   clip_duration_s=tc.clip_s + 0.5, gap_s=tc.gap_s)
    fs = recording_frames(rec, tc.period_ns, 0)
    return _stream(st, fs.hist, frame_targets(rec, fs.t_end), tc.mirror)


def pad_batches(data: MotionFrames, batch: int, seed: int) -> MotionFrames:
    """Training frames padded with repeated labelled frames (picked with ``seed``) to a multiple
    of ``batch``: every batch is full, so none is made of unlabelled frames only (whose scene
    kind is IGNORE everywhere: a NaN loss)."""
    n = len(data["clip"])
    extra = (-n) % batch if n > batch else 0
    if extra == 0:
        return data
    pool = np.flatnonzero(data["targets"]["gesture"].numpy() > 0)
    j = np.concatenate([np.arange(n), np.random.default_rng(seed).choice(pool, extra)])
    jt = torch.from_numpy(j)
    return MotionFrames(motion=data["motion"][jt], vision=data["vision"][jt],
                        targets={k: v[jt] for k, v in data["targets"].items()},
                        clip=data["clip"][j])


class Calibration(NamedTuple):
    """The head's temperatures after fine-tuning and the groups refitted on validation."""
    temperatures: dict
    refitted: list


def recalibrate(head, val: MotionFrames) -> Calibration:
    """Refit the temperature of each head group whose validation frames hold two classes or
    more; the others keep the checkpoint's (fitted on one class, a temperature only learns to
    be overconfident). No scene head: no temperatures."""
    if not head.cfg.scene_head:
        return Calibration({}, [])
    old = head.temperature.clone()
    calibrate_head(head, val)
    refit = []
    for i, group in enumerate(HEADS):
        t = val["targets"][group]
        if len(torch.unique(t[t != IGNORE])) >= 2:
            refit.append(group)
        else:
            head.temperature[i] = old[i]
    return Calibration(dict(zip(HEADS, head.temperature.tolist())), refit)


def _load(ckpt: str) -> Streamer:
    model, meta = load_model("" if ckpt in SHIPPED else ckpt)
    if model.motion is None:
        raise ValueError(f"checkpoint {ckpt or 'shipped'!r} has no gesture head to fine-tune "
                         "(fit one first: edge-vlm train --model gesture)")
    return Streamer(model, meta, replay_params(graph=None).captioner)


class Prepared(NamedTuple):
    """The frozen model, the team's frames, their split and the head's streamed inputs."""
    st: Streamer
    fs: FrameSet
    split: DataSplit
    train: MotionFrames         # the training parts (mirrored) and the rehearsal scenes
    val: MotionFrames           # the held-out parts
    rehearsal_frames: int


def prepare(ckpt: str, data_dir: str, tc: GestureFitConfig, val_share: float, rehearse: bool,
            progress: bool) -> Prepared:
    """Read and split the team's recordings, stream them (and with a scene head and
    ``rehearse``, :func:`rehearsal`) through the frozen checkpoint."""
    recs = [r for r in labelled_recordings(data_dir) if r.segments]
    if not recs:
        raise ValueError(f"{str(data_dir)!r}: no recording with a labelled segment")
    st = _load(ckpt)
    fs = recordings_framesets(recs, tc.period_ns)
    split = split_data(fs, [r.name for r in recs], val_share, tc.seed)
    scene = bool(st.model.cfg.scene_head)
    team = stream_parts(st, fs, split.train, tc.mirror, progress, "finetune: stream train")
    extra = rehearsal(st, tc) if scene and rehearse else []
    train = _motion_frames(team + extra, labelled_only=not scene)
    val = _motion_frames(stream_parts(st, fs, split.val, False, progress, "finetune: stream val"),
                         labelled_only=not scene)
    for name, d in (("training", train), ("validation", val)):
        if not bool((d["targets"]["gesture"] > 0).any()):
            raise ValueError(f"no labelled gesture frame in the {name} recordings")
    return Prepared(st, fs, split, train, val, sum(len(p["clip"]) for p in extra))


def finetune(ckpt: str, data_dir: str, out: str, *, val_share: float = 0.25, epochs: int = 20,
             lr: float = 1e-3, seed: int = 0, mirror: bool = True, rehearse: bool = True,
             threads: int = 2, progress: bool = False) -> dict:
    """Fine-tune the gesture / scene heads of checkpoint ``ckpt`` ("" or "shipped": the shipped
    one) on the labelled recordings of ``data_dir``; write checkpoint ``out`` and
    ``finetune.json`` next to it; returns that summary (the checkpoint's head and the fine-tuned
    head scored on the same validation frames: ``before`` and ``after``)."""
    if epochs < 1 or lr <= 0:
        raise ValueError(f"--epochs must be >= 1 and --lr > 0, got {epochs} and {lr}")
    _check_share(val_share)
    tc = GestureFitConfig(init=ckpt, out=out, epochs=epochs, lr=lr, seed=seed, threads=threads,
                          mirror=mirror)
    seed_run(tc)
    t0 = time.time()
    pr = prepare(ckpt, data_dir, tc, val_share, rehearse, progress)
    head = pr.st.model.motion
    original = copy.deepcopy(head.state_dict())
    ad = adapt_head(head, pr, tc, seed, progress)
    before, after, cal = ad.before, ad.after, ad.calibration
    record = {"config": {"checkpoint": ckpt or "shipped", "data": str(data_dir),
                         "val_share": val_share, "epochs": epochs, "lr": lr, "seed": seed,
                         "mirror": mirror, "rehearse": rehearse, "batch": tc.batch,
                         "period_ns": tc.period_ns},
              "adapted": "motion head (gesture" + (" + scene" if head.cfg.scene_head else "")
                         + " groups) on the frozen encoder",
              **_split_record(pr), "best_epoch": ad.best_epoch, "before": before,
              "after": after, "score_before": early_stop_score(before),
              "score_after": early_stop_score(after), "improved": ad.improved,
              "head_changed": any(not torch.equal(v, head.state_dict()[k])
                                  for k, v in original.items()),
              "temperatures": cal.temperatures, "recalibrated": cal.refitted,
              "levels": {name: _level_record(adapt_head(h, pr, tc, seed, progress), h)
                         for name, h in getattr(pr.st.model, "level_motion", {}).items()},
              "seconds": round(time.time() - t0, 1)}
    return save_fit(out, pr.st.model, pr.st.meta, "finetune", record, ad.history)


class Adapted(NamedTuple):
    """A head fine-tuned by :func:`adapt_head`: its scores on the held-out frames before and
    after, the fit's history and best epoch, the temperatures."""
    before: dict
    after: dict
    history: list
    best_epoch: int
    calibration: Calibration

    @property
    def improved(self) -> bool:
        """The per-frame gesture accuracy ("no gesture" included) went up."""
        return (self.after["accuracy"] or 0.0) > (self.before["accuracy"] or 0.0)


def adapt_head(head, pr: Prepared, tc: GestureFitConfig, seed: int,
               progress: bool) -> Adapted:
    """Fine-tune one head on the prepared frames (module doc, steps 3-5): the shared head, or
    an ANC level's own, each the same way (its own best epoch and temperatures)."""
    before = accuracy(head, pr.val)
    for p in head.parameters():
        p.requires_grad_(True)
    fit = fit_head(head, pad_batches(pr.train, tc.batch, seed), pr.val, tc, progress)
    head.load_state_dict(fit.best_state)
    head.eval()
    cal = recalibrate(head, pr.val)
    best = max(fit.history, key=lambda r: r["val_score"])["epoch"]
    return Adapted(before, accuracy(head, pr.val), fit.history, best, cal)


def _level_record(ad: Adapted, head) -> dict:
    """A level head's part of the ``finetune`` record (``levels``)."""
    return {"width": head.width, "before": ad.before, "after": ad.after,
            "best_epoch": ad.best_epoch, "improved": ad.improved,
            "temperatures": ad.calibration.temperatures,
            "recalibrated": ad.calibration.refitted}


def _split_record(pr: Prepared) -> dict:
    """The split's part of the ``finetune`` record."""
    sp = pr.split
    idx = np.concatenate([np.arange(p.start, p.stop) for p in sp.train])
    return {"split": sp.by, "train_recordings": _described(sp.train, sp.by),
            "val_recordings": _described(sp.val, sp.by),
            "train_classes": sorted(int(c) for c in np.unique(pr.fs.labels[idx]) if c > 0),
            "train_frames": int(len(pr.train["clip"])), "rehearsal_frames": pr.rehearsal_frames,
            "val_frames": int(len(pr.val["clip"]))}


def _described(parts: list[Part], by: str) -> list[str]:
    """Names of the parts (split in time: with the frame range of each side)."""
    return [f"{p.name}[{p.start}:{p.stop}]" if by == "time" else p.name for p in parts]


__all__ = ["Calibration", "DataSplit", "Part", "Prepared", "SHIPPED", "Streamer",
           "Adapted", "adapt_head", "finetune",
           "pad_batches", "prepare", "recalibrate", "rehearsal", "split_data", "stream_parts",
           "team_targets"]
