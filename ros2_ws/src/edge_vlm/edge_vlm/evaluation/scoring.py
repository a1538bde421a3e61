"""Scores of a replay: frames matched to ground-truth segments, gesture accuracy per frame and
per segment, caption metrics, active tokens, FLOPs, latency and the motion splits.

A frame is scored when its end ``t_end`` lies in ``(t_start_ns, t_end_ns]`` of a ground-truth
segment (a gesture, label 1..11, or a scene without one, label 0 and ``scene`` its kind).
Gesture accuracy is reported per frame and per segment (majority vote of the segment's
frames; ties go to the label with the larger summed confidence) over the gesture segments; the
confusion matrices (12 x 12, 0 = no gesture) hold every scored frame / segment. The trust
metrics are those of :mod:`edge_vlm.evaluation.trust`. Caption metrics score ONE
caption per segment: the caption of the segment's last scored frame (the one that has seen the
most of the gesture, which is also what a listener of ``/edge_vlm/caption`` holds when the
segment ends) against the segment's references, over the corpus of segments (BLEU-1..4,
METEOR, ROUGE-L, CIDEr-D; see :mod:`edge_vlm.evaluation.metrics`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES
from edge_vlm.evaluation.metrics import (NO_GESTURE_NAME, caption_metrics, confusion_matrix,
                                         gesture_accuracy, percentiles)
from edge_vlm.evaluation.replay import LATENCY_STAGES, FrameRecord
from edge_vlm.evaluation.sources import Stream
from edge_vlm.evaluation.trust import TrustRow, segment_vote, stream_statistics, trust_metrics


@dataclass
class _StreamSegments:
    first: int                   # global index of the stream's first segment
    starts: np.ndarray           # t_start_ns, sorted
    reach: np.ndarray            # running maximum of t_end_ns
    segments: list[dict]


def assign_segments(records: list[FrameRecord], streams: list[Stream]) -> list[dict]:
    """Set ``segment`` (global index or None), ``gt_label`` and ``gt_scene`` (the segment's
    ``scene``, else "gesture" for labels 1..11) of each record; returns every segment (with
    ``stream`` and ``id``) in global order."""
    segments, lookup = [], {}
    for s in streams:
        first = len(segments)
        for i, seg in enumerate(s.segments):
            segments.append({**seg, "stream": s.name, "id": seg.get("clip_id") or f"{s.name}#{i}"})
        ends = [seg["t_end_ns"] for seg in s.segments] or [0]
        lookup[s.name] = _StreamSegments(
            first, np.asarray([seg["t_start_ns"] for seg in s.segments], dtype=np.int64),
            np.maximum.accumulate(np.asarray(ends, dtype=np.int64)), s.segments)
    for r in records:
        r.segment, r.gt_label, r.gt_scene = None, None, None
        ss = lookup.get(r.stream)
        if ss is None:
            continue
        t = r.t_end
        # the last segment with t_start < t_end, then back while some segment <= j reaches t
        j = int(np.searchsorted(ss.starts, t, side="left")) - 1
        while j >= 0 and ss.reach[j] >= t:
            seg = ss.segments[j]
            if t <= seg["t_end_ns"]:
                r.segment, r.gt_label = ss.first + j, int(seg["label"])
                r.gt_scene = seg.get("scene") or ("gesture" if r.gt_label >= 1 else None)
                break
            j -= 1
    return segments


def vote(frames: list[FrameRecord]) -> int:
    """The segment's label (:func:`~edge_vlm.evaluation.trust.segment_vote`)."""
    return segment_vote([r.label for r in frames], [r.confidence for r in frames])


def per_segment(records: list[FrameRecord], segments: list[dict]) -> list[dict]:
    """One summary per segment with scored frames."""
    by_seg: dict[int, list[FrameRecord]] = {}
    for r in records:
        if r.segment is not None:
            by_seg.setdefault(r.segment, []).append(r)
    out = []
    for i, seg in enumerate(segments):
        fr = by_seg.get(i)
        if not fr:
            continue
        last = max(fr, key=lambda r: r.t_end)
        out.append({
            "id": seg["id"], "stream": seg["stream"], "label": int(seg["label"]),
            "class_name": seg.get("class_name") or _class_name(int(seg["label"])),
            "scene": seg.get("scene") or ("gesture" if int(seg["label"]) >= 1 else None),
            "t_start_ns": seg["t_start_ns"], "t_end_ns": seg["t_end_ns"], "frames": len(fr),
            "predicted": vote(fr),
            "frame_accuracy": float(np.mean([r.label == r.gt_label for r in fr])),
            "caption": last.text, "references": list(seg.get("references") or []),
            "motion": (seg.get("attributes") or {}).get("motion"),
            "active_fraction_mean": float(np.mean([r.active_fraction for r in fr]))})
    return out


