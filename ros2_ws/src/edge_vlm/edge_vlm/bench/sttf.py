"""STTF vs dense: the token memory (``StreamingCaptioner(sparse=True)``) against the dense
baseline (``sparse=False``) on the same frames of simulated held-out recordings.

Steps of :func:`bench_sttf`: load the model, run both engines in lock step over the test set
(:func:`accuracy_pass`: accuracy, active tokens, caption agreement, token deviation), time the
encoder per backend on the first recording (:mod:`edge_vlm.bench.sttf_timing`), time the ViT
alone per active-token count, compare the input modes, summarise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from edge_vlm.bench.common import set_threads
from edge_vlm.bench.engines import bench_model, sttf_engine
from edge_vlm.bench.recordings import sim_frames, test_recordings
from edge_vlm.bench.op_profile import op_profile
from edge_vlm.bench.sttf_timing import (time_encoders, timing_figures, timing_medians,
                                        vit_speedup_curve)
from edge_vlm.bench.trust import trust_figures
from edge_vlm.cores.graph import replay_params
from edge_vlm.evaluation.trust import segment_vote
from edge_vlm.inference.engine import FrameResult
from edge_vlm.model.sttf import CaptionModel
from edge_vlm.sim import Recording
from edge_vlm.stream.frames import period_ns

__all__ = ["AccuracyPass", "accuracy_pass", "clip_accuracy", "label_accuracy", "rgb_mode_accuracy",
           "active_fraction",
           "quality_figures", "bench_sttf"]

#: the node parameters the report lists
_REPORTED_PARAMS = ("mask_method", "refresh_period", "drift_bound", "layer_threshold_scale",
                    "decoding", "beam_size", "max_caption_tokens", "frame_period_ms")
_PHASES = ("blend_in", "full", "blend_out")
_NUM_LABELS = 13


@dataclass
class AccuracyPass:
    """Both engines over the test set, frame by frame (recordings one after the other)."""

    sparse: list[FrameResult] = field(default_factory=list)
    dense: list[FrameResult] = field(default_factory=list)
    #: max abs difference of the token memories (sparse vs dense), per element
    deviation: list[float] = field(default_factory=list)
    gt: list[int | None] = field(default_factory=list)
    #: the clip's motion class; "first" for the first frame of a recording (dense in both)
    motion: list[str] = field(default_factory=list)
    phase: list[str | None] = field(default_factory=list)
    rec_frames: list[int] = field(default_factory=list)     # frames of each recording

    def by_recording(self) -> list[list[FrameResult]]:
        """The sparse engine's results, one list per recording."""
        out, i = [], 0
        for n in self.rec_frames:
            out.append(self.sparse[i:i + n])
            i += n
        return out


def accuracy_pass(model: CaptionModel, params: dict, minfo: dict,
                  recs: list[Recording]) -> AccuracyPass:
    """The sparse and the dense engine in lock step over every recording (fresh engines per
    recording)."""
    out = AccuracyPass()
    with torch.no_grad():
        for rec in recs:
            frames = sim_frames(rec, params)
            out.rec_frames.append(len(frames))
            es = sttf_engine(model, params, True, minfo)
            ed = sttf_engine(model, params, False, minfo)
            for j, f in enumerate(frames):
                out.sparse.append(es.process(f.hist))
                out.dense.append(ed.process(f.hist))
                out.deviation.append(float((es.memory - ed.memory).abs().max()))
                out.gt.append(f.gt)
                out.phase.append(f.phase)
                out.motion.append(f.motion if j else "first")     # each recording starts dense
    return out


