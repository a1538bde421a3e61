"""``edge-vlm convert INPUT OUTPUT_BAG``: any readable event recording -> ROS 2 bag.

INPUT is anything :func:`edge_vlm.formats.read_events` reads (AEDAT 2.0 /
3.1 / 4.0, Prophesee RAW EVT 2.0/3.0 and DAT, RPG ``events.txt``, another
bag), or DVS128 Gesture data:

* a trial ``userXX_<lighting>.aedat`` with its ``userXX_<lighting>_labels.csv``
  next to it: the gesture segments go to ``/edge_vlm/ground_truth`` as one
  JSON object each (design.md: clip_id, label, class_name, t_start_ns,
  t_end_ns, attributes, references (>= 5 captions), plus caption);
* a DvsGesture directory (``*.aedat`` + labels + split lists): one bag per
  trial, written to ``OUTPUT_BAG/<trial name>/`` (``--split``, ``--limit``).

Events are written as ``mono`` EventPackets cut every ``--packet-ms`` of
sensor time (:func:`edge_vlm.bag_writer.write_bag`); the sensor size is kept
(``--width/--height`` override it).  Core code: no rclpy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_parser", "run", "convert_file", "gesture_ground_truth"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``convert`` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "convert", help="convert an event recording (AEDAT 2/3.1/4, Prophesee RAW/DAT, "
                        "RPG events.txt, DvsGesture) to a ROS 2 bag",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("input", help="event file, DvsGesture trial (.aedat) or directory, or bag")
    p.add_argument("output", help="output bag folder (for a DvsGesture directory: a parent folder)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--packet-ms", type=float, default=2.0,
                   help="EventPacket length in ms of sensor time (default 2)")
    p.add_argument("--width", type=int, default=None, help="override the sensor width")
    p.add_argument("--height", type=int, default=None, help="override the sensor height")
    p.add_argument("--camera", choices=("DVS128", "DAVIS240"), default=None,
                   help="AEDAT 2.0 address layout (default: from the file header, else DVS128)")
    p.add_argument("--split", choices=("train", "test", "all"), default="all",
                   help="DvsGesture directory: which trials")
    p.add_argument("--limit", type=int, default=None, help="DvsGesture directory: at most N trials")
    p.add_argument("--overwrite", action="store_true", help="replace existing output bags")
    p.set_defaults(fn=run)
    return p


def _references(label: int) -> list[str]:
    """Six captions for a real DvsGesture segment (no simulator attributes known)."""
    from edge_vlm.sim.captions import CLASS_PHRASES

    vp0, vps, gers = CLASS_PHRASES[label]
    return [f"a person {vp0}", f"someone {vps[0]}", f"a person {vps[1]}",
            f"a subject {vps[2]}", f"a person is {gers[0]}", f"someone is {gers[1]}"]


def gesture_ground_truth(trial: str | os.PathLike, segments) -> list[dict[str, Any]]:
    """Ground-truth JSON objects (design.md) for the labelled segments of a trial."""
    from edge_vlm.datasets.dvs128_gesture import parse_trial_name

    stem = Path(trial).name[:-len(".aedat")] if str(trial).endswith(".aedat") else Path(trial).name
    try:
        user, lighting = parse_trial_name(trial)
    except ValueError:
        user, lighting = None, None
    out = []
    for i, seg in enumerate(segments):
        refs = _references(seg.label)
        out.append({"clip_id": f"{stem}_{i:02d}", "label": int(seg.label),
                    "class_name": seg.class_name, "t_start_ns": int(seg.start_ns),
                    "t_end_ns": int(seg.end_ns),
                    "attributes": {"source": "DvsGesture", "subject": user, "lighting": lighting},
                    "references": refs, "caption": refs[0]})
    return out


def convert_file(inp: str | os.PathLike, out: str | os.PathLike, *, storage: str = "sqlite3",
                 packet_ms: float = 2.0, width: int | None = None, height: int | None = None,
                 camera: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Convert one recording; returns a summary dict (events, size, format, ground truth)."""
    from edge_vlm.io.bag_writer import write_bag
    from edge_vlm.datasets.dvs128_gesture import labels_path, read_labels_csv
    from edge_vlm.events import EventDecodeError
    from edge_vlm.io.formats import read_events

    ev, info = read_events(inp, camera=camera)
    w = int(width if width is not None else info["width"])
    h = int(height if height is not None else info["height"])
    if w <= 0 or h <= 0:
        raise EventDecodeError(f"invalid sensor size {w}x{h}")
    if ev.size and (int(ev["x"].max()) >= w or int(ev["y"].max()) >= h):
        raise EventDecodeError(f"events do not fit the sensor size {w}x{h}")
    gt: list[dict] = []
    lab = labels_path(inp)
    if str(inp).endswith(".aedat") and lab.is_file():
        gt = gesture_ground_truth(inp, read_labels_csv(lab))
    packet_ns = int(round(packet_ms * 1e6))
    if not 0 < packet_ns <= 4_000_000_000:
        raise ValueError("--packet-ms must be in (0, 4000] (mono offsets are 32-bit ns)")
    if ev.size > 1 and np.any(np.diff(ev["t"]) < 0):
        ev = ev[np.argsort(ev["t"], kind="stable")]
    write_bag(out, events=ev, width=w, height=h, encoding="mono", packet_ns=packet_ns,
              ground_truth=gt, storage=storage, overwrite=overwrite)
    return {"input": os.fspath(inp), "output": os.fspath(out), "format": info["format"],
            "events": int(ev.size), "width": w, "height": h, "ground_truth": len(gt),
            "storage": storage}


def _is_gesture_dir(p: Path) -> bool:
    return p.is_dir() and not (p / "metadata.yaml").exists() and any(p.glob("*.aedat"))


def run(args) -> int:
    """Run ``edge-vlm convert``; 0 on success, 2 on a read/convert error."""
    from edge_vlm.io.bag_reader import BagError
    from edge_vlm.events import EventDecodeError

    inp = Path(args.input)
    kw = dict(storage=args.storage, packet_ms=args.packet_ms, width=args.width,
              height=args.height, camera=args.camera, overwrite=args.overwrite)
    try:
        if _is_gesture_dir(inp):
            from edge_vlm.datasets.dvs128_gesture import Dvs128Dataset
            trials = Dvs128Dataset(inp).trials(args.split)
            if args.limit is not None:
                trials = trials[:args.limit]
            os.makedirs(args.output, exist_ok=True)
            results = [convert_file(t, Path(args.output) / Path(t).name[:-len(".aedat")], **kw)
                       for t in trials]
            summary: Any = {"trials": len(results), "bags": results}
        else:
            summary = convert_file(inp, args.output, **kw)
    except (EventDecodeError, BagError, ValueError, OSError) as exc:
        print(f"edge-vlm convert: {args.input}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0
