"""`edge-vlm train --model router --heads`: fit the ANC router on streamed frames, scoring each
level by the gesture head that answers for it.

Why: with per-level gesture heads (:attr:`~edge_vlm.model.anc.AncConfig.motion_widths`) the
level a frame runs decides its published answer, and the router's own stage
(:mod:`.train_router`) scores the branches by their vision-head and caption losses, which do
not see those heads. Here the frames are what the heads read at run time:

1. ``collect``: a gesture and a scene recording per subject (``lightings_per_subject`` 1,
   events only, as ``edge-vlm train --model gesture`` simulates them) are streamed through the
   inference engine at Medium (sparse, the node's parameters); every ``stream_every``-th frame
   keeps the estimator's inputs as the engine computes them
   (:meth:`~edge_vlm.model.anc.AncModel.estimator_inputs`: the frame's event counts, stored as
   uint8 like the other router stage's, the changed and recently-changed fractions), the motion
   state, the vision logits and the frame's targets;
2. every level's head (:meth:`~edge_vlm.model.anc.AncModel.motion_for`) scores every kept frame:
   gesture cross-entropy plus scene-kind cross-entropy, the level's task loss;
3. for each of ``cost_weights``, a fresh estimator (seeded: the result depends neither on the
   router the checkpoint had nor on the order) is fitted by
   :func:`.train_router.fit_estimator` (the router objective: Gumbel-softmax weights x
   (task-loss gap to the frame's best level + ``cost_weight`` x the level's relative FLOPs,
   branch and head) + ``complexity_weight`` x cross-entropy against the frame's cheapest good
   level: the level with the least task loss + ``cost_weight`` x cost);
4. :func:`choose_weight` keeps, on the validation subjects, the largest cost weight whose
   routed accuracy is within ``accuracy_tolerance`` of Medium's: the cheapest routing that
   keeps the answers. The accuracy is the published gesture's on the gesture frames of the
   validation gesture recordings streamed through the node's engine (routed at budget 1, and
   forced to Medium; :func:`published_accuracy`), as ``make bench`` measures it on the test
   subjects, which take no part here.
"""
from __future__ import annotations

import copy
import itertools
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge_vlm.cores.graph import replay_params
from edge_vlm.inference.factory import engine_from_params, load_model
from edge_vlm.model.anc import LEVELS, AncModel, ComplexityEstimator
from edge_vlm.model.config import age_bucket_np
from edge_vlm.model.flops import motion_head_flops, vit_flops
from edge_vlm.model.motion import HEADS, HeadLogits, split_heads
from edge_vlm.sim import simulate_recording, simulate_scene_recording
from edge_vlm.training.config import LIGHTINGS, RouterFitConfig
from edge_vlm.training.data import recording_frames, subject_split
from edge_vlm.training.schedule import save_fit, seed_run
from edge_vlm.training.targets import IGNORE, frame_targets
from edge_vlm.training.train_router import RouterFrames, fit_estimator, routing_report

__all__ = ["RouterJob", "Scored", "ValRecording", "choose_weight", "collect_streamed",
           "fit_router_heads", "level_correct", "level_costs", "level_logits", "level_losses",
           "published_accuracy", "router_jobs", "val_recordings"]

_MODEL: dict = {}


def _init(init: str, threads: int) -> None:
    torch.set_num_threads(threads)
    _MODEL["model"], _MODEL["meta"] = load_model(init)
    _MODEL["params"] = replay_params(graph=None).captioner


class RouterJob(NamedTuple):
    """One recording to simulate and stream (a worker's task)."""
    subject: int
    lighting: str
    seed: int
    scenes: bool                # the scene recording instead of the gesture one
    tc: RouterFitConfig


def router_jobs(tc: RouterFitConfig, subjects: list[int], scenes: tuple = (False, True)
                ) -> list[RouterJob]:
    """Per subject a gesture and (``scenes``) a scene recording, one lighting each
    (rotating over the subjects)."""
    return [RouterJob(s, LIGHTINGS[si % len(LIGHTINGS)],
                      tc.seed * 100003 + s * 7 + (50021 if sc else 0), sc, tc)
            for si, s in enumerate(subjects) for sc in scenes]


