"""`edge-vlm` command line: synth, stats, play, demo, train.

Subcommands that need ROS (play, demo) import the ROS adapter package lazily,
so the core library itself never imports rclpy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

DEMO_SEED = 7
DEMO_DIR = os.path.join("data", "demo")


def _ros_entry(module: str):
    try:
        mod = __import__(f"edge_vlm_ros.{module}", fromlist=["main"])
    except ImportError as exc:
        sys.exit(f"edge-vlm: ROS 2 workspace not available ({exc}); run `make setup` and `source env.sh` first")
    return mod.main


def cmd_stats(args) -> int:
    from edge_vlm.events import EventDecodeError
    from edge_vlm.io.stats import stats_path

    try:
        st = stats_path(args.path)
    except (EventDecodeError, ValueError, OSError) as exc:
        print(f"edge-vlm stats: {args.path}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(st))
    else:
        for k, v in st.items():
            print(f"{k:>12}: {v}")
    return 0


def synth(out: str, *, subjects: list[int], lightings: list[str], seed: int, clip_s: float, gap_s: float,
          with_frames: bool, fmt: str, storage: str, packet_ms: float = 10.0) -> dict:
    """Simulate recordings and write them as a DVS128 Gesture directory and/or one ROS 2 bag."""
    import numpy as np

    from edge_vlm.events import concat_events
    from edge_vlm.sim import simulate_recording

    os.makedirs(out, exist_ok=True)
    recs, t0 = [], 0
    for i, (s, light) in enumerate((s, light) for s in subjects for light in lightings):
        rec = simulate_recording(s, light, seed=seed * 1000 + i, clip_duration_s=clip_s, gap_s=gap_s,
                                 with_frames=with_frames, t0_ns=t0)
        recs.append(rec)
        t0 = int(rec.events["t"][-1]) + 500_000_000  # half a second of silence between recordings
    written = {}
    if fmt in ("dvs128", "both"):
        from edge_vlm.datasets.dvs128_gesture import Segment, write_splits, write_trial

        root = os.path.join(out, "DvsGesture")
        names = []
        for rec in recs:
            segs = [Segment(c.label, c.t_start_ns // 1000, c.t_end_ns // 1000) for c in rec.clips]
            ev = rec.events.copy()
            ev["t"] = (ev["t"] // 1000) * 1000
            write_trial(root, f"{rec.name}.aedat", ev, segs)
            names.append(f"{rec.name}.aedat")
        write_splits(root, [], names)
        written["dvs128"] = root
    if fmt in ("bag", "both"):
        from edge_vlm.io.bag_writer import write_bag

        gt = [{"clip_id": c.clip_id, "label": c.label, "class_name": c.class_name, "t_start_ns": c.t_start_ns,
               "t_end_ns": c.t_end_ns, "attributes": c.attributes, "references": c.references,
               "caption": c.caption} for r in recs for c in r.clips]
        frames = stamps = None
        if with_frames:
            frames = np.concatenate([r.frames for r in recs])
            stamps = np.concatenate([r.frame_stamps_ns for r in recs])
        path = os.path.join(out, "bag")
        write_bag(path, events=concat_events([r.events for r in recs]), frames=frames, frame_stamps_ns=stamps,
                  ground_truth=gt, storage=storage, packet_ns=int(round(packet_ms * 1e6)))
        written["bag"] = path
    meta = {"subjects": subjects, "lightings": lightings, "seed": seed, "clip_s": clip_s, "gap_s": gap_s,
            "with_frames": with_frames, "packet_ms": packet_ms, "recordings": [r.name for r in recs], **written}
    with open(os.path.join(out, "synth.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def demo_data(out: str = DEMO_DIR) -> str:
    """The bundled default data: a simulated bag of held-out subjects (made once, then reused)."""
    from edge_vlm.sim import split_subjects

    bag = os.path.join(out, "bag")
    if os.path.isfile(os.path.join(bag, "metadata.yaml")):
        return bag
    _, held_out = split_subjects(20, 6, 0)
    synth(out, subjects=[int(held_out[-1])], lightings=["lab", "natural"], seed=DEMO_SEED, clip_s=1.5,
          gap_s=0.3, with_frames=False, fmt="bag", storage="sqlite3")
    return bag


def cmd_synth(args) -> int:
    meta = synth(args.out, subjects=args.subjects, lightings=args.lightings, seed=args.seed, clip_s=args.clip_s,
                 gap_s=args.gap_s, with_frames=not args.no_frames, fmt=args.format, storage=args.storage,
                 packet_ms=args.packet_ms)
    print(json.dumps(meta, indent=1))
    return 0


def cmd_train(args) -> int:
    from edge_vlm.training.train import TrainConfig, train

    if args.model in ("gesture", "router"):       # fits on a frozen checkpoint (--init)
        if args.model == "gesture":
            from edge_vlm.training.train_gesture import GestureFitConfig as Cfg, fit_gesture as fit

            extra = {"batch": args.batch, "motion_width": args.motion_width, "cache": args.cache,
                     "shift": args.shift}
        else:
            from edge_vlm.training.train_router import RouterFitConfig as Cfg, fit_router as fit

            extra = {"balance_weight": args.balance_weight}
        d = Cfg()
        cfg = Cfg(out=args.out if args.out != TrainConfig().out else d.out, init=args.init, subjects=args.subjects,
                  seed=args.seed, threads=args.threads, workers=args.workers, clip_s=args.clip_s,
                  epochs=args.epochs if args.epochs is not None else d.epochs,
                  **{k: v for k, v in extra.items() if v is not None})
        summary = fit(cfg, progress=not args.no_progress)
        print(json.dumps({k: v for k, v in summary.items() if k not in ("history", "config")}, indent=1))
        return 0
    if args.model == "anc":
        from edge_vlm.training.train_anc import AncTrainConfig, train_anc

        d = AncTrainConfig()
        out = args.out if args.out != TrainConfig().out else d.out
        tc = AncTrainConfig(out=out, init=args.init, subjects=args.subjects,
                            epochs=args.epochs if args.epochs is not None else d.epochs,
                            steps_per_epoch=args.steps if args.steps is not None else d.steps_per_epoch,
                            batch=args.batch if args.batch is not None else d.batch, seed=args.seed,
                            threads=args.threads, workers=args.workers, clip_s=args.clip_s,
                            patience=args.patience if args.patience is not None else d.patience,
                            balance_weight=(args.balance_weight if args.balance_weight is not None
                                            else d.balance_weight))
        summary = train_anc(tc, progress=not args.no_progress, resume=args.resume)
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
        return 0
    d = TrainConfig()
    args.epochs = d.epochs if args.epochs is None else args.epochs
    args.steps = d.steps_per_epoch if args.steps is None else args.steps
    args.batch = d.batch if args.batch is None else args.batch
    args.patience = d.patience if args.patience is None else args.patience

    tc = TrainConfig(out=args.out, subjects=args.subjects, epochs=args.epochs, steps_per_epoch=args.steps,
                     batch=args.batch, seed=args.seed, threads=args.threads, workers=args.workers,
                     dim=args.dim, depth=args.depth, window=args.window, lr=args.lr, clip_s=args.clip_s,
                     active_weight=args.active_weight, patience=args.patience)
    summary = train(tc, progress=not args.no_progress, resume=args.resume)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0


def cmd_calibrate(args) -> int:
    from edge_vlm.training.policy import calibrate_checkpoint
    from edge_vlm.training.train import TrainConfig
    from edge_vlm.sim import split_subjects

    tc = TrainConfig()
    _, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    subjects = args.subjects or list(held[:tc.val_subjects])
    res = calibrate_checkpoint(args.checkpoint, subjects, seed=tc.seed)
    print(json.dumps({"subjects": [int(s) for s in subjects], **res}, indent=1))
    return 0


def cmd_demo(args) -> int:
    bag = args.bag or demo_data()
    argv = [bag, "--out-dir", args.out_dir] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    os.makedirs(args.out_dir, exist_ok=True)
    argv += list(args.extra)
    return int(_ros_entry("demo")(argv) or 0)


def cmd_play(args) -> int:
    return int(_ros_entry("player")(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-vlm", description="edge_vlm: event-camera VLM tools")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("stats", help="event statistics of a bag directory or an AEDAT 3.1 file")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_stats)

    s = sub.add_parser("synth", help="simulate DVS128 gesture recordings (DVS128 layout and/or ROS 2 bag)")
    s.add_argument("--out", default="data/synth")
    s.add_argument("--subjects", type=int, nargs="+", default=[0])
    s.add_argument("--lightings", nargs="+", default=["lab"], choices=["lab", "fluorescent", "natural"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--clip-s", type=float, default=1.5)
    s.add_argument("--gap-s", type=float, default=0.3)
    s.add_argument("--no-frames", action="store_true", help="events only (like a DVS128)")
    s.add_argument("--format", choices=["bag", "dvs128", "both"], default="both")
    s.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    s.add_argument("--packet-ms", type=float, default=10.0, help="EventPacket length in sensor time (ms)")
    s.set_defaults(fn=cmd_synth)

    from edge_vlm.training.train import TrainConfig

    d = TrainConfig()
    s = sub.add_parser("train", help="train the STTF (or joint STTF+ANC) captioning model on simulated data "
                       "(resumable)")
    s.add_argument("--model", choices=("sttf", "anc", "router", "gesture"), default="sttf",
                   help="sttf: the STTF model from scratch; anc: the joint STTF+ANC model grown from --init; "
                        "router: fit the router of the joint checkpoint --init on its frozen branches; "
                        "gesture: fit the gesture head's motion net on the frozen checkpoint --init")
    s.add_argument("--init", default="", help="anc: STTF checkpoint to grow from; router, gesture: checkpoint "
                                              "(default: the shipped one)")
    s.add_argument("--out", default=d.out)
    s.add_argument("--subjects", type=int, default=d.subjects)
    s.add_argument("--epochs", type=int, default=None, help=f"default {d.epochs} (sttf) / 4 (anc)")
    s.add_argument("--steps", type=int, default=None, help=f"steps per epoch, default {d.steps_per_epoch}")
    s.add_argument("--batch", type=int, default=None, help=f"default {d.batch} (sttf) / 12 (anc)")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--threads", type=int, default=d.threads)
    s.add_argument("--workers", type=int, default=d.workers, help="simulation processes")
    s.add_argument("--dim", type=int, default=d.dim)
    s.add_argument("--depth", type=int, default=d.depth, help="encoder (sparse ViT) layers")
    s.add_argument("--window", type=int, default=d.window, help="frames of temporal context (= max token age)")
    s.add_argument("--lr", type=float, default=d.lr)
    s.add_argument("--clip-s", type=float, default=d.clip_s)
    s.add_argument("--active-weight", type=float, default=d.active_weight,
                   help="lambda of the expected active-token ratio in the loss")
    s.add_argument("--patience", type=int, default=None, help="early stopping (epochs without improvement)")
    s.add_argument("--balance-weight", type=float, default=None,
                   help="anc: weight of the routing load-balancing (entropy) term (default 0.1)")
    s.add_argument("--resume", action="store_true", help="continue from <out>.resume")
    s.add_argument("--motion-width", type=int, default=None,
                   help="gesture: channels of the motion head's first convs (default 32)")
    s.add_argument("--shift", type=int, default=None,
                   help="gesture: translate the training motion states by up to this many patches (default 1)")
    s.add_argument("--cache", default="", help="gesture: file keeping the streamed frames, reused by a rerun on "
                                                "the same checkpoint and data")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("calibrate", help="fit the sparse ViT's per-layer gate thresholds on the validation "
                       "subjects and store them in the checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("--subjects", type=int, nargs="+", default=None,
                   help="simulated subjects (default: the validation subjects of edge-vlm train)")
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("demo", help="replay a bag (default: the simulated demo bag) through the three nodes")
    s.add_argument("--bag", default="")
    s.add_argument("--checkpoint", default="")
    s.add_argument("--out-dir", default=os.path.join(DEMO_DIR, "run"), help="records, node logs, summary.json")
    s.add_argument("extra", nargs=argparse.REMAINDER, help="more options for the demo runner")
    s.set_defaults(fn=cmd_demo)

    from edge_vlm.cli import bench as bench_cli, eval as eval_cli
    from edge_vlm.evaluation import coco, paper
    from edge_vlm.io import convert

    eval_cli.add_parser(sub)
    convert.add_parser(sub)
    bench_cli.add_parser(sub)
    coco.add_parser(sub)
    paper.add_parser(sub)

    s = sub.add_parser("play", help="bag player (ros2 bag play is not available here)", add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_play)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
