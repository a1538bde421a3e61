"""What a run of the node graph recorded, frame by frame (the demo and the end-to-end bench).

The recorder (``edge_vlm_record``) writes one JSON line per received message:
``{"topic", "stream", "type", "recv_ns", "stamp_ns", "data"[, "json"]}``. :func:`summarize`
joins every caption with the compute cost of the same stamp, the arrival of the newest
EventPacket that fed its frame (packet -> caption latency, both arrivals seen by the recorder
process) and the ground-truth segment holding its window end.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from edge_vlm.evaluation.trust import caption_class


@dataclass
class CaptionRow:
    """One captioned frame."""

    frame: int
    stamp_ns: int
    recv_ns: int                      # arrival of the caption at the recorder (wall clock)
    text: str
    label: int
    name: str
    confidence: float
    input_mode: str
    active_tokens: int | None
    total_tokens: int | None
    flops_executed: float | None
    flops_dense: float | None
    branch: str | None
    latency_ms: float | None          # the captioner's ``total`` stage (decode + model)
    packet_to_caption_ms: float | None
    gt_label: int | None              # 1..11 gesture, 0 a scene without gesture, None: no GT
    scene: str = ""                   # the scene kind the captioner published
    gt_scene: str | None = None       # the ground truth's scene kind


@dataclass
class GraphSummary:
    frames_processed: int
    compute_costs: int
    mean_active_token_fraction: float | None
    flops_executed_total: float
    flops_dense_total: float
    flops_saved_fraction: float | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    packet_to_caption_ms_p50: float | None
    packet_to_caption_ms_p95: float | None
    ground_truth_segments: int
    gesture_frames_scored: int
    gesture_frames_correct: int
    gesture_accuracy: float | None
    input_modes: dict[str, int] = field(default_factory=dict)
    distinct_captions: int = 0
    scene_frames_scored: int = 0            # frames of scenes without a gesture
    scene_frames_no_gesture: int = 0        # ... published as "no gesture"
    caption_label_consistency: float | None = None   # caption names the published gesture

    def to_dict(self) -> dict:
        return asdict(self)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a recorder file (a partial last line is ignored; a missing file gives [])."""
    out: list[dict] = []
    if not os.path.exists(path):
        return out
    with open(path) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def percentile(values, q: float) -> float | None:
    """The ``q``-th percentile of ``values`` (None when empty)."""
    return float(np.percentile(values, q)) if len(values) else None


def _ground_truth(records: list[dict]) -> list[dict]:
    gts = [r.get("json") or {} for r in records if r.get("stream") == "ground_truth"]
    return [g for g in gts if "t_start_ns" in g and "t_end_ns" in g and "label" in g]


def caption_rows(records: list[dict]) -> list[CaptionRow]:
    """The captioned frames of a recording, in caption arrival order."""
    costs = {r["stamp_ns"]: r for r in records if r.get("stream") == "compute_cost"}
    gts = _ground_truth(records)
    packets: dict[int, int] = {}
    for r in records:
        if r.get("stream") == "events" and r.get("stamp_ns") is not None:
            packets.setdefault(r["stamp_ns"], r["recv_ns"])
    rows = []
    caps = sorted((r for r in records if r.get("stream") == "caption"), key=lambda r: r["recv_ns"])
    for c in caps:
        d = c["data"]
        cost = (costs.get(c["stamp_ns"]) or {}).get("data") or {}
        stages = dict(zip(cost.get("stage_names", []), cost.get("stage_latency_ms", [])))
        arrivals = [packets[s] for s in d.get("input_stamps", []) if s in packets]
        gt = next((g for g in gts if g["t_start_ns"] <= d["window_end"] <= g["t_end_ns"]), None)
        rows.append(CaptionRow(
            frame=d["frame_index"], stamp_ns=c["stamp_ns"], recv_ns=c["recv_ns"], text=d["text"],
            label=d["gesture_label"], name=d["gesture_name"], confidence=d["gesture_confidence"],
            input_mode=d["input_mode"], active_tokens=cost.get("active_tokens"),
            total_tokens=cost.get("total_tokens"), flops_executed=cost.get("flops_executed"),
            flops_dense=cost.get("flops_dense"), branch=cost.get("branch"),
            latency_ms=stages.get("total"),
            packet_to_caption_ms=(c["recv_ns"] - max(arrivals)) / 1e6 if arrivals else None,
            gt_label=gt["label"] if gt else None, scene=d.get("scene", ""),
            gt_scene=(gt.get("scene") or ("gesture" if gt["label"] else None)) if gt else None))
    return rows


def summarize(records: list[dict]) -> tuple[list[CaptionRow], GraphSummary]:
    """Per-frame rows (caption joined with its compute cost) and their summary."""
    rows = caption_rows(records)
    frac = [r.active_tokens / r.total_tokens for r in rows if r.total_tokens]
    lat = [r.latency_ms for r in rows if r.latency_ms is not None]
    p2c = [r.packet_to_caption_ms for r in rows if r.packet_to_caption_ms is not None]
    fe = sum(r.flops_executed or 0.0 for r in rows)
    fd = sum(r.flops_dense or 0.0 for r in rows)
    scored = [r for r in rows if r.gt_label]
    correct = sum(1 for r in scored if r.label == r.gt_label)
    scenes = [r for r in rows if r.gt_label == 0]
    modes = sorted({r.input_mode for r in rows})
    summary = GraphSummary(
        frames_processed=len(rows),
        compute_costs=len({r["stamp_ns"] for r in records if r.get("stream") == "compute_cost"}),
        mean_active_token_fraction=float(np.mean(frac)) if frac else None,
        flops_executed_total=fe, flops_dense_total=fd,
        flops_saved_fraction=(1.0 - fe / fd) if fd > 0 else None,
        latency_ms_p50=percentile(lat, 50), latency_ms_p95=percentile(lat, 95),
        packet_to_caption_ms_p50=percentile(p2c, 50), packet_to_caption_ms_p95=percentile(p2c, 95),
        ground_truth_segments=len(_ground_truth(records)),
        gesture_frames_scored=len(scored), gesture_frames_correct=correct,
        gesture_accuracy=(correct / len(scored)) if scored else None,
        input_modes={m: sum(1 for r in rows if r.input_mode == m) for m in modes},
        distinct_captions=len({r.text for r in rows}),
        scene_frames_scored=len(scenes),
        scene_frames_no_gesture=sum(1 for r in scenes if r.label == 0),
        caption_label_consistency=(float(np.mean([caption_class(r.text) == r.label
                                                  for r in rows])) if rows else None))
    return rows, summary
