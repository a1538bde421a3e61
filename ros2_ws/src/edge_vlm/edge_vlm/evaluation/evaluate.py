"""Offline evaluation: the node graph's exact per-frame logic over a bag or a DvsGesture folder.

:func:`evaluate` reads the source (:mod:`edge_vlm.evaluation.sources`), replays it through the
objects the ROS nodes run (:mod:`edge_vlm.evaluation.replay`: packet intake, sttf_perception's
core, vlm_captioner's scheduling and core -- the same code, no copy), scores the frames
(:mod:`edge_vlm.evaluation.scoring`) and writes the report (:mod:`edge_vlm.evaluation.report`).

Node parameters are the spec defaults, updated by the graph file (the bringup package's
``config/graph.yaml`` when found) and then by ``overrides`` (same rules as ``edge_vlm_run -p``;
:func:`edge_vlm.cores.graph.replay_params`).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Iterator

from tqdm import tqdm

from edge_vlm.cores.captioner import CaptionerCore
from edge_vlm.cores.graph import ReplayParams, replay_params
from edge_vlm.cores.perception import PerceptionCore
from edge_vlm.evaluation.metrics import json_safe
from edge_vlm.evaluation.replay import LATENCY_STAGES, Replay
from edge_vlm.evaluation.report import markdown_report, write_report
from edge_vlm.evaluation.scoring import assign_segments, summarize
from edge_vlm.evaluation.sources import (DVS128_PACKET_NS, SourcePacket, Stream, bag_stream,
                                         detect_source, dvs128_streams)
from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT

__all__ = ["evaluate", "write_report", "detect_source", "markdown_report", "LATENCY_STAGES",
           "DVS128_PACKET_NS"]


def _streams(source, params: ReplayParams) -> tuple[list[Stream], dict]:
    """The source's streams and its description for the report."""
    src = detect_source(source)
    if src.kind == "bag":
        streams = [bag_stream(src.path, params.inputs, params.captioner["use_rgb"] != "never")]
        return streams, {"kind": "bag", "path": str(src.path), **streams[0].info}
    streams, extra = dvs128_streams(src.path)
    return streams, {"kind": "dvs128", "path": str(src.path), **extra}


def _items(streams: list[Stream]) -> Iterator[tuple[Stream, object]]:
    """(stream, packet or image) in replay order; ``(stream, None)`` ends a stream."""
    for s in streams:
        try:
            for item in s.items:
                yield s, item
        finally:
            close = getattr(s.items, "close", None)
            if close is not None:
                close()
        yield s, None


def _run(replay: Replay, streams: list[Stream], max_frames: int | None, bar) -> None:
    """Feed every packet and image to ``replay`` (until ``max_frames`` records)."""
    current = None
    for s, item in _items(streams):
        if s is not current:
            replay.start(s.name)
            current = s
        if item is None:
            replay.finish()
        elif isinstance(item, SourcePacket):
            replay.packet(item)
        else:
            replay.image(item)
        if bar is not None:
            bar.update(len(replay.records) - bar.n)
        if max_frames is not None and len(replay.records) >= max_frames:
            replay.stop()
            break


