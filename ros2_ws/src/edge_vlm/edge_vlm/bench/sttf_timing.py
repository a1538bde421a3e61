"""Wall time of the STTF encoder against the dense one, per encoder backend (the fused native
kernel, the PyTorch calls), and where a sparse frame's time goes.

The engines' own per-stage latencies (``FrameResult.latency_ms``) are what is timed: the
benchmark only runs the engines and takes per-frame medians over its passes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from edge_vlm.bench.engines import encoder_backend, native_vit_available, sttf_engine
from edge_vlm.inference import native_convs, native_decoder, native_stages
from edge_vlm.inference.memory import new_memory
from edge_vlm.inference.vit import backend_choice, dense_infer, sparse_infer
from edge_vlm.model.sttf import CaptionModel

__all__ = ["EncoderTiming", "TimingMedians", "time_encoders", "timing_medians",
           "stage_medians", "timing_figures", "cost_fit", "vit_speedup_curve", "choice_record",
           "pass_ratios"]

#: the steady state: every frame after the first (dense in both engines)
_STEADY = slice(1, None)


@dataclass
class EncoderTiming:
    """Per-frame latencies (ms) of the timing passes, one list per pass."""

    #: the encoder backends timed: ``(True, False)`` (native, torch) when the kernel is built
    backends: tuple[bool, ...]
    #: encoder stage, by (sparse, native)
    encoder: dict[tuple[bool, bool], list[list[float]]]
    #: memory + encoder stages, by sparse (the first backend)
    memory_encoder: dict[bool, list[list[float]]] = field(
        default_factory=lambda: {True: [], False: []})
    #: the whole frame (``total``), by sparse (the first backend)
    total: dict[bool, list[list[float]]] = field(default_factory=lambda: {True: [], False: []})
    #: every stage of ``FrameResult.latency_ms`` per frame, by sparse (the first backend)
    stages: dict[bool, list[list[dict[str, float]]]] = field(
        default_factory=lambda: {True: [], False: []})
    #: which frames the sparse engine refreshed densely (its last pass)
    refreshed: np.ndarray | None = None
    #: the per-CPU backend choice of the timed ViT (:func:`choice_record`)
    choice: dict = field(default_factory=dict)


@dataclass
class TimingMedians:
    """Per-frame medians (ms) over the passes; ``enc_d`` of the faster dense backend,
    ``enc_s`` of the default sparse one (native when built)."""

    enc_s: np.ndarray
    enc_d: np.ndarray
    mem_s: np.ndarray
    mem_d: np.ndarray
    tot_s: np.ndarray
    tot_d: np.ndarray
    #: per stage of ``FrameResult.latency_ms``: per-frame medians, by sparse
    stages: dict[bool, dict[str, np.ndarray]]
    by_backend: dict[str, dict]
    dense_backend: str
    sparse_backend: str
    choice: dict = field(default_factory=dict)
    #: per timing pass, dense / sparse steady means: ``"encoder"`` (the backends of enc_d and
    #: enc_s) and ``"total"`` (:func:`pass_ratios`)
    passes: dict[str, list[float]] = field(default_factory=dict)


def _timed_vit(model: CaptionModel):
    """The ViT the STTF figures time: a joint STTF+ANC model's Medium branch, else the model's."""
    return model.branches[2] if hasattr(model, "branches") else model.vit


def choice_record(model: CaptionModel) -> dict:
    """The per-CPU backend choice of the timed ViT (made at its first pass by
    :func:`~edge_vlm.inference.vit.backend_choice`): ``{"dense": "native" | "torch", "sparse":
    ..., "isa": "avx512" | "avx2" | "", "calibration_ms": the timings it chose by}``."""
    c = backend_choice(_timed_vit(model))
    return {**c.names(), "isa": c.isa,
            "calibration_ms": {k: round(v, 4) for k, v in c.timings_ms.items()}}


def time_encoders(model: CaptionModel, params: dict, minfo: dict, hists: list[np.ndarray],
                  repeats: int) -> EncoderTiming:
    """A warm-up pass, then ``repeats`` passes over ``hists`` per engine (dense, sparse) and
    backend, alternating the order; fresh engines every pass. The backend the per-CPU choice
    picks for sparse passes is timed first (its passes give the memory and whole-frame times)."""
    warm = sttf_engine(model, params, True, minfo)
    for h in hists[: min(10, len(hists))]:
        warm.process(h)
    choice = choice_record(model)
    first = choice["sparse"] == "native"
    backends = (first, not first) if native_vit_available() else (False,)
    t = EncoderTiming(backends, {(s, b): [] for s in (True, False) for b in backends},
                      choice=choice)
    for r in range(max(1, repeats)):
        order = [(s, b) for s in (False, True) for b in backends]
        for sparse, nat in (order if r % 2 == 0 else order[::-1]):
            with encoder_backend(model, nat):
                e = sttf_engine(model, params, sparse, minfo)
                rs = [e.process(h) for h in hists]
            t.encoder[sparse, nat].append([x.latency_ms["encoder"] for x in rs])
            if nat != backends[0]:
                continue
            t.memory_encoder[sparse].append(
                [x.latency_ms["memory"] + x.latency_ms["encoder"] for x in rs])
            t.total[sparse].append([x.latency_ms["total"] for x in rs])
            t.stages[sparse].append([dict(x.latency_ms) for x in rs])
            if sparse:
                t.refreshed = np.array([x.refreshed for x in rs])
    return t


def _median(passes: list[list[float]]) -> np.ndarray:
    return np.median(np.asarray(passes), axis=0)


def stage_medians(passes: list[list[dict[str, float]]]) -> dict[str, np.ndarray]:
    """Per stage (the keys of ``FrameResult.latency_ms`` every frame has, in its order): the
    per-frame median over the passes."""
    if not passes or not passes[0]:
        return {}
    keys = [k for k in passes[0][0] if all(k in fr for p in passes for fr in p)]
    return {k: _median([[fr[k] for fr in p] for p in passes]) for k in keys}


def pass_ratios(dense: list[list[float]], sparse: list[list[float]]) -> list[float]:
    """Per timing pass r: the steady mean of dense pass r / that of sparse pass r. The passes
    alternate the engines' order, so pass r's pair ran seconds apart: the spread of these
    ratios is the run's own noise (the figures of record use per-frame medians over passes)."""
    return [float(np.mean(d[_STEADY]) / np.mean(sp[_STEADY]))
            for d, sp in zip(dense, sparse) if len(d) > 1 and np.mean(sp[_STEADY]) > 0]


