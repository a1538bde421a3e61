"""Peers on the same frames (`edge-vlm bench all`, key ``peers``): dense, ToMe, Eventful top-k
gating, STTF and STTF+ANC through the one engine of the captioner node, frame by frame in lock
step (batch 1, fixed threads, a warm-up first).

Every row runs :func:`~edge_vlm.bench.engines.sttf_engine` (for the joint STTF+ANC checkpoint:
its Medium branch on every frame, the router's estimator still run); ToMe and top-k replace
its encoder stage only (:func:`~edge_vlm.inference.peers.install_peer`), so the change mask,
token memory, fusion, heads and caption decoder are the same in every row. STTF+ANC is the
routed engine at budget 1. Accuracy per frame and per clip are
:mod:`edge_vlm.bench.sttf`'s (``label_accuracy``, ``clip_accuracy``); FLOPs are the analytic
count of every stage; ``encoder_ms`` / ``frame_ms`` are the engine's ``encoder`` / ``total``
stage times, mean over the steady frames (all but each recording's first).

Frames: one test recording per held-out test subject, lightings rotated (the ANC part's
recordings), a window of :data:`FRAMES_PER_RECORDING` frames of each (the windows spread from
the first recording's start to the last one's end, so every gesture is in at least one window:
about half the frames of the ANC part, to keep this part near 5 minutes on 2 cores). Each
window starts with fresh engines (a dense first frame, left out of the steady figures); a clip
cut by a window's edge counts as a clip in the per-clip accuracy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from edge_vlm.bench.common import set_threads
from edge_vlm.bench.engines import bench_model, sttf_engine
from edge_vlm.bench.recordings import SimFrame, sim_frames, test_recordings
from edge_vlm.bench.sttf import AccuracyPass, label_accuracy, clip_accuracy
from edge_vlm.cores.graph import replay_params
from edge_vlm.inference.engine import FrameResult, StreamingCaptioner
from edge_vlm.inference.factory import engine_from_params
from edge_vlm.inference.peers import install_peer
from edge_vlm.model.sttf import CaptionModel

__all__ = ["PEERS", "ROW_FIELDS", "LockStep", "Peer", "bench_peers", "peer_rows",
           "target_check", "verdict", "plot_peers"]


@dataclass(frozen=True)
class Peer:
    """One row of the peers table: a method at one setting."""

    method: str           # dense, tome, topk, sttf, sttf_anc
    setting: str          # the operating point, as text ("r=8", "k=32", "tau=0.05", ...)
    value: float | None = None

    @property
    def label(self) -> str:
        return self.method if not self.setting else f"{self.method} {self.setting}"


#: the rows, in table order: ToMe, r tokens merged per block (r = 0: the dense arithmetic on
#: ToMe's PyTorch code path, its own baseline, as dense may run on the native kernel); top-k, k
#: tokens per block; STTF, per-layer gate threshold tau (relative L2 against the last
#: propagated input; the shipped default is the checkpoint's, all 0: the change mask alone);
#: STTF+ANC at budget 1
PEERS = ((Peer("dense", ""),)
         + tuple(Peer("tome", f"r={r}", r) for r in (0, 8, 16, 32))
         + tuple(Peer("topk", f"k={k}", k) for k in (16, 32, 64))
         + (Peer("sttf", "default"),)
         + tuple(Peer("sttf", f"tau={t:g}", t) for t in (0.05, 0.2))
         + (Peer("sttf_anc", "budget=1", 1.0),))
#: frames of each test recording in the default run (None: all; see the module text)
FRAMES_PER_RECORDING = 300
#: the fields of every row of ``peers`` (``edge-vlm bench all --json``)
ROW_FIELDS = ("method", "setting", "accuracy", "segment_accuracy", "gflops", "encoder_ms",
              "frame_ms")
#: the STTF row of the target check: the shipped configuration (not chosen on test data)
STTF_REFERENCE = "sttf default"


def _engine(model: CaptionModel, params: dict, minfo: dict,
            peer: Peer) -> StreamingCaptioner | None:
    """A fresh engine of ``peer`` (None: not applicable to this model)."""
    if peer.method == "dense":
        return sttf_engine(model, params, False, minfo)
    if peer.method == "tome":
        return install_peer(sttf_engine(model, params, False, minfo), "tome", int(peer.value))
    if peer.method == "topk":
        return install_peer(sttf_engine(model, params, True, minfo), "topk", int(peer.value))
    if peer.method == "sttf":
        eng = sttf_engine(model, params, True, minfo)
        if peer.value is not None:
            depth = max(model.acfg.depths) if hasattr(model, "acfg") else model.cfg.depth
            eng.layer_thresholds = [float(peer.value)] * depth
        return eng
    if peer.method == "sttf_anc" and hasattr(model, "acfg"):
        return engine_from_params(model, {**params, "compute_budget": peer.value}, minfo,
                                  sparse=True)
    return None


@dataclass
class LockStep:
    """Every peer over the same frames: the ground truth, the results, and per frame the
    relative L2 error of the peer's vision tokens against the dense engine's."""

    truth: AccuracyPass
    results: dict[str, list[FrameResult]]
    token_error: dict[str, list[float]]


def _lock_step(model: CaptionModel, params: dict, minfo: dict, frames: list[list[SimFrame]],
               peers: tuple[Peer, ...]) -> LockStep:
    """Every peer frame by frame (fresh engines per recording), after a warm-up."""
    out = LockStep(AccuracyPass(), {x.label: [] for x in peers}, {x.label: [] for x in peers})
    p = out.truth
    with torch.no_grad():
        warm = {x.label: _engine(model, params, minfo, x) for x in peers}
        for f in frames[0][:15]:                       # warm-up, discarded
            for eng in warm.values():
                eng.process(f.hist)
        for fr in frames:
            engines = {x.label: _engine(model, params, minfo, x) for x in peers}
            p.rec_frames.append(len(fr))
            for j, f in enumerate(fr):
                p.gt.append(f.gt)
                p.phase.append(f.phase)
                p.motion.append(f.motion if j else "first")
                for label, eng in engines.items():
                    out.results[label].append(eng.process(f.hist))
                ref = engines["dense"].memory if "dense" in engines else None
                for label, eng in engines.items():
                    if ref is not None:
                        out.token_error[label].append(float(
                            (eng.memory - ref).norm() / ref.norm().clamp(min=1e-12)))
    return out


def _windows(frames: list[list[SimFrame]], n: int | None) -> list[list[SimFrame]]:
    """``n`` consecutive frames of each recording, the windows' starts spread evenly from the
    first recording's start to the last one's end (all frames when ``n`` is None)."""
    if n is None:
        return frames
    last = max(len(frames) - 1, 1)
    return [fr[max(0, (len(fr) - n) * i // last):][:n] for i, fr in enumerate(frames)]


def _mean(xs) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def peer_rows(ls: LockStep, peers: tuple[Peer, ...]) -> list[dict]:
    """One row per peer: :data:`ROW_FIELDS`, then the encoder's GFLOPs, the active token
    fraction (mean over blocks and steady frames), the agreement of the published label with
    the dense engine's, the vision tokens' relative L2 error against dense (mean, steady
    frames), the router's ms, the frames."""
    p = ls.truth
    steady = [i for i, m in enumerate(p.motion) if m != "first"]
    dense = ls.results.get("dense")
    rows = []
    for x in peers:
        rs, err = ls.results[x.label], ls.token_error[x.label]
        st = [rs[i] for i in steady]
        rows.append({
            "method": x.method, "setting": x.setting, "accuracy": label_accuracy(p, rs),
            "segment_accuracy": clip_accuracy(p, rs),
            "gflops": _mean([r.flops_executed / 1e9 for r in st]),
            "encoder_ms": _mean([r.latency_ms["encoder"] for r in st]),
            "frame_ms": _mean([r.latency_ms["total"] for r in st]),
            "encoder_gflops": _mean([r.flops.get("encoder", 0.0) / 1e9 for r in st]),
            "active_token_fraction": _mean([np.mean(r.layer_tokens) / r.total_tokens
                                            for r in st]),
            "label_agreement_dense": None if dense is None else _mean(
                [rs[i].label == dense[i].label for i in range(len(rs))]),
            "token_error_dense": _mean([err[i] for i in steady]) if err else None,
            "router_ms": _mean([r.latency_ms.get("router", 0.0) for r in st]),
            "frames": len(rs)})
    return rows