def _simulate(job: RouterJob):
    tc = job.tc
    if job.scenes:
        return simulate_scene_recording(job.subject, job.lighting, seed=job.seed,
                                        clip_duration_s=tc.clip_s + 0.5, gap_s=tc.gap_s)
    return simulate_recording(job.subject, job.lighting, seed=job.seed,
                              clip_duration_s=tc.clip_s, gap_s=tc.gap_s, with_frames=False)


def _stream(job: RouterJob) -> dict:
    """One recording streamed at Medium: the kept frames."""
    tc = job.tc
    rec = _simulate(job)
    fs = recording_frames(rec, tc.period_ns, 0)
    tg = frame_targets(rec, fs.t_end)
    model = _MODEL["model"]
    eng = engine_from_params(model, _MODEL["params"], _MODEL["meta"])
    eng.force_level = len(LEVELS) - 1
    keep, out = [], {"hist": [], "change": [], "recent": [], "motion": [], "vision": []}
    with torch.no_grad():
        for f in range(len(fs.hist)):
            p = eng.perceive(fs.hist[f])
            if f % max(1, tc.stream_every):
                continue
            hist = torch.from_numpy(np.asarray(fs.hist[f], dtype=np.float32))[None]
            bucket = age_bucket_np(eng.age, model.cfg.max_age)[None]
            h, c, r = model.estimator_inputs(hist, torch.from_numpy(p.change)[None], bucket)
            out["hist"].append(h[0].clamp(max=255).to(torch.uint8))
            out["change"].append(float(c[0]))
            out["recent"].append(float(r[0]))
            out["motion"].append(p.motion[0].half())
            out["vision"].append(p.vision_logits)
            keep.append(f)
    out["targets"] = {k: torch.from_numpy(v[keep]) for k, v in tg.items()}
    return out


