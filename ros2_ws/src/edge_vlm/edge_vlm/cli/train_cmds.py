"""``edge-vlm train | calibrate | finetune``: the training and fitting commands (simulated data,
with ``train --data`` the real DVS128 Gesture download, with ``finetune`` a team's own labelled
recordings)."""
from __future__ import annotations

import dataclasses
import json
import sys

from edge_vlm.model.checkpoint import CheckpointError
from edge_vlm.training import router_heads, train_gesture, train_router
from edge_vlm.training.config import AncTrainConfig, GestureFitConfig, RouterFitConfig, TrainConfig
from edge_vlm.training.data import subject_split
from edge_vlm.training.finetune import finetune
from edge_vlm.training.policy import calibrate_checkpoint
from edge_vlm.training.real_data import dvs128_split
from edge_vlm.training.train import train, train_real
from edge_vlm.training.train_anc import train_anc


def _given(value, default):
    return default if value is None else value


def _fit_frozen(args) -> dict:
    """``--model gesture | router``: fit on the frozen checkpoint ``--init``."""
    if args.model == "gesture":
        cls, fit = GestureFitConfig, train_gesture.fit_gesture
        extra = {"batch": args.batch, "motion_width": args.motion_width, "cache": args.cache,
                 "shift": args.shift, "extra_subjects": args.extra_subjects,
                 "level": args.level}
    else:
        cls = RouterFitConfig
        fit = router_heads.fit_router_heads if args.heads else train_router.fit_router
        extra = {"balance_weight": args.balance_weight, "cost_weight": args.cost_weight,
                 "heads": bool(args.heads)}
        if args.heads and args.cost_weight is not None:     # one weight, no choice
            extra["cost_weights"] = (args.cost_weight,)
    d = cls()
    cfg = cls(out=args.out if args.out != TrainConfig().out else d.out, init=args.init,
              subjects=args.subjects, seed=args.seed, threads=args.threads, workers=args.workers,
              clip_s=args.clip_s, epochs=_given(args.epochs, d.epochs),
              **{k: v for k, v in extra.items() if v is not None})
    summary = fit(cfg, progress=not args.no_progress)
    return {k: v for k, v in summary.items() if k not in ("history", "config")}


def _train_anc(args) -> dict:
    d = AncTrainConfig()
    tc = AncTrainConfig(out=args.out if args.out != TrainConfig().out else d.out, init=args.init,
                        subjects=args.subjects, epochs=_given(args.epochs, d.epochs),
                        steps_per_epoch=_given(args.steps, d.steps_per_epoch),
                        batch=_given(args.batch, d.batch), seed=args.seed, threads=args.threads,
                        workers=args.workers, clip_s=args.clip_s,
                        patience=_given(args.patience, d.patience),
                        balance_weight=_given(args.balance_weight, d.balance_weight))
    summary = train_anc(tc, progress=not args.no_progress, resume=args.resume)
    return {k: v for k, v in summary.items() if k != "history"}


def _sttf_config(args) -> TrainConfig:
    d = TrainConfig()
    return TrainConfig(out=args.out, subjects=args.subjects, epochs=_given(args.epochs, d.epochs),
                       steps_per_epoch=_given(args.steps, d.steps_per_epoch),
                       batch=_given(args.batch, d.batch), seed=args.seed, threads=args.threads,
                       workers=args.workers, dim=args.dim, depth=args.depth, window=args.window,
                       lr=args.lr, clip_s=args.clip_s, active_weight=args.active_weight,
                       patience=_given(args.patience, d.patience))


def _train_sttf(args) -> dict:
    summary = train(_sttf_config(args), progress=not args.no_progress, resume=args.resume)
    return {k: v for k, v in summary.items() if k != "history"}


def _fail(msg: str) -> int:
    print(f"edge-vlm train: error: {msg}", file=sys.stderr)
    return 2


def _train_real(args) -> int:
    """``--data DvsGesture``: the STTF model on the real download; a folder that is not one (or
    an unreadable trial) is a one-line error and exit status 2."""
    if args.model != "sttf":
        return _fail(f"--data trains the sttf model only, not --model {args.model}")
    if args.test_frames < 0:
        return _fail(f"--test-frames must be >= 0, got {args.test_frames}")
    tc = dataclasses.replace(_sttf_config(args), data=args.data, val_users=args.val_users,
                             test_frames=args.test_frames, frames_dir=args.frames_dir)
    try:
        dvs128_split(tc.data, tc.val_users, tc.seed)      # the folder, before any training
        summary = train_real(tc, progress=not args.no_progress, resume=args.resume)
    except (FileNotFoundError, ValueError, OSError) as exc:
        return _fail(str(exc))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0


def run_train(args) -> int:
    if getattr(args, "data", ""):
        return _train_real(args)
    if args.model in ("gesture", "router"):
        out = _fit_frozen(args)
    elif args.model == "anc":
        out = _train_anc(args)
    else:
        out = _train_sttf(args)
    print(json.dumps(out, indent=1))
    return 0


def run_calibrate(args) -> int:
    tc = TrainConfig()
    subjects = args.subjects or subject_split(tc).val
    try:
        res = calibrate_checkpoint(args.checkpoint, subjects, seed=tc.seed)
    except (CheckpointError, OSError) as exc:     # missing / corrupt / unwritable checkpoint
        print(f"edge-vlm calibrate: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 3 if isinstance(exc, CheckpointError) else 2
    print(json.dumps({"subjects": [int(s) for s in subjects], **res}, indent=1))
    return 0


def run_finetune(args) -> int:
    """``edge-vlm finetune CKPT --data DIR``: a missing folder or checkpoint, a folder without
    labelled recordings or a bad option is a one-line error and exit status 2."""
    try:
        summary = finetune(args.checkpoint, args.data, args.out, val_share=args.val_share,
                           epochs=args.epochs, lr=args.lr, seed=args.seed,
                           mirror=not args.no_mirror, rehearse=not args.no_rehearse,
                           threads=args.threads,
                           progress=not args.no_progress)
    except (FileNotFoundError, ValueError, OSError, CheckpointError) as exc:
        print(f"edge-vlm finetune: error: {exc}", file=sys.stderr)
        return 2
    out = {k: v for k, v in summary.items() if k not in ("history", "config")}
    print(json.dumps(out, indent=1))
    if not summary["improved"]:
        print("edge-vlm finetune: note: the fine-tuned head does not score above the "
              "checkpoint's on the held-out recordings (before / after in finetune.json)",
              file=sys.stderr)
    return 0
