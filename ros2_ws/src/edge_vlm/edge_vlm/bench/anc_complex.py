"""Does ANC have a reason to route? The branches on complex and quiet frames, and whether the
budget sweep is monotone (part of `edge-vlm bench anc`).

*Complex* frames: the fast (high-motion) gesture clips of the test recordings, and the scene
recordings' segments with several movers or ego-motion (:data:`COMPLEX_KINDS`); *quiet* frames:
low-motion gesture clips and the scene segments where nothing moves. A frame is right when the
heads' answer is: the gesture label on a gesture clip; "no gesture" and the scene kind on a
scene segment. Tiny and Medium run forced and dense (the branches' own capacity, no token
memory); the deployed engine (routed, STTF) at budget 1 says where the router sends each kind.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_vlm.bench.recordings import SimFrame, sim_frames
from edge_vlm.bench.trust import recording_segments, scene_recordings
from edge_vlm.inference.factory import engine_from_params
from edge_vlm.model.anc import LEVELS

__all__ = ["COMPLEX_KINDS", "GROUPS", "QUIET_KINDS", "ComplexFrame", "answer_right",
           "budget_monotone", "complex_figures", "complex_gesture_frames", "complex_scene_frames",
           "in_group"]

#: scene kinds counted as complex (several movers, ego-motion) and as quiet
COMPLEX_KINDS = ("two_movers", "camera_shake")
QUIET_KINDS = ("nothing",)
#: the groups figured: both sets, then each split into its gesture clips and scene segments
GROUPS = ("complex", "complex_gesture", "complex_scene", "quiet", "quiet_gesture", "quiet_scene")
#: forced branch modes compared (level, sparse)
_BRANCHES = {"tiny": (0, False), "medium": (2, False), "routed": (None, True)}


@dataclass(frozen=True)
class ComplexFrame:
    """A frame of the complex/quiet sets with what a right answer is."""

    hist: np.ndarray
    group: str                     # "complex" or "quiet"
    label: int                     # the right gesture label (0: no gesture)
    kind: str | None               # the right scene kind (None: a gesture clip)
    stream: int                    # which recording (engines are fresh per recording)


def complex_gesture_frames(frames: list[list[SimFrame]]) -> list[ComplexFrame]:
    out = []
    for i, fr in enumerate(frames):
        for f in fr:
            if f.gt is not None and f.motion in ("high", "low"):
                out.append(ComplexFrame(f.hist, "complex" if f.motion == "high" else "quiet",
                                        int(f.gt), None, i))
    return out


def complex_scene_frames(params: dict, quick: bool, first_stream: int) -> list[ComplexFrame]:
    out = []
    for i, rec in enumerate(scene_recordings(quick)):
        segs = recording_segments(rec)
        for f in sim_frames(rec, params):
            seg = next((g for g in segs if g["t_start_ns"] < f.t_end <= g["t_end_ns"]), None)
            if seg is None or seg["scene"] == "gesture":
                continue
            group = ("complex" if seg["scene"] in COMPLEX_KINDS
                     else "quiet" if seg["scene"] in QUIET_KINDS else None)
            if group:
                out.append(ComplexFrame(f.hist, group, 0, seg["scene"], first_stream + i))
    return out


def in_group(f: ComplexFrame, group: str) -> bool:
    """Whether ``f`` counts in ``group``: "complex" / "quiet", or one of their halves,
    "<group>_gesture" (the gesture clips) and "<group>_scene" (the scene segments)."""
    g, _, part = group.partition("_")
    return f.group == g and (not part or (part == "gesture") == (f.kind is None))


def answer_right(res, f: ComplexFrame) -> bool:
    if f.kind is None:
        return res.label == f.label
    return res.label == 0 and res.scene is not None and res.scene.kind == f.kind


def _run(model, params: dict, meta: dict, frames: list[ComplexFrame], level, sparse: bool):
    """(right, branch) per frame, fresh engines per recording (frames kept in stream order)."""
    rows, eng, stream = [], None, None
    for f in frames:
        if f.stream != stream:
            eng = engine_from_params(model, {**params, "compute_budget": 1.0}, meta,
                                     sparse=sparse)
            eng.force_level, stream = level, f.stream
        r = eng.process(f.hist)
        rows.append((answer_right(r, f), r.route.branch if r.route is not None else ""))
    return rows


def complex_figures(model, params: dict, meta: dict, frames: list[list[SimFrame]],
                    quick: bool = False) -> dict:
    """Tiny vs Medium accuracy on complex and quiet frames, and the deployed router's branch
    shares on each (``anc_accuracy_gap_complex`` = Medium - Tiny on complex frames)."""
    sets = complex_gesture_frames(frames) + complex_scene_frames(params, quick, len(frames))
    out: dict = {"complex_scene_kinds": list(COMPLEX_KINDS),
                 "quiet_scene_kinds": list(QUIET_KINDS),
                 "frames": {g: sum(in_group(f, g) for f in sets) for g in GROUPS}}
    for name, (level, sparse) in _BRANCHES.items():
        rows = _run(model, params, meta, sets, level, sparse)
        for g in GROUPS:
            sel = [r for r, f in zip(rows, sets) if in_group(f, g)]
            out[f"accuracy_{name}_{g}"] = float(np.mean([r[0] for r in sel])) if sel else None
            if name == "routed":
                out[f"branch_share_{g}"] = {lv: float(np.mean([r[1] == lv for r in sel]))
                                            if sel else None for lv in LEVELS}
    tiny, med = out["accuracy_tiny_complex"], out["accuracy_medium_complex"]
    out["anc_accuracy_gap_complex"] = med - tiny if tiny is not None and med is not None else None
    return out


def budget_monotone(sweep: list[dict]) -> bool | None:
    """Whether accuracy and GFLOPs both never fall as the budget rises (the sweep in budget
    order; strict: any fall, however small, is a no)."""
    rows = sorted((s for s in sweep if s.get("accuracy") is not None), key=lambda s: s["budget"])
    if len(rows) < 2:
        return None
    return all(b["accuracy"] >= a["accuracy"] and b["gflops"] >= a["gflops"]
               for a, b in zip(rows, rows[1:]))
