"""What the ego-motion rule (``shake_min_patches``; docs/design.md, "The ego-motion rule")
changes, on the held-out subjects' simulated recordings, events only.

    python scripts/shake_rule_check.py [--part test|val] [--values 0 10]

Streams the scene recordings (``--part test``: the bench's, one per test subject, plus the STTF
test set's gesture recordings; ``--part val``: the validation subjects' scene recordings, one per
lighting) through the sparse engine with the node defaults but ``shake_min_patches`` set to each
of ``--values``, and prints per value the trust figures of ``make bench``
(:func:`edge_vlm.evaluation.trust.trust_metrics`) and the scene-kind accuracy per kind. Also
prints, per kind, the most patches changed within the rule's window that a 'nothing' frame had
(the rule's default is one more than that on the validation subjects).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np


def _stream(rec, model, minfo, params, segs, offset, recent):
    from edge_vlm.bench.engines import sttf_engine
    from edge_vlm.bench.recordings import sim_frames
    from edge_vlm.bench.trust import trust_row
    from edge_vlm.inference.grounding import SHAKE_WINDOW_FRAMES
    from edge_vlm.stream.frames import period_ns
    eng = sttf_engine(model, params, True, minfo)
    rows = []
    for f in sim_frames(rec, params):
        rows.append(trust_row(rec.name, f.t_end, period_ns(params), eng.process(f.hist), segs,
                              offset))
        if rows[-1].gt_scene is not None:
            recent[rows[-1].gt_scene].append(int((eng.age < SHAKE_WINDOW_FRAMES).sum()))
    return rows


def _figures(part: str, value: int, model, minfo) -> tuple[dict, dict, dict]:
    from edge_vlm.bench.recordings import test_recordings
    from edge_vlm.bench.trust import recording_segments
    from edge_vlm.cores.graph import replay_params
    from edge_vlm.evaluation.trust import trust_metrics
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from scene_relapse import part_recordings
    params = dict(replay_params(graph=None).captioner, shake_min_patches=value)
    recs = part_recordings(part) + (test_recordings() if part == "test" else [])
    rows, segments, recent = [], [], defaultdict(list)
    for rec in recs:
        segs = recording_segments(rec)
        rows += _stream(rec, model, minfo, params, segs, len(segments), recent)
        segments += segs
    kinds = defaultdict(list)
    for r in rows:
        if r.gt_scene is not None:
            kinds[r.gt_scene].append(r.scene_kind == r.gt_scene)
    return trust_metrics(rows, segments), kinds, recent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("test", "val"), default="test")
    ap.add_argument("--values", type=int, nargs="+", default=[0, 10])
    args = ap.parse_args(argv)
    import torch

    from edge_vlm.inference.factory import load_model
    torch.set_num_threads(1)
    model, minfo = load_model("")
    keys = ("nothing_moves_rate_empty", "false_gesture_rate_non_gesture", "accuracy",
            "caption_label_consistency", "caption_class_accuracy", "ece",
            "label_switches_per_s_in_gesture")
    with torch.no_grad():
        for v in args.values:
            trust, kinds, recent = _figures(args.part, v, model, minfo)
            print(f"{args.part}, shake_min_patches={v}: " + ", ".join(
                f"{k} {trust[k]:.4f}" for k in keys if trust.get(k) is not None))
            print("  scene kind right: " + ", ".join(
                f"{k} {sum(x)}/{len(x)}" for k, x in sorted(kinds.items())))
            if v == args.values[0]:
                print("  patches changed in the window, max / 5th percentile: " + ", ".join(
                    f"{k} {max(x)}/{np.percentile(x, 5):.0f}" for k, x in sorted(recent.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
