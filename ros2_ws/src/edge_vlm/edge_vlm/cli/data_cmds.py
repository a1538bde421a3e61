"""``edge-vlm stats | synth | convert``: event data in and out."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from edge_vlm.datasets.dvs128_gesture import (Dvs128Dataset, gesture_ground_truth, labels_path,
                                              read_labels_csv)
from edge_vlm.events import EventDecodeError
from edge_vlm.io.bag_reader import BagError
from edge_vlm.io.bag_writer import BagExistsError
from edge_vlm.io.convert import convert_file, packet_ns_of
from edge_vlm.io.stats import stats_path
from edge_vlm.sim.captions import class_references
from edge_vlm.sim.export import synth


def run_stats(args) -> int:
    try:
        st = stats_path(args.path)
    except (EventDecodeError, ValueError, OSError) as exc:
        print(f"edge-vlm stats: error: {args.path}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(st))
    else:
        for k, v in st.items():
            print(f"{k:>12}: {v}")
    return 0


def _check_synth(args) -> None:
    """Bad ``synth`` options, before anything is simulated or written: ValueError."""
    if not args.clip_s > 0:
        raise ValueError(f"--clip-s must be > 0, got {args.clip_s:g}")
    if not args.gap_s >= 0:
        raise ValueError(f"--gap-s must be >= 0, got {args.gap_s:g}")
    packet_ns_of(args.packet_ms)


def run_synth(args) -> int:
    """Simulated recordings; bad options or an unwritable ``--out``: one error line, exit 2."""
    try:
        _check_synth(args)
        meta = synth(args.out, subjects=args.subjects, lightings=args.lightings, seed=args.seed,
                     clip_s=args.clip_s, gap_s=args.gap_s, with_frames=not args.no_frames,
                     fmt=args.format, storage=args.storage, packet_ms=args.packet_ms,
                     scenes=args.scenes)
    except (ValueError, OSError) as exc:
        print(f"edge-vlm synth: error: {_os_message(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(meta, indent=1))
    return 0


def _os_message(exc: Exception) -> str:
    """One line for an error: an OSError as 'path: what' (no errno prefix)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return " ".join(str(exc).split())


def _convert_one(inp: Path, out: Path, args) -> dict:
    """One recording; a DvsGesture trial with its labels CSV next to it gets its ground truth."""
    gt: list[dict] = []
    lab = labels_path(inp)
    if inp.name.endswith(".aedat") and lab.is_file():
        gt = gesture_ground_truth(inp, read_labels_csv(lab), class_references)
    return convert_file(inp, out, storage=args.storage, packet_ms=args.packet_ms, width=args.width,
                        height=args.height, camera=args.camera, overwrite=args.overwrite,
                        ground_truth=gt).to_dict()


def _is_gesture_dir(p: Path) -> bool:
    return p.is_dir() and not (p / "metadata.yaml").exists() and any(p.glob("*.aedat"))


def run_convert(args) -> int:
    """A recording, or a DvsGesture directory (one bag per trial under OUTPUT); 2 on an error."""
    inp = Path(args.input)
    try:
        if _is_gesture_dir(inp):
            trials = Dvs128Dataset(inp).trials(args.split)
            if args.limit is not None:
                trials = trials[:args.limit]
            os.makedirs(args.output, exist_ok=True)
            results = [_convert_one(Path(t), Path(args.output) / Path(t).name[:-len(".aedat")],
                                    args)
                       for t in trials]
            summary: dict = {"trials": len(results), "bags": results}
        else:
            summary = _convert_one(inp, Path(args.output), args)
    except BagExistsError as exc:
        print(f"edge-vlm convert: error: {exc.filename} exists: pass --overwrite "
              "to replace it", file=sys.stderr)
        return 2
    except (EventDecodeError, BagError, ValueError, OSError) as exc:
        print(f"edge-vlm convert: error: {args.input}: {_os_message(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0
