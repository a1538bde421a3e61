"""Why ANC's branches are equally accurate: each branch's vision head alone, next to the
heads' published answer (issue 19, part 3; docs/design.md "Why the branches do not differ").

    python scripts/anc_vision_only.py [--quick]

The frames of ``make bench``'s complex/quiet comparison (:mod:`edge_vlm.bench.anc_complex`:
the test recordings' gesture clips, fast = complex, slow = quiet; the scene recordings'
two-mover, camera-shake and empty segments). Every branch runs forced and dense, as there. Per
branch it prints the published answer's accuracy and, on gesture frames, how often the vision
head alone (encoder branch -> fusion -> vision head, the only part of the answer that depends
on the branch) names the right gesture; the motion head, which reads the event history and not
the branch, adds the rest.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _rows(model, params, meta, sets, level) -> list[tuple]:
    from edge_vlm.bench.anc_complex import answer_right
    from edge_vlm.inference.factory import engine_from_params
    rows, stream, seen = [], None, {}
    eng = None
    for f in sets:
        if f.stream != stream:
            eng = engine_from_params(model, {**params, "compute_budget": 1.0}, meta,
                                     sparse=False)
            eng.force_level, stream = level, f.stream
            perceive = eng.perceive

            def watched(*a, _perceive=perceive, **k):
                seen["p"] = _perceive(*a, **k)
                return seen["p"]
            eng.perceive = watched
        r = eng.process(f.hist)
        vision = 1 + int(np.argmax(seen["p"].vision_logits.numpy()))     # DVS128 id 1..11
        rows.append((f.group, f.kind, answer_right(r, f), f.kind is None and vision == f.label))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short recording of each kind")
    args = ap.parse_args(argv)
    import torch

    from edge_vlm.bench.anc import anc_model
    from edge_vlm.bench.anc_complex import complex_gesture_frames, complex_scene_frames
    from edge_vlm.bench.recordings import sim_frames, test_recordings
    from edge_vlm.cores.graph import replay_params
    from edge_vlm.model.anc import LEVELS
    torch.set_num_threads(1)
    params = replay_params(graph=None).captioner
    ck = anc_model("")
    frames = [sim_frames(r, params) for r in test_recordings(args.quick)]
    sets = complex_gesture_frames(frames) + complex_scene_frames(params, args.quick, len(frames))
    print("| branch | gesture frames | published answer right | vision head alone right |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for level, name in enumerate(LEVELS):
            rows = _rows(ck.model, params, ck.meta, sets, level)
            for group in ("complex", "quiet"):
                g = [r for r in rows if r[0] == group and r[1] is None]
                if g:
                    print(f"| {name} | {group} ({len(g)}) | {np.mean([r[2] for r in g]):.3f} | "
                          f"{np.mean([r[3] for r in g]):.3f} |")
            scenes = [r for r in rows if r[1] is not None]
            for kind in sorted({r[1] for r in scenes}):
                k = [r for r in scenes if r[1] == kind]
                print(f"| {name} | scene `{kind}` ({len(k)}) | {np.mean([r[2] for r in k]):.3f} "
                      "| - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