def _spread(values: list[float], scale: float = 1.0) -> dict | None:
    if not values:
        return None
    v = [x * scale for x in values]
    return {"values": v, "min": min(v), "max": max(v)}


def timing_medians(t: EncoderTiming) -> TimingMedians:
    """Per-frame medians and the per-backend table (``encoder_backends``)."""
    per_frame = {("native" if nat else "torch"): (_median(t.encoder[False, nat]),
                                                  _median(t.encoder[True, nat]))
                 for nat in t.backends}
    by_backend = {k: {"dense_ms_first": float(d[0]), "sparse_ms_first": float(s[0]),
                      "dense_ms_steady": float(d[_STEADY].mean()),
                      "sparse_ms_steady": float(s[_STEADY].mean()),
                      "speedup_steady": float(d[_STEADY].mean() / s[_STEADY].mean())}
                  for k, (d, s) in per_frame.items()}
    dense_backend = min(by_backend, key=lambda k: by_backend[k]["dense_ms_steady"])
    sparse_backend = "native" if t.backends[0] else "torch"      # the per-CPU choice
    passes = {"encoder": pass_ratios(t.encoder[False, dense_backend == "native"],
                                     t.encoder[True, t.backends[0]]),
              "total": pass_ratios(t.total[False], t.total[True])}
    return TimingMedians(
        enc_s=per_frame[sparse_backend][1], enc_d=per_frame[dense_backend][0],
        mem_s=_median(t.memory_encoder[True]), mem_d=_median(t.memory_encoder[False]),
        tot_s=_median(t.total[True]), tot_d=_median(t.total[False]),
        stages={sp: stage_medians(t.stages[sp]) for sp in (True, False)},
        by_backend=by_backend, dense_backend=dense_backend, sparse_backend=sparse_backend,
        choice=t.choice, passes=passes)