def _class_name(label: int) -> str:
    return GESTURE_CLASSES[label - 1] if 1 <= label <= len(GESTURE_CLASSES) else NO_GESTURE_NAME


def gesture_scores(scored: list[FrameRecord], segs: list[dict]) -> dict:
    """Accuracy over the gesture frames / segments; confusion matrices (0 = no gesture) over
    every scored frame / segment."""
    fr = [r for r in scored if r.gt_label >= 1]
    sg = [s for s in segs if s["label"] >= 1]
    return {
        "accuracy": {"frame": gesture_accuracy([r.gt_label for r in fr], [r.label for r in fr]),
                     "segment": gesture_accuracy([s["label"] for s in sg],
                                                 [s["predicted"] for s in sg])},
        "confusion": confusion_matrix([r.gt_label for r in scored], [r.label for r in scored],
                                      no_gesture=True),
        "confusion_segment": confusion_matrix([s["label"] for s in segs],
                                              [s["predicted"] for s in segs], no_gesture=True)}


def caption_scores(segs: list[dict], meteor: bool) -> dict:
    """Corpus caption metrics of the segments with references (each segment also gets its own
    ``caption_scores``)."""
    with_refs = [s for s in segs if s["references"]]
    caps = caption_metrics({s["id"]: s["caption"] for s in with_refs},
                           {s["id"]: s["references"] for s in with_refs}, meteor=meteor,
                           per_item=True)
    per_item = caps.pop("per_item", {})
    for s in segs:
        s["caption_scores"] = per_item.get(str(s["id"]))
    caps["scored_on"] = "caption of each segment's last scored frame vs the segment's references"
    return caps


def compute_scores(records: list[FrameRecord]) -> dict:
    """Active tokens, FLOPs and latency over every processed frame."""
    pa = percentiles([r.active_fraction for r in records], (50, 95))
    change = (float(np.mean([r.change_tokens / max(1, r.total_tokens) for r in records]))
              if records else None)
    ex = float(np.mean([r.flops_executed for r in records])) if records else None
    de = float(np.mean([r.flops_dense for r in records])) if records else None
    return {
        "active_fraction": {"mean": pa["mean"], "p50": pa["p50"], "p95": pa["p95"],
                            "change_mean": change},
        "flops": {"executed_mean": ex, "dense_mean": de,
                  "ratio": (ex / de) if ex is not None and de else None,
                  "saved_fraction": (1.0 - ex / de) if ex is not None and de else None},
        "latency_ms": {st: percentiles([r.latency_ms.get(st, 0.0) for r in records])
                       for st in LATENCY_STAGES}}


def motion_split(level: str, scored: list[FrameRecord], segs: list[dict],
                 segments: list[dict]) -> dict:
    """Scores of the segments whose ``attributes.motion`` is ``level`` (accuracies over their
    gesture frames / segments)."""
    chosen = [s for s in segs if s["motion"] == level]
    ids = {i for i, seg in enumerate(segments)
           if (seg.get("attributes") or {}).get("motion") == level}
    fr = [r for r in scored if r.segment in ids]
    gf = [r for r in fr if r.gt_label >= 1]
    gs = [s for s in chosen if s["label"] >= 1]
    return {"segments": len(chosen), "frames": len(fr),
            "frame_accuracy": gesture_accuracy([r.gt_label for r in gf],
                                               [r.label for r in gf])["accuracy"],
            "segment_accuracy": gesture_accuracy([s["label"] for s in gs],
                                                 [s["predicted"] for s in gs])["accuracy"],
            "active_fraction_mean": (float(np.mean([r.active_fraction for r in fr])) if fr
                                     else None)}


def trust_rows(records: list[FrameRecord]) -> list[TrustRow]:
    """What the trust metrics read of each record (after :func:`assign_segments`)."""
    return [TrustRow(r.stream, r.t_start, r.t_end, r.text, r.label, r.confidence, r.segment,
                     r.gt_label, r.gt_scene, (r.scene or {}).get("kind"), r.branch)
            for r in records]


def summarize(records: list[FrameRecord], segments: list[dict], meteor: bool) -> dict:
    """Every score of the replay (a JSON document; see
    :func:`~edge_vlm.evaluation.evaluate.evaluate`)."""
    scored = [r for r in records if r.segment is not None]
    segs = per_segment(records, segments)
    out = {**gesture_scores(scored, segs), "captions": caption_scores(segs, meteor),
           **compute_scores(records)}
    motions = {s["motion"] for s in segs if s["motion"] is not None}
    for level in ("low", "high"):
        out[f"{level}_motion"] = motion_split(level, scored, segs, segments) if motions else None
    rows = trust_rows(records)
    out["trust"] = trust_metrics(rows, segments)
    out["stream_statistics"] = stream_statistics(rows)
    out["per_segment"] = segs
    return out