def collect_streamed(tc: RouterFitConfig, subjects: list[int], progress: bool) -> dict:
    """The kept frames of ``subjects`` (module doc, step 1), concatenated."""
    jobs = router_jobs(tc, subjects)
    with ProcessPoolExecutor(max_workers=max(1, tc.workers), initializer=_init,
                             initargs=(tc.init, max(1, tc.threads // max(1, tc.workers)))) as pool:
        it = pool.map(_stream, jobs)
        if progress:
            it = tqdm(it, total=len(jobs), desc="router: stream", unit="rec")
        parts = list(it)
    def every(key: str) -> list:
        return list(itertools.chain.from_iterable(p[key] for p in parts))
    return {"hist": torch.stack(every("hist")), "change": torch.tensor(every("change")),
            "recent": torch.tensor(every("recent")),
            "motion": torch.stack(every("motion")).float(), "vision": torch.stack(every("vision")),
            "targets": {k: torch.cat([p["targets"][k] for p in parts])
                        for k in parts[0]["targets"]}}


@torch.no_grad()
def level_logits(model: AncModel, frames: dict, batch: int = 512) -> list[HeadLogits]:
    """Every level's head's logits (its own head, or the shared one) over the frames."""
    out = []
    for level in range(len(LEVELS)):
        head = model.motion_for(level).eval()
        parts = [split_heads(model.cfg, head(frames["motion"][s:s + batch],
                                             frames["vision"][s:s + batch]))
                 for s in range(0, len(frames["vision"]), batch)]
        out.append(HeadLogits(*(None if parts[0][i] is None
                                else torch.cat([q[i] for q in parts])
                                for i in range(len(parts[0])))))
    return out


def level_losses(model: AncModel, frames: dict, batch: int = 512,
                 logits: list[HeadLogits] | None = None) -> torch.Tensor:
    """(N, levels) task loss of every level's head on every frame: gesture plus scene-kind
    cross-entropy (a target of IGNORE adds nothing); ``logits``: :func:`level_logits`'s, when
    the caller has them."""
    t = frames["targets"]
    out = []
    for lg in logits or level_logits(model, frames, batch):
        loss = torch.zeros(len(lg.gesture))
        for name in ("gesture", "kind"):
            x = getattr(lg, name)
            if x is not None:
                loss += F.cross_entropy(x, t[name], ignore_index=IGNORE, reduction="none")
        out.append(loss)
    return torch.stack(out, dim=1)


def level_costs(model: AncModel) -> torch.Tensor:
    """Dense FLOPs of each level (its branch and the head that answers for it) relative to
    Medium's."""
    c, a = model.cfg, model.acfg
    fl = [vit_flops(replace(c, mlp_ratio=r), [c.num_tokens] * d)
          + motion_head_flops(c, getattr(model.motion_for(i), "width", None))
          for i, (d, r) in enumerate(zip(a.depths, a.mlp_ratios))]
    return torch.tensor(fl) / fl[-1]


def level_correct(model: AncModel, frames: dict, batch: int = 512,
                  logits: list[HeadLogits] | None = None) -> torch.Tensor:
    """(N, levels) bool: each level's head names the frame's gesture (0: no gesture)."""
    pred = [lg.gesture.argmax(-1) for lg in logits or level_logits(model, frames, batch)]
    return torch.stack(pred, dim=1) == frames["targets"]["gesture"][:, None]


def _router_frames(frames: dict, loss: torch.Tensor, costs: torch.Tensor,
                   cost_weight: float) -> RouterFrames:
    g, k = frames["targets"]["gesture"], frames["targets"]["kind"]
    kinds = HEADS["kind"]
    what = [("gesture" if int(a) > 0 else kinds[int(b)] if 0 <= int(b) < len(kinds) else "-")
            for a, b in zip(g, k)]
    return RouterFrames(hist=frames["hist"], change=frames["change"], recent=frames["recent"],
                        loss=loss, level=(loss + cost_weight * costs[None]).argmin(dim=1),
                        motion=what)


class Scored(NamedTuple):
    """Streamed frames with every level's task loss and right answers."""
    frames: dict
    loss: torch.Tensor
    correct: torch.Tensor


def _score(model: AncModel, frames: dict) -> Scored:
    lg = level_logits(model, frames)             # the heads run once for both
    return Scored(frames, level_losses(model, frames, logits=lg),
                  level_correct(model, frames, logits=lg))


class ValRecording(NamedTuple):
    """A validation gesture recording cut into frames, with each frame's gesture target."""
    hist: np.ndarray
    gesture: np.ndarray


def val_recordings(tc: RouterFitConfig, subjects: list[int]) -> list[ValRecording]:
    """The gesture recordings of ``subjects`` that :func:`collect_streamed` streams."""
    out = []
    for job in router_jobs(tc, subjects, scenes=(False,)):
        rec = _simulate(job)
        fs = recording_frames(rec, tc.period_ns, 0)
        out.append(ValRecording(fs.hist, frame_targets(rec, fs.t_end)["gesture"]))
    return out


@torch.no_grad()
def published_accuracy(model: AncModel, meta: dict, recs: list[ValRecording],
                       level: int | None) -> float:
    """Per-frame accuracy of the published gesture over the gesture frames of ``recs``,
    streamed through the node's engine (sparse, budget 1) routed (``level`` None) or forced to
    ``level``: what ``make bench`` measures on the test subjects."""
    right = total = 0
    for r in recs:
        eng = engine_from_params(model, replay_params(graph=None).captioner, meta)
        eng.force_level = level
        for f in range(len(r.hist)):
            label = eng.process(r.hist[f]).label
            if r.gesture[f] > 0:
                right += int(label == r.gesture[f])
                total += 1
    return right / max(1, total)


def _fit_weight(model: AncModel, train: Scored, val: Scored, costs: torch.Tensor,
                tc: RouterFitConfig, weight: float, progress: bool) -> dict:
    """A fresh, seeded estimator fitted at ``cost_weight`` = ``weight``; its record (validation
    routing, the routed heads' per-frame gesture accuracy against Medium's) and its weights."""
    torch.manual_seed(tc.seed)
    model.estimator = ComplexityEstimator(model.cfg, model.acfg.est_hidden)
    t = replace(tc, cost_weight=weight)
    rf_train = _router_frames(train.frames, train.loss, costs, weight)
    rf_val = _router_frames(val.frames, val.loss, costs, weight)
    history = fit_estimator(model, rf_train, rf_val, costs, t, np.random.default_rng(tc.seed),
                            progress)
    with torch.no_grad():
        route = model.estimator(rf_val["hist"].float(), rf_val["change"],
                                rf_val["recent"]).argmax(dim=-1)
    routed = float(val.correct.gather(1, route[:, None]).float().mean())
    return {"cost_weight": weight, "val_head_accuracy_routed": routed,
            "val_head_accuracy_medium": float(val.correct[:, -1].float().mean()),
            "val_route_share": (np.bincount(route.numpy(), minlength=len(LEVELS))
                                / max(1, len(route))).tolist(),
            "history": history, "state": copy.deepcopy(model.estimator.state_dict()),
            "report": {"train": routing_report(model, rf_train),
                       "val": routing_report(model, rf_val)}}


def choose_weight(fits: list[dict], tolerance: float) -> dict:
    """The fit with the largest cost weight whose routed validation accuracy is within
    ``tolerance`` of Medium's (the cheapest routing that keeps the answers); if none is, the
    most accurate one."""
    ok = [f for f in fits if f["val_accuracy_routed"] >= f["val_accuracy_medium"] - tolerance]
    if ok:
        return max(ok, key=lambda f: f["cost_weight"])
    return max(fits, key=lambda f: f["val_accuracy_routed"])


def fit_router_heads(tc: RouterFitConfig, progress: bool = True) -> dict:
    """Fit the router of the joint checkpoint ``tc.init`` on streamed frames scored by its
    levels' heads, at each of ``tc.cost_weights``, and keep the one :func:`choose_weight` picks
    on the validation subjects; write the checkpoint with a ``router_fit`` record and
    ``router_fit.json``."""
    seed_run(tc)
    t0 = time.time()
    model, meta = load_model(tc.init)
    if not isinstance(model, AncModel) or model.motion_for(len(LEVELS) - 1) is None:
        raise ValueError(f"{tc.init or 'the shipped checkpoint'} is not a joint STTF+ANC "
                         "checkpoint with gesture heads")
    split = subject_split(tc)
    costs = level_costs(model)
    train = _score(model, collect_streamed(tc, split.train, progress))
    val = _score(model, collect_streamed(tc, split.val, progress))
    t_collect = time.time() - t0
    fits = [_fit_weight(model, train, val, costs, tc, w, progress) for w in tc.cost_weights]
    recs = val_recordings(tc, split.val)
    medium = published_accuracy(model, meta, recs, len(LEVELS) - 1)
    for f in fits:
        model.estimator.load_state_dict(f["state"])
        f["val_accuracy_medium"] = medium
        f["val_accuracy_routed"] = published_accuracy(model, meta, recs, None)
    best = choose_weight(fits, tc.accuracy_tolerance)
    model.estimator.load_state_dict(best["state"])
    for p in model.estimator.parameters():
        p.requires_grad_(False)
    sweep = [{k: v for k, v in f.items() if k not in ("history", "state", "report")}
             for f in fits]
    fit = {"config": dict(tc.__dict__), "cost_weight": best["cost_weight"], "sweep": sweep,
           "after": best["report"], "costs": costs.tolist(), "val_subjects": split.val,
           "frames": {"train": len(train.loss), "val": len(val.loss)},
           "seconds": round(time.time() - t0, 1), "collect_seconds": round(t_collect, 1)}
    return save_fit(tc.out, model, meta, "router_fit", fit, best["history"])