def timing_figures(m: TimingMedians, refreshed: np.ndarray, active_frac: np.ndarray,
                   total_tokens: int) -> dict:
    """The timing figures of the STTF report, in report order; ``active_frac``: the active
    token fraction of every timed frame (the timing recording's, in the accuracy pass)."""
    st = _STEADY
    es_mean, ed_mean = float(m.enc_s[st].mean()), float(m.enc_d[st].mean())
    # the timing recording's own active fraction (the speedup limit of the timed frames)
    timed_frac = active_frac[1:].mean()
    speedup = ed_mean / es_mean if es_mean else None
    limit = float(1.0 / timed_frac) if timed_frac else None
    return {
        "encoder_ms_first_sparse": float(m.enc_s[0]), "encoder_ms_first_dense": float(m.enc_d[0]),
        "encoder_ms_steady_sparse": es_mean, "encoder_ms_steady_dense": ed_mean,
        "encoder_ms_steady_sparse_no_refresh": (float(m.enc_s[1:][~refreshed[1:]].mean())
                                                if (~refreshed[1:]).any() else None),
        "sparse_cost_fit": cost_fit(m.enc_s, m.enc_d, active_frac * total_tokens, refreshed,
                                    total_tokens),
        "total_ms_steady_sparse": float(m.tot_s[st].mean()),
        "total_ms_steady_dense": float(m.tot_d[st].mean()),
        "speedup_first": float(m.enc_d[0] / m.enc_s[0]),
        "memory_encoder_ms_steady_sparse": float(m.mem_s[st].mean()),
        "memory_encoder_ms_steady_dense": float(m.mem_d[st].mean()),
        "speedup_memory_encoder_steady": float(m.mem_d[st].mean() / m.mem_s[st].mean()),
        "speedup_steady": speedup,
        "encoder_backend": m.sparse_backend, "dense_backend": m.dense_backend,
        "encoder_backends": m.by_backend, "backend_choice": m.choice,
        # the small conv nets' path in both modes (inference/native_convs.py)
        "convs_backend": native_convs.backend(),
        # the caption decoder's teacher-forced pass, both modes (inference/native_decoder.py)
        "decoder_backend": native_decoder.backend(),
        # the memory update and the fusion stage, both modes (inference/native_stages.py)
        "stages_backend": native_stages.backend(),
        "speedup_limit": limit,
        # the share of the ideal (total / active tokens) speedup the sparse encoder reaches
        "encoder_efficiency": speedup / limit if speedup and limit else None,
        "speedup_total_steady": float(m.tot_d[st].mean() / m.tot_s[st].mean()),
        # the same two ratios per timing pass ({values, min, max}): the run's own spread
        "encoder_efficiency_passes": (_spread(m.passes.get("encoder") or [], 1.0 / limit)
                                      if limit else None),
        "speedup_total_steady_passes": _spread(m.passes.get("total") or []),
        # where a frame's time goes: every stage's steady mean of the per-frame medians (the
        # stages of FrameResult.latency_ms: mask, memory, [router], encoder, fusion, decoder,
        # total)
        "stage_ms_steady_sparse": {k: float(v[st].mean()) for k, v in m.stages[True].items()},
        "stage_ms_steady_dense": {k: float(v[st].mean()) for k, v in m.stages[False].items()},
    }


def cost_fit(sparse_ms: np.ndarray, dense_ms: np.ndarray, tokens: np.ndarray,
             refreshed: np.ndarray, total_tokens: int) -> dict | None:
    """Least-squares ``ms = fixed + per_token * active tokens`` over the timed sparse frames that
    were not refreshes (the first frame excluded), beside the dense frames' cost per token:
    where a sparse frame's time goes (a per-frame fixed cost vs its tokens)."""
    keep = ~np.asarray(refreshed, dtype=bool)
    keep[0] = False
    if keep.sum() < 3 or np.ptp(tokens[keep]) == 0:
        return None
    a = np.vstack([np.ones(int(keep.sum())), tokens[keep]]).T
    (fixed, per_token), *_ = np.linalg.lstsq(a, sparse_ms[keep], rcond=None)
    return {"frames": int(keep.sum()), "fixed_ms": float(fixed), "per_token_ms": float(per_token),
            "dense_per_token_ms": float(dense_ms[1:].mean() / total_tokens),
            "tokens_mean": float(tokens[keep].mean())}


def _median_time(fn, k: int) -> float:
    """Median wall time (s) of ``k`` calls of ``fn``."""
    ts = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def vit_speedup_curve(model: CaptionModel, sizes=(8, 16, 32, 64, 128),
                      quick: bool = False) -> list[dict]:
    """The encoder (ViT) alone: dense pass vs sparse recompute of ``n`` random tokens, per n
    (median of repeated calls on the same memory): how close the sparse path gets to its ideal
    N/n speedup as the active-token count grows (small matmuls run below peak on a CPU).
    ``sparse_ms``: the backend the per-CPU choice runs sparse passes on; ``dense_ms``: the faster
    dense backend."""
    vit = _timed_vit(model)
    sparse_native = backend_choice(vit).sparse
    n_all = vit.pos.shape[0]
    mem = new_memory(vit)
    e = torch.randn(n_all, vit.pos.shape[1])
    rng = np.random.default_rng(0)
    reps = 3 if quick else 30
    backends = (True, False) if native_vit_available() else (False,)
    idxs = [torch.from_numpy(np.sort(rng.choice(n_all, n, replace=False))) for n in sizes]
    dense, sparse = {}, {}
    with torch.no_grad():
        for nat in backends:
            with encoder_backend(model, nat):
                dense_infer(vit, e, mem)
                dense[nat] = _median_time(lambda: dense_infer(vit, e, mem), max(3, reps // 3))
                for n, idx in zip(sizes, idxs):
                    sparse_infer(vit, e, idx, mem, [])
                    sparse[n, nat] = _median_time(lambda: sparse_infer(vit, e, idx, mem, []), reps)
    d = min(dense.values())                       # the faster dense backend
    out = []
    for n in sizes:
        sp = sparse[n, sparse_native and backends[0]]
        row = {"tokens": int(n), "dense_ms": d * 1e3, "sparse_ms": sp * 1e3, "speedup": d / sp,
               "limit": n_all / n, "efficiency": d / sp / (n_all / n)}
        if backends[0]:
            row.update({"dense_ms_native": dense[True] * 1e3, "dense_ms_torch": dense[False] * 1e3,
                        "sparse_ms_native": sparse[n, True] * 1e3,
                        "sparse_ms_torch": sparse[n, False] * 1e3})
        out.append(row)
    return out