def rgb_mode_accuracy(model: CaptionModel, params: dict, minfo: dict,
                      quick: bool = False) -> dict:
    """The two input modes on the same recordings (each test subject under ``lab`` light, with
    RGB frames), sparse engine: per-frame and per-clip gesture accuracy events only vs RGB +
    events."""
    recs = test_recordings(quick, lightings=("lab",), with_frames=True)
    out: dict = {"recordings": [r.name for r in recs]}
    for mode in ("events_only", "rgb_events"):
        pred, gt, clip_id = [], [], []
        for ri, rec in enumerate(recs):
            eng = sttf_engine(model, params, True, minfo)
            for f in sim_frames(rec, params):
                r = eng.process(f.hist, f.rgb if mode == "rgb_events" else None)
                if f.gt is not None:
                    pred.append(r.label)
                    gt.append(f.gt)
                    clip_id.append((ri, f.gt))
        pred_a, gt_a = np.array(pred), np.array(gt)
        clips = sorted(set(clip_id))
        ci = np.array([clips.index(c) for c in clip_id])
        votes = [segment_vote(pred_a[ci == k]) == gt_a[ci == k][0] for k in range(len(clips))]
        out[mode] = {"accuracy": float((pred_a == gt_a).mean()) if len(gt) else None,
                     "segment_accuracy": float(np.mean(votes)) if votes else None,
                     "frames": int(len(gt)), "clips": len(clips)}
    return out


def label_accuracy(p: AccuracyPass, res: list[FrameResult], idx: list[int] | None = None
              ) -> float | None:
    """Per-frame gesture accuracy of ``res`` over the labelled frames (of ``idx``)."""
    gt = p.gt
    idx = [i for i in range(len(gt)) if gt[i] is not None] if idx is None else [
        i for i in idx if gt[i] is not None]
    return (sum(res[i].label == gt[i] for i in idx) / len(idx)) if idx else None


def clip_accuracy(p: AccuracyPass, res: list[FrameResult]) -> float | None:
    """Per gesture clip: :func:`~edge_vlm.evaluation.trust.segment_vote` of its frames."""
    gt, out, i = p.gt, [], 0
    while i < len(gt):
        if gt[i] is None:
            i += 1
            continue
        j = i + 1
        while j < len(gt) and gt[j] == gt[i] and p.motion[j] != "first":
            j += 1
        out.append(segment_vote([res[k].label for k in range(i, j)],
                                [res[k].confidence for k in range(i, j)]) == gt[i])
        i = j
    return (sum(out) / len(out)) if out else None


def _token_figures(p: AccuracyPass, frac: np.ndarray) -> dict:
    """Active tokens (steady state: every frame but the first of a recording), FLOPs."""
    res_s, res_d = p.sparse, p.dense
    total = res_s[0].total_tokens
    steady = np.array([m != "first" for m in p.motion])
    layer_frac = np.array([[t / r.total_tokens for t in r.layer_tokens] for r in res_s])
    change = np.array([r.change_tokens / r.total_tokens for r in res_s])
    sel = {k: [i for i in range(len(p.motion)) if p.motion[i] == k]
           for k in ("low", "high", "static")}
    fl_s = np.array([r.flops_executed for r in res_s])
    fl_d = np.array([r.flops_executed for r in res_d])
    enc_fl_s = np.array([r.flops.get("encoder", 0.0) for r in res_s])
    enc_fl_d = np.array([r.flops.get("encoder", 0.0) for r in res_d])

    def mean_frac(idx):
        return float(frac[idx].mean()) if len(idx) else None

    return {
        "active_token_fraction": float(frac[steady].mean()),
        "active_token_fraction_p95": float(np.percentile(frac[steady], 95)),
        "active_tokens_mean": float(frac[steady].mean() * total),
        "total_tokens": int(total),
        "layer_token_fraction": [float(x) for x in layer_frac[steady].mean(axis=0)],
        "change_token_fraction": float(change[steady].mean()),
        "active_token_fraction_low_motion": mean_frac(sel["low"]),
        "active_token_fraction_high_motion": mean_frac(sel["high"]),
        "active_token_fraction_static": mean_frac(sel["static"]),
        "frames_low_motion": len(sel["low"]), "frames_high_motion": len(sel["high"]),
        "frames_static": len(sel["static"]),
        "refresh_frames": int(sum(r.refreshed for r in res_s)),
        "flops_executed_mean": float(fl_s.mean()), "flops_dense_mean": float(fl_d.mean()),
        "flops_ratio": float(fl_s.sum() / fl_d.sum()) if fl_d.sum() else None,
        "encoder_flops_ratio": float(enc_fl_s.sum() / enc_fl_d.sum()) if enc_fl_d.sum() else None,
    }


