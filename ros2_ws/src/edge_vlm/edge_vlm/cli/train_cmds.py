"""``edge-vlm train | calibrate``: the training and fitting commands (simulated data)."""
from __future__ import annotations

import json

from edge_vlm.training import train_gesture, train_router
from edge_vlm.training.config import AncTrainConfig, GestureFitConfig, RouterFitConfig, TrainConfig
from edge_vlm.training.data import subject_split
from edge_vlm.training.policy import calibrate_checkpoint
from edge_vlm.training.train import train
from edge_vlm.training.train_anc import train_anc


def _given(value, default):
    return default if value is None else value


def _fit_frozen(args) -> dict:
    """``--model gesture | router``: fit on the frozen checkpoint ``--init``."""
    if args.model == "gesture":
        cls, fit = GestureFitConfig, train_gesture.fit_gesture
        extra = {"batch": args.batch, "motion_width": args.motion_width, "cache": args.cache,
                 "shift": args.shift}
    else:
        cls, fit = RouterFitConfig, train_router.fit_router
        extra = {"balance_weight": args.balance_weight}
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


def _train_sttf(args) -> dict:
    d = TrainConfig()
    tc = TrainConfig(out=args.out, subjects=args.subjects, epochs=_given(args.epochs, d.epochs),
                     steps_per_epoch=_given(args.steps, d.steps_per_epoch),
                     batch=_given(args.batch, d.batch), seed=args.seed, threads=args.threads,
                     workers=args.workers, dim=args.dim, depth=args.depth, window=args.window,
                     lr=args.lr, clip_s=args.clip_s, active_weight=args.active_weight,
                     patience=_given(args.patience, d.patience))
    summary = train(tc, progress=not args.no_progress, resume=args.resume)
    return {k: v for k, v in summary.items() if k != "history"}


def run_train(args) -> int:
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
    res = calibrate_checkpoint(args.checkpoint, subjects, seed=tc.seed)
    print(json.dumps({"subjects": [int(s) for s in subjects], **res}, indent=1))
    return 0