def _progress(enabled: bool, streams: list[Stream], period: int, max_frames: int | None):
    if not enabled:
        return None
    total = None
    if len(streams) == 1 and streams[0].info.get("duration_ns"):
        total = int(streams[0].info["duration_ns"] // period) + 1
    if max_frames is not None:
        total = min(total, int(max_frames)) if total else int(max_frames)
    return tqdm(total=total, unit="frame", desc="evaluate", dynamic_ncols=True, leave=False)


def evaluate(source, *, checkpoint: str = "", overrides: dict | None = None,
             max_frames: int | None = None,
             progress: bool = True, out_dir: str | os.PathLike | None = None,
             graph: str | None = None,
             meteor: bool = True) -> dict:
    """Replay ``source`` (bag folder/file or DvsGesture folder) through the nodes' logic and
    score it.

    ``checkpoint``: captioner checkpoint ('' = parameter / shipped default); ``overrides``: node
    parameters (:func:`~edge_vlm.cores.graph.replay_params`); ``max_frames``: stop after this
    many processed frames; ``progress``: tqdm bar on stderr; ``out_dir``: also write the report
    there (:func:`~edge_vlm.evaluation.report.write_report`); ``graph``: graph file for the
    node parameters (None = the bringup package's graph.yaml if found, '' = spec defaults);
    ``meteor=False`` skips METEOR (its Java start-up takes ~10 s once per process).

    Returns a JSON-safe dict: ``source`` (kind, path, topics / split, trials), ``checkpoint``,
    ``model_id``, ``params`` (per node), ``frame_period_ns``, ``frames``, ``frames_scored``,
    ``segments``, ``segments_scored``, ``accuracy`` ({frame, segment}: {accuracy, correct,
    total} over the gesture frames / segments), ``confusion`` (per frame, 12 x 12 with 0 = no
    gesture) and ``confusion_segment``, ``captions`` (BLEU-1..4,
    METEOR, ROUGE-L, CIDEr-D, n, tokenizer, scored_on), ``active_fraction`` (mean, p50, p95,
    change_mean), ``flops`` (executed_mean, dense_mean, ratio, saved_fraction), ``latency_ms``
    ({stage: p50/p95/p99/mean/min/max/n} for :data:`LATENCY_STAGES`), ``fps`` (wall,
    pipeline), ``wall_s``, ``ms_per_frame``, ``low_motion`` / ``high_motion`` (segments,
    frames, frame_accuracy, segment_accuracy, active_fraction_mean; None without
    ``attributes['motion']``), ``ground_truth`` (whether the source has any; without it the
    accuracy-type values are None), ``trust``
    (:func:`~edge_vlm.evaluation.trust.trust_metrics`: caption/label consistency, false gestures
    on scenes without one, "nothing moves" on empty scenes, ECE + reliability data, label
    switches in gestures), ``stream`` (packet/event/RGB counters and the statistics that need
    no ground truth, :func:`~edge_vlm.evaluation.trust.stream_statistics`), ``per_segment``,
    ``per_frame`` and, with ``out_dir``, ``outputs``.
    """
    params = replay_params(overrides, checkpoint, graph)
    streams, src_info = _streams(source, params)
    capt = CaptionerCore(params.captioner)
    replay = Replay(PerceptionCore(params.perception), capt)
    bar = _progress(progress, streams, replay.period, max_frames)
    t_wall = time.perf_counter()
    try:
        _run(replay, streams, max_frames, bar)
    finally:
        if bar is not None:
            bar.update(len(replay.records) - bar.n)
            bar.close()
    wall = time.perf_counter() - t_wall
    records = replay.records[:max_frames] if max_frames is not None else replay.records
    segments = assign_segments(records, streams)
    summary = summarize(records, segments, meteor)
    n = len(records)
    mean_total = summary["latency_ms"]["total"]["mean"]
    ckpt = params.captioner["checkpoint"]
    result = {
        "source": src_info,
        "checkpoint": os.path.abspath(ckpt) if ckpt else DEFAULT_CHECKPOINT,
        "model_id": capt.model_id,
        "params": {"sttf_perception": params.perception, "vlm_captioner": params.captioner},
        "frame_period_ns": replay.period,
        "frames": n,
        "frames_scored": sum(1 for r in records if r.segment is not None),
        "segments": len(segments),
        "segments_scored": len(summary["per_segment"]),
        "ground_truth": bool(segments),
        **{k: v for k, v in summary.items() if k not in ("per_segment", "stream_statistics")},
        "fps": {"wall": (n / wall) if wall > 0 else None,
                "pipeline": (1e3 / mean_total) if mean_total else None},
        "wall_s": wall,
        "ms_per_frame": (wall * 1e3 / n) if n else None,
        "stream": {**asdict(replay.finalize_stats()), **summary["stream_statistics"]},
        "per_segment": summary["per_segment"],
        "per_frame": [asdict(r) for r in records],
    }
    result = json_safe(result)
    if out_dir is not None:
        result["outputs"] = write_report(result, out_dir)
    return result
