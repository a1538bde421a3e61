"""Where the test subjects' 'nothing' frames are not captioned "nothing moves"
(docs/design.md, "Anti-flicker at intake", last paragraph; issue 17).

    python scripts/scene_relapse.py [--part test|val] [--context 0.6]

Streams the scene recordings of the held-out TEST subjects (the bench's
``edge_vlm.bench.trust.scene_recordings``; ``--part val``: the validation subjects, one per
lighting) through the sparse engine with the node defaults, and prints every 'nothing' frame
whose caption is not "nothing moves", with the scene that moved before it, the time since that
scene's segment ended, and the frames around it (changed patches, events, scene kind and the
smoothed probabilities of "nothing" and "camera shakes").
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def part_recordings(part: str) -> list:
    from edge_vlm.bench.streams import SIM_SEED
    from edge_vlm.bench.trust import scene_recordings
    from edge_vlm.sim import simulate_scene_recording, split_subjects
    from edge_vlm.training.config import LIGHTINGS, TrainConfig
    if part == "test":
        return scene_recordings(False)
    tc = TrainConfig()
    _, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    return [simulate_scene_recording(s, light, seed=SIM_SEED + 7 * s + 1000 * (li + 1),
                                     clip_duration_s=tc.clip_s + 0.5, gap_s=tc.gap_s)
            for s in (int(x) for x in held[:tc.val_subjects])
            for li, light in enumerate(LIGHTINGS)]


def _rows(rec, model, minfo, params) -> list[dict]:
    from edge_vlm.bench.engines import sttf_engine
    from edge_vlm.bench.recordings import sim_frames
    from edge_vlm.bench.trust import recording_segments
    from edge_vlm.sim.captions import SCENE_KINDS
    segs = recording_segments(rec)
    eng = sttf_engine(model, params, True, minfo)
    perceive, seen = eng.perceive, {}

    def watched(*args, **kwargs):       # the frame's changed patches, as process() saw them
        seen["p"] = perceive(*args, **kwargs)
        return seen["p"]
    eng.perceive = watched
    rows = []
    for f in sim_frames(rec, params):
        r = eng.process(f.hist)
        j = next((i for i, g in enumerate(segs) if g["t_start_ns"] < f.t_end <= g["t_end_ns"]),
                 None)
        kp = eng.smoother.state.kind if eng.smoother.state is not None else None
        rows.append(dict(t=f.t_end / 1e9, scene=None if j is None else segs[j]["scene"],
                         text=" ".join(r.text.split()), kind=r.scene.kind if r.scene else "",
                         changed=int(seen["p"].change.sum()),
                         events=int(np.asarray(f.hist).sum()),
                         p_nothing=None if kp is None else float(kp[SCENE_KINDS.index("nothing")]),
                         p_shake=None if kp is None else float(
                             kp[SCENE_KINDS.index("camera_shake")])))
    return rows


def _report(name: str, rows: list[dict], context: float) -> int:
    from edge_vlm.sim.captions import NOTHING_MOVES
    misses = [i for i, r in enumerate(rows) if r["scene"] == "nothing"
              and r["text"] != NOTHING_MOVES]
    shown: set[int] = set()
    for i in misses:
        before = next((rows[k] for k in range(i, -1, -1)
                       if rows[k]["scene"] not in (None, "nothing")), None)
        since = "-" if before is None else f"{rows[i]['t'] - before['t']:.2f} s"
        print(f"{name}: t={rows[i]['t']:.3f} s '{rows[i]['text']}' ({since} after the last "
              f"frame of '{before['scene'] if before else '-'}')")
        for k, r in enumerate(rows):
            if k not in shown and abs(r["t"] - rows[i]["t"]) <= context:
                shown.add(k)
                pn = "-" if r["p_nothing"] is None else f"{r['p_nothing']:.2f}"
                ps = "-" if r["p_shake"] is None else f"{r['p_shake']:.2f}"
                print(f"    t={r['t']:.3f} truth={r['scene'] or '(gap)':<13} changed="
                      f"{r['changed']:<3} events={r['events']:<5} kind={r['kind']:<13} "
                      f"p(nothing)={pn} p(shake)={ps} | {r['text']}")
    return len(misses)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("test", "val"), default="test")
    ap.add_argument("--context", type=float, default=0.6, metavar="S",
                    help="seconds of frames shown around each miss")
    args = ap.parse_args(argv)
    import torch

    from edge_vlm.cores.graph import replay_params
    from edge_vlm.inference.factory import load_model
    torch.set_num_threads(1)
    params = replay_params(graph=None).captioner
    model, minfo = load_model("")
    total = frames = 0
    with torch.no_grad():
        for rec in part_recordings(args.part):
            rows = _rows(rec, model, minfo, params)
            frames += sum(r["scene"] == "nothing" for r in rows)
            total += _report(rec.name, rows, args.context)
    print(f"{args.part}: {frames - total}/{frames} 'nothing' frames captioned \"nothing moves\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
