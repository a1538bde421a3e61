"""Streaming joint STTF + ANC inference: route each frame to a budget-capped branch."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from edge_vlm.inference.engine import EncoderOutput, StreamingCaptioner
from edge_vlm.inference.frame_tensors import FrameTensors
from edge_vlm.inference.memory import new_memory
from edge_vlm.inference.native_convs import estimator_logits
from edge_vlm.inference.routing import Route, Routing, choose_branches
from edge_vlm.inference.vit import dense_infer, sparse_infer
from edge_vlm.model.anc import LEVELS, AncModel, branch_params, budget_cap
from edge_vlm.model.config import age_bucket_np
from edge_vlm.model.flops import (decoder_flops, embed_flops, estimator_flops, fusion_flops,
                                  mask_flops, vit_flops)


@dataclass(slots=True)
class RouteOverride:
    """A route decided outside the engine for one frame (anc_router's RouteDecision): the
    branches to run (level names), their output weights and the compute budget in force."""

    branches: list[str]
    weights: list[float]
    budget: float
    #: anc_router's level probabilities (reported in the frame's Route; when given, the
    #: engine's own estimator does not run for a usable decision)
    probabilities: list[float] | None = None


def _probabilities(values: list[float] | None) -> np.ndarray | None:
    """An external decision's level probabilities, None when absent or malformed."""
    if values is None or len(values) != len(LEVELS):
        return None
    p = np.asarray(values, dtype=np.float32)
    return p if np.isfinite(p).all() and (p >= 0).all() else None


class AncStreamingCaptioner(StreamingCaptioner):
    """Streaming joint STTF + ANC: the memory update as in STTF, then the estimator routes the
    frame to a branch (budget-capped), which runs sparse on its own per-layer memory, or dense
    (its first run, a refresh, a resync). A branch that did not run on the last frames keeps
    the set of tokens whose memory input changed meanwhile and catches up on them with one
    sparse step when it runs again (dense if that set exceeds half the tokens), so switching
    branches does not cost a dense pass.

    ``force_level``: run this level every frame (ablations: Medium-only = 2; the estimator does
    not run, :meth:`route`); ``None`` = route.
    :attr:`route_override`: the route of the next frame decided elsewhere (one frame only; its
    budget becomes the engine's); :attr:`route_external` says whether the last frame ran it
    (False: none was given, or it was unusable and the local estimator routed).
    ``flops_dense`` of every result is the Medium-only dense model at full budget.
    """

    def __init__(self, model: AncModel, *, compute_budget: float = 1.0,
                 force_level: int | None = None, **kw):
        self.force_level = force_level
        self.route_override: RouteOverride | None = None
        self.route_external = False
        self.route_estimated = False
        super().__init__(model, **kw)
        self.set_budget(compute_budget)

    def reset(self) -> None:
        super().reset()
        self.branch_layers = [new_memory(br) for br in self.model.branches]
        # per branch: tokens whose memory input changed since it last ran (None: never ran, or
        # the whole memory was rebuilt since: its next run is dense)
        self.pending: list[np.ndarray | None] = [None] * len(self.model.branches)

    def set_budget(self, budget: float) -> None:
        """Compute budget in (0, 1]: caps the level and slices the channel gates (next frame)."""
        self.budget = float(budget)
        self.kept = [br.set_budget(self.budget) for br in self.model.branches]
        self._params_cache: dict = {}

    def route(self, hist: np.ndarray, change: np.ndarray) -> Routing:
        """The branches to run the current frame with, and their weights
        (:func:`~edge_vlm.inference.routing.choose_branches`, or ``force_level``).

        The complexity estimator runs only when its output decides or is reported: not for a
        forced level (``probabilities`` one-hot at the level run) nor for a usable external
        decision that carries anc_router's probabilities (those are reported);
        :attr:`route_estimated` says whether it ran (its FLOPs are counted then only)."""
        override, self.route_override = self.route_override, None
        self.route_external = self.route_estimated = False
        if self.force_level is not None:
            level = min(int(self.force_level), budget_cap(self.budget))
            return Routing(np.eye(len(LEVELS), dtype=np.float32)[level], [level], [1.0])
        given = None if override is None else _probabilities(override.probabilities)
        if given is not None:
            routing = self._external(override, given)
            if routing is not None:
                self.route_external = True
                return routing
            override = None                      # unusable: the local estimator routes
        self.route_estimated = True
        bucket = age_bucket_np(self.age, self.cfg.max_age)[None]
        ft = FrameTensors.of(hist, self.frame)
        logits = self.model.route_logits(ft.hist, torch.from_numpy(change)[None], bucket, ft.log,
                                         run=estimator_logits)
        probs = torch.softmax(logits, dim=-1)[0].numpy()
        if override is not None and (routing := self._external(override, probs)) is not None:
            self.route_external = True
            return routing
        return choose_branches(probs, self.budget, self.model.acfg.router_threshold)

    def _external(self, ov: RouteOverride, probs: np.ndarray) -> Routing | None:
        """The routing of an external decision (its budget applied), None when unusable."""
        if not ov.branches or len(ov.weights) != len(ov.branches) or not 0 < ov.budget <= 1:
            return None
        if any(b not in LEVELS for b in ov.branches):
            return None
        w = np.asarray(ov.weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            return None
        if float(ov.budget) != self.budget:
            self.set_budget(ov.budget)
        run = [LEVELS.index(b) for b in ov.branches]
        return Routing(probs, run, [float(x) for x in w / w.sum()])

    def _encode(self, hist: np.ndarray, change: np.ndarray, changed: np.ndarray, resync: bool,
                refresh: bool) -> EncoderOutput:
        c = self.cfg
        t0 = time.perf_counter()
        routing = self.route(hist, change)
        vis, tokens, any_dense = None, {}, False
        for b in range(len(self.pending)):       # what every branch has to catch up on
            if self.pending[b] is not None:
                if resync:
                    self.pending[b] = None
                else:
                    self.pending[b][changed] = True
        vit_s = 0.0                              # the branch ViTs' own time (the encoder stage)
        for b, w in zip(routing.run, routing.weights):
            br, mem = self.model.branches[b], self.branch_layers[b]
            todo = self.pending[b]
            dense = refresh or todo is None or 2 * int(todo.sum()) > c.num_tokens
            idx = None if dense else torch.from_numpy(np.flatnonzero(todo))
            t_vit = time.perf_counter()
            if dense:
                out = dense_infer(br, self.e, mem, inplace=True)
            else:
                out, tokens[b] = sparse_infer(br, self.e, idx, mem, self.layer_thresholds,
                                              inplace=True)
            if w != 1.0:                         # one branch: its output as is (weight 1)
                out = out * w
            vis = out if vis is None else vis + out
            vit_s += time.perf_counter() - t_vit
            if dense:
                tokens[b] = [c.num_tokens] * br.depth
                any_dense = True
            self.pending[b] = np.zeros(c.num_tokens, dtype=bool)
        a = self.model.acfg
        dom = routing.run[int(np.argmax(routing.weights))]
        route = Route(branch=LEVELS[dom], level=int(np.argmax(routing.probabilities)),
                      probabilities=[float(x) for x in routing.probabilities],
                      branches=[LEVELS[b] for b in routing.run], weights=routing.weights,
                      budget=self.budget, kept_channels=list(self.kept[dom]),
                      branch_tokens={LEVELS[b]: t for b, t in tokens.items()},
                      params_active=self.active_parameters(routing.run, a.decoder_layers[dom],
                                                           dom))
        return EncoderOutput(vis, tokens[dom], any_dense, decoder_layers=a.decoder_layers[dom],
                             decoder_beam=int(a.decoder_beams[dom]), route=route,
                             branch_tokens=tokens,
                             # the routing stage: the router and this bookkeeping (not the ViTs)
                             router_ms=(time.perf_counter() - t0) * 1e3 - vit_s * 1e3)

    def motion_head(self, enc: EncoderOutput) -> torch.nn.Module | None:
        """The motion head of the level that ran the frame (the dominant branch's:
        :meth:`AncModel.motion_for`)."""
        if enc.route is None:
            return self.model.motion
        return self.model.motion_for(LEVELS.index(enc.route.branch))

    def active_parameters(self, run: list[int], dec_layers: int, level: int = 2) -> int:
        """Parameters used by a frame that ran the branches ``run`` (at the current budget),
        ``dec_layers`` decoder blocks and the motion head of ``level`` (the dominant branch's;
        cached per budget: counting walks every module)."""
        key = (tuple(run), int(dec_layers), int(level))
        n = self._params_cache.get(key)
        if n is None:
            m = self.model
            shared = sum(p.numel() for name, p in m.named_parameters()
                         if not name.startswith(("branches.", "decoder.blocks.", "motion.",
                                                 "level_motion.")))
            dec = sum(p.numel() for blk in m.decoder.blocks[:dec_layers] for p in blk.parameters())
            branches = sum(branch_params(m.branches[b], self.kept[b]) for b in run)
            head = m.motion_for(level)
            heads = sum(p.numel() for p in head.parameters()) if head is not None else 0
            n = self._params_cache[key] = int(shared + dec + branches + heads)
        return n

    def _flops(self, enc: EncoderOutput, n_embed: int, generated: int, beams: int,
               learned_mask: bool, fusion_tokens: int | None = None) -> tuple[dict, float]:
        c, m = self.cfg, self.model
        enc_fl = embed_flops(c, n_embed)
        for b, toks in enc.branch_tokens.items():
            enc_fl += vit_flops(replace(c, mlp_ratio=m.acfg.mlp_ratios[b]), toks, self.kept[b])
        flops = {"change_mask": mask_flops(c) if learned_mask else 0.0,
                 "router": estimator_flops(c, m.acfg.est_hidden) if self.route_estimated else 0.0,
                 "encoder": enc_fl,
                 "fusion": fusion_flops(c, fusion_tokens, getattr(self.motion_head(enc), "width",
                                                                  None)),
                 "decoder": decoder_flops(c, generated, beams, enc.decoder_layers)}
        med = replace(c, mlp_ratio=m.acfg.mlp_ratios[2])
        dense = ((mask_flops(c) if learned_mask else 0.0) + embed_flops(c, n_embed)
                 + vit_flops(med, [c.num_tokens] * m.acfg.depths[2]) + fusion_flops(c)
                 + decoder_flops(c, generated, self.beam_size if self.decoding == "beam" else 1,
                                 m.acfg.decoder_layers[2]))
        return flops, dense