def _label(row: dict) -> str:
    return row["method"] if not row["setting"] else f"{row['method']} {row['setting']}"


def target_check(rows: list[dict], points: float = 0.01) -> dict:
    """Issue 19's target: STTF (the shipped configuration, :data:`STTF_REFERENCE`) within
    ``points`` of the dense accuracy, at a lower frame_ms than every dense / ToMe / top-k row
    that is also within ``points``."""
    by = {_label(r): r for r in rows}
    dense, ref = by.get("dense"), by.get(STTF_REFERENCE)
    if not dense or not ref or dense["accuracy"] is None or ref["accuracy"] is None:
        return {"met": None, "why": "no dense or STTF row with an accuracy"}
    floor = dense["accuracy"] - points
    peers_in = [r for r in rows if r["method"] in ("dense", "tome", "topk")
                and r["accuracy"] is not None and r["accuracy"] >= floor]
    fastest = min(peers_in, key=lambda r: r["frame_ms"])
    within = ref["accuracy"] >= floor
    return {"met": bool(within and ref["frame_ms"] < fastest["frame_ms"]),
            "dense_accuracy": dense["accuracy"], "sttf_row": STTF_REFERENCE,
            "sttf_accuracy": ref["accuracy"], "sttf_frame_ms": ref["frame_ms"],
            "sttf_within": within, "peers_within": [_label(r) for r in peers_in],
            "fastest_peer_within": _label(fastest),
            "fastest_peer_within_frame_ms": fastest["frame_ms"]}


