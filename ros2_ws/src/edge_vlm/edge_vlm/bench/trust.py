"""Can a robot believe the published outputs? The trust metrics of
:mod:`edge_vlm.evaluation.trust` on the simulated held-out test subjects: their gesture
recordings (the frames of the STTF accuracy pass, sparse engine) and a recording of the scenes
beyond the gestures per test subject (empty room, a still person, walking, standing up / sitting
down, an object moved by hand, a swinging object, two movers, camera shake), events only.

Only frames inside a ground-truth segment are judged (the frames between segments have none,
as in a bag's ground truth)."""
from __future__ import annotations

from edge_vlm.bench.engines import sttf_engine
from edge_vlm.bench.recordings import sim_frames
from edge_vlm.bench.streams import SIM_SEED
from edge_vlm.evaluation.trust import TrustRow, stream_statistics, trust_metrics
from edge_vlm.inference.engine import FrameResult
from edge_vlm.sim import Recording, simulate_scene_recording, split_subjects
from edge_vlm.training.config import LIGHTINGS, TrainConfig

__all__ = ["scene_recordings", "recording_segments", "trust_figures", "trust_row",
           "TRUST_FIGURES"]

#: the bench JSON keys of this part
TRUST_FIGURES = ("caption_label_consistency", "caption_class_accuracy",
                 "false_gesture_rate_non_gesture", "nothing_moves_rate_empty", "ece",
                 "label_switches_per_s_in_gesture", "top_caption_share")


def scene_recordings(quick: bool = False) -> list[Recording]:
    """One scene recording per held-out test subject (lightings rotating), or one short one."""
    tc = TrainConfig()
    _, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    test_ids = [int(s) for s in held[tc.val_subjects:]]
    if quick:
        return [simulate_scene_recording(test_ids[-1], "lab", seed=SIM_SEED,
                                         kinds=("nothing", "walk"), clip_duration_s=0.8)]
    return [simulate_scene_recording(s, LIGHTINGS[i % len(LIGHTINGS)], seed=SIM_SEED + 7 * s,
                                     clip_duration_s=tc.clip_s + 0.5, gap_s=tc.gap_s)
            for i, s in enumerate(test_ids)]


def recording_segments(rec: Recording) -> list[dict]:
    """The ground-truth segments of a recording in time order: its gesture clips (``scene``
    "gesture") and its scene segments (label 0), each with ``t_start_ns``, ``t_end_ns``,
    ``label`` and ``scene``."""
    segs = [{"t_start_ns": c.t_start_ns, "t_end_ns": c.t_end_ns, "label": int(c.label),
             "scene": "gesture"} for c in rec.clips]
    segs += [{"t_start_ns": s.t_start_ns, "t_end_ns": s.t_end_ns, "label": 0, "scene": s.kind}
             for s in getattr(rec, "scenes", [])]
    return sorted(segs, key=lambda g: g["t_start_ns"])


def trust_row(stream: str, t_end: int, period: int, res: FrameResult, segments: list[dict],
         offset: int) -> TrustRow:
    k = next((i for i, g in enumerate(segments) if g["t_start_ns"] < t_end <= g["t_end_ns"]),
             None)
    seg = segments[k] if k is not None else None
    return TrustRow(stream, t_end - period, t_end, res.text, int(res.label),
                    float(res.confidence), None if k is None else offset + k,
                    None if seg is None else seg["label"], None if seg is None else seg["scene"],
                    res.scene.kind if res.scene is not None else None,
                    res.route.branch if res.route is not None else None)


def trust_figures(model, params: dict, minfo: dict, gesture_recs: list[Recording],
                  gesture_results: list[list[FrameResult]], period: int,
                  quick: bool = False) -> dict:
    """The trust metrics over the gesture recordings' results (one list per recording, frames
    as :func:`~edge_vlm.bench.recordings.sim_frames` cuts them) and the scene recordings
    (streamed here through the sparse engine)."""
    rows: list[TrustRow] = []
    segments: list[dict] = []
    for rec, results in zip(gesture_recs, gesture_results):
        segs = recording_segments(rec)
        frames = sim_frames(rec, params)
        rows += [trust_row(rec.name, f.t_end, period, r, segs, len(segments))
                 for f, r in zip(frames, results)]
        segments += segs
    scene_recs = scene_recordings(quick)
    for rec in scene_recs:
        segs = recording_segments(rec)
        eng = sttf_engine(model, params, True, minfo)
        rows += [trust_row(rec.name + "_scenes", f.t_end, period, eng.process(f.hist), segs,
                      len(segments)) for f in sim_frames(rec, params)]
        segments += segs
    trust = trust_metrics(rows, segments)
    stream = stream_statistics(rows)
    return {**{k: trust.get(k) for k in TRUST_FIGURES if k in trust},
            "top_caption_share": stream.get("top_caption_share"),
            "trust": {k: v for k, v in trust.items() if k != "reliability"},
            "reliability": trust.get("reliability"),
            "scene_recordings": [r.name for r in scene_recs],
            "scene_kind_distribution": stream.get("scene_kind_distribution")}