def _agreement_figures(p: AccuracyPass) -> dict:
    """Sparse against dense: captions, labels, gesture accuracy, token deviation."""
    res_s, res_d = p.sparse, p.dense
    low = [i for i in range(len(p.motion)) if p.motion[i] == "low"]
    high = [i for i in range(len(p.motion)) if p.motion[i] == "high"]
    phases = {k: [i for i in range(len(p.phase)) if p.phase[i] == k] for k in _PHASES}
    a_d, a_s = label_accuracy(p, res_d), label_accuracy(p, res_s)
    dev = p.deviation
    return {
        "caption_agreement": float(np.mean([x.text == y.text for x, y in zip(res_s, res_d)])),
        "label_agreement": float(np.mean([x.label == y.label for x, y in zip(res_s, res_d)])),
        "accuracy_dense": a_d, "accuracy_sparse": a_s,
        "accuracy_retained": (a_s / a_d) if a_d else None,
        "accuracy_dense_low_motion": label_accuracy(p, res_d, low),
        "accuracy_sparse_low_motion": label_accuracy(p, res_s, low),
        "accuracy_dense_high_motion": label_accuracy(p, res_d, high),
        "accuracy_sparse_high_motion": label_accuracy(p, res_s, high),
        "segment_accuracy_dense": clip_accuracy(p, res_d),
        "segment_accuracy_sparse": clip_accuracy(p, res_s),
        "accuracy_by_clip_phase": {k: {"frames": len(idx), "dense": label_accuracy(p, res_d, idx),
                                       "sparse": label_accuracy(p, res_s, idx)}
                                   for k, idx in phases.items()},
        "token_deviation_max": float(max(dev)) if dev else None,
        "token_deviation_mean": float(np.mean(dev)) if dev else None,
    }


def active_fraction(p: AccuracyPass) -> np.ndarray:
    """Fraction of tokens the sparse engine recomputed, per frame."""
    return np.array([r.active_tokens / r.total_tokens for r in p.sparse])


def quality_figures(p: AccuracyPass) -> dict:
    """The figures of the accuracy pass, in report order."""
    return {**_token_figures(p, active_fraction(p)), **_agreement_figures(p)}


def bench_sttf(checkpoint: str = "", threads: int = 1, repeats: int = 3,
               quick: bool = False) -> dict:
    """STTF (sparse token memory) vs the dense model on the same frames, batch 1, ``threads``
    threads.

    Quality (accuracy, active tokens, caption agreement, token deviation) over the whole test
    set (:func:`~edge_vlm.bench.recordings.test_recordings`), the two engines in lock step.
    Wall time of the encoder stage (memory update + ViT) on the first test recording: a
    warm-up pass, then ``repeats`` passes per engine alternating the order, per-frame median;
    the first frame (dense in both) is reported apart from the steady state (every later
    frame, periodic dense refreshes included)."""
    set_threads(threads)
    params = replay_params(graph=None).captioner
    recs = test_recordings(quick)
    model, minfo = bench_model(checkpoint,
                               [r for rec in recs for c in rec.clips for r in c.references])
    acc = accuracy_pass(model, params, minfo, recs)
    hists = [f.hist for f in sim_frames(recs[0], params)]      # timing on the first recording
    n = len(hists)
    timing = time_encoders(model, params, minfo, hists, repeats)
    timed = timing_figures(timing_medians(timing), timing.refreshed, active_fraction(acc)[:n],
                           acc.sparse[0].total_tokens)
    timed["op_profile"] = op_profile(model, params, minfo, hists)
    quality = quality_figures(acc)
    curve = vit_speedup_curve(model, quick=quick)
    rgb_modes = rgb_mode_accuracy(model, params, minfo, quick=quick)
    trust = trust_figures(model, params, minfo, recs, acc.by_recording(), period_ns(params),
                          quick=quick)
    scored = sum(g is not None for g in acc.gt)
    return {
        "model": minfo, "threads": threads, "repeats": repeats,
        "recordings": [r.name for r in recs], "frames": len(acc.sparse), "frames_scored": scored,
        "timing_recording": recs[0].name, "timing_frames": n,
        "params": {k: params[k] for k in _REPORTED_PARAMS},
        **timed, **quality,
        "speedup_by_active_tokens": curve,
        "input_modes": rgb_modes,
        "accuracy_sparse_rgb_events": rgb_modes["rgb_events"]["accuracy"],
        **trust,
    }
