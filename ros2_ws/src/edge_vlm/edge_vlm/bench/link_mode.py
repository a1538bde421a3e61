"""Offline effect of link mode 'active' (docs/deploy.md) on the captioner, no ROS.

The simulated held-out test recordings (:func:`~edge_vlm.bench.recordings.test_recordings`)
are cut into frames as the nodes cut them (10 ms packets, the absolute frame grid). Per frame,
the drone's mask is ``sttf_perception``'s (:class:`~edge_vlm.cores.perception.PerceptionCore`
on the raw events' histogram); the ground's sparse engine
(:func:`~edge_vlm.bench.engines.sttf_engine`, the STTF bench's) follows that mask in both
modes and sees either the raw events' histogram (``raw``) or the histogram of the events
:func:`~edge_vlm.stream.link_filter.filter_active` keeps (``active``). Reported: per-frame
gesture accuracy of both over the labelled frames, and the share of events kept.

    python -m edge_vlm.bench.link_mode [--quick]        # one JSON object on stdout
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from edge_vlm.bench.engines import bench_model, sttf_engine
from edge_vlm.bench.recordings import test_recordings
from edge_vlm.bench.streams import PACKET_NS
from edge_vlm.cores.graph import replay_params
from edge_vlm.cores.perception import PerceptionCore
from edge_vlm.io.packets import packet_grid
from edge_vlm.sim import Recording
from edge_vlm.stream.frames import Frame, FrameClock, frame_histogram, period_ns
from edge_vlm.stream.link_filter import LinkGeometry, filter_active

__all__ = ["recording_frames", "link_mode_accuracy"]


def recording_frames(rec: Recording, params: dict) -> list[Frame]:
    """The frames of a recording with their events (the cut of ``sim_frames``)."""
    clock = FrameClock(period_ns(params))
    starts, bounds = packet_grid(rec.events["t"], PACKET_NS)
    fs: list[Frame] = []
    for i in range(len(starts)):
        fs += clock.push(rec.events[bounds[i]:bounds[i + 1]], 128, 128)
    return fs + clock.flush()


def _label(rec: Recording, t_end: int) -> int | None:
    clip = next((c for c in rec.clips if c.t_start_ns < t_end <= c.t_end_ns), None)
    return clip.label if clip else None


def link_mode_accuracy(quick: bool = False, checkpoint: str = "") -> dict:
    """Raw vs active-patch events into the same sparse engine (see the module doc)."""
    rp = replay_params(graph=None, checkpoint=checkpoint)
    cap, per = rp.captioner, rp.perception
    recs = test_recordings(quick)
    model, minfo = bench_model(checkpoint,
                               [r for rec in recs for c in rec.clips for r in c.references])
    core = PerceptionCore(per)
    geom = (int(cap["model_width"]), int(cap["model_height"]), int(cap["patch_size"]))
    hits = {"raw": 0, "active": 0}
    scored = events = kept = frames = 0
    active_share = []
    with torch.no_grad():
        for rec in recs:
            engines = {m: sttf_engine(model, cap, True, minfo) for m in hits}
            for f in recording_frames(rec, per):
                r = core.process(f)
                mask = np.zeros(r.total_tokens, dtype=bool)
                mask[r.active_indices.astype(np.int64)] = True
                ev = filter_active(f.events, f.t_start, f.t_end, r.active_indices,
                                   LinkGeometry(f.width, f.height, *geom))
                act = Frame(f.index, f.t_start, f.t_end, ev, f.width, f.height)
                res = {"raw": engines["raw"].process(frame_histogram(f, cap), None, mask),
                       "active": engines["active"].process(frame_histogram(act, cap), None,
                                                           mask)}
                frames += 1
                events, kept = events + len(f.events), kept + len(ev)
                active_share.append(r.active_fraction)
                gt = _label(rec, f.t_end)
                if gt is not None:
                    scored += 1
                    for m, x in res.items():
                        hits[m] += int(x.label == gt)
    acc = {m: round(h / scored, 4) if scored else None for m, h in hits.items()}
    return {"recordings": [r.name for r in recs], "frames": frames, "frames_scored": scored,
            "model": minfo, "mask_method": per["mask_method"],
            "gesture_accuracy_raw": acc["raw"], "gesture_accuracy_active": acc["active"],
            "events": events, "events_kept": kept,
            "events_kept_share": round(kept / events, 4) if events else None,
            "active_token_fraction_mean": (round(float(np.mean(active_share)), 4)
                                           if active_share else None)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_vlm.bench.link_mode",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short recording")
    ap.add_argument("--checkpoint", default="", help="default: the shipped checkpoint")
    args = ap.parse_args(argv)
    try:
        out = link_mode_accuracy(args.quick, args.checkpoint)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