def _wins(row: dict, ref: dict) -> dict[str, str]:
    """Where ``row`` beats ``ref``: figure -> phrase."""
    out = {}
    for key, name, better in (("accuracy", "per-frame accuracy", max),
                              ("segment_accuracy", "per-clip accuracy", max),
                              ("frame_ms", "frame ms", min), ("gflops", "GFLOPs", min)):
        a, b = row.get(key), ref.get(key)
        if a is not None and b is not None and a != b and better(a, b) == a:
            out[key] = f"{name} {a:.4g} vs {b:.4g}"
    return out


def verdict(rows: list[dict]) -> list[str]:
    """Sentences, computed from ``rows``: where each ToMe / top-k setting beats STTF's shipped
    configuration, and whether any dominates it (better accuracy at a lower frame ms)."""
    by = {_label(r): r for r in rows}
    ref = by.get(STTF_REFERENCE)
    if ref is None:
        return ["No STTF row: nothing to compare."]
    out, dominating = [], []
    for r in rows:
        if r["method"] not in ("tome", "topk"):
            continue
        wins = _wins(r, ref)
        if wins:
            out.append(f"{_label(r)} beats {STTF_REFERENCE} on " + "; ".join(wins.values())
                       + ".")
        if "accuracy" in wins and "frame_ms" in wins:
            dominating.append(_label(r))
    if not out:
        out.append(f"No ToMe or top-k setting beats {STTF_REFERENCE} on per-frame or per-clip "
                   "accuracy, frame ms or GFLOPs.")
    out.append("A peer setting both more accurate and faster than STTF: "
               + (", ".join(dominating) if dominating else "none") + ".")
    acc = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    if acc:
        out.append(f"Per-frame accuracy spans {min(acc):.4g} to {max(acc):.4g} over all rows "
                   f"({100 * (max(acc) - min(acc)):.2g} points)"
                   + (": on these frames accuracy hardly separates the methods; cost does."
                      if max(acc) - min(acc) < 0.01 else "."))
    return out


def plot_peers(rows: list[dict], path: str) -> None:
    """Per-frame accuracy against frame ms, one line per method, settings annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    marks = {"dense": "s", "tome": "o-", "topk": "v-", "sttf": "^-", "sttf_anc": "D"}
    for method, mk in marks.items():
        rs = [r for r in rows if r["method"] == method and r["accuracy"] is not None]
        if not rs:
            continue
        ax.plot([r["frame_ms"] for r in rs], [r["accuracy"] for r in rs], mk, label=method)
        for j, r in enumerate(rs):       # labels above and below in turn (close points)
            if r["setting"]:
                ax.annotate(r["setting"], (r["frame_ms"], r["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 5 if j % 2 else -11))
    dense = next((r for r in rows if r["method"] == "dense"), None)
    if dense and dense["accuracy"] is not None:
        ax.axhline(dense["accuracy"] - 0.01, color="grey", ls=":", lw=1,
                   label="dense - 1 point")
    ax.set_xlabel("ms per frame (engine total, mean of steady frames)")
    ax.set_ylabel("gesture accuracy (per frame)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_peers(checkpoint: str = "", threads: int = 1, quick: bool = False,
                plot: str | None = None,
                frames_per_recording: int | None = FRAMES_PER_RECORDING,
                peers: tuple[Peer, ...] = PEERS) -> dict:
    """Every row of ``peers`` on the same frames; the rows (``peers``), the target check, the
    verdict sentences (``quick``: every frame of one short recording)."""
    set_threads(threads)
    params = replay_params(graph=None).captioner
    recs = test_recordings(quick)
    if not quick:       # one recording per test subject, lightings rotated (the ANC frames)
        recs = [recs[3 * i + i % 3] for i in range(len(recs) // 3)]
    model, minfo = bench_model(checkpoint,
                               [r for rec in recs for c in rec.clips for r in c.references])
    frames = _windows([sim_frames(r, params) for r in recs],
                      None if quick else frames_per_recording)
    skipped = [x.label for x in peers if _engine(model, params, minfo, x) is None]
    peers = tuple(x for x in peers if x.label not in skipped)
    ls = _lock_step(model, params, minfo, frames, peers)
    p, rows = ls.truth, peer_rows(ls, peers)
    out = {"threads": threads, "recordings": [r.name for r in recs],
           "frames_per_recording": None if quick else frames_per_recording,
           "frames": len(p.gt), "frames_scored": sum(g is not None for g in p.gt),
           "skipped_rows": skipped,
           "peers": rows, "target": target_check(rows), "verdict": verdict(rows)}
    if plot:
        plot_peers(rows, plot)
        out["plot"] = plot
    return out
