"""ANC (Adaptive Neural Compression) joined with STTF, in one file.

The joint model keeps STTF's front end (change-mask net, gated token memory with ages),
fusion, gesture head and MicroGPT decoder, and replaces the single encoder by three
sparse-ViT branches of one width (so they share the memory, keys/values layout and the
fusion) but different depth and MLP width:

* Tiny   - 1 layer, MLP ratio 1 (low-motion / static scenes),
* Small  - the STTF encoder (4 layers, MLP ratio 4),
* Medium - 8 layers, MLP ratio 8 (high motion).

``ComplexityEstimator``: a small conv net on the frame's event histogram (plus the
memory's recent-activity fraction) -> probabilities over the three levels. The router
samples them with Gumbel-softmax in training and routes hard at inference: the branches
whose probability exceeds ``router_threshold`` run (the most probable one if none does),
outputs combined by weight, capped by the compute budget (beta <= 1/3: Tiny only,
<= 2/3: up to Small).

The estimator is trained with Gumbel-softmax on the per-branch losses plus a FLOPs cost
(which level pays off for this frame) and, so that routing follows scene complexity
instead of collapsing onto the cheapest branch, with a supervised complexity target:
the level of the frame's hand speed in the simulator's ground truth
(:func:`complexity_level`: below :data:`COMPLEXITY_SPEEDS` [0], the simulator's
low-motion bound, Tiny; from [1] on, about the fastest third of gestures, Medium).

``Channel gates``: every MLP hidden channel c of every branch has a learned threshold
theta_c; its gate is ``sigmoid((beta - theta_c) / T)`` in training (beta sampled per
sample) and, at inference, the channels with theta_c < beta are *sliced* out of the
weight matrices (smaller matmuls, real wall-time savings).

``Conditional decoder pathway``: the dominant level picks the decoder depth (Tiny exits
after the first decoder block) and the beam width (Tiny decodes greedily; Small and
Medium use the node's ``beam_size``, 3 as in the paper). At batch 1 on a CPU, beam-3
decoding is the costliest stage of a Tiny frame (about half its time), so a low-motion
frame pays for a short greedy caption instead.

``Per-level gesture heads``: the published gesture and scene answer comes from the motion head
(:mod:`.motion`), which reads the token memory's motion state, not the branch; with one shared
head the three levels answer alike (docs/design.md, "Why the branches do not differ"). A level
may carry its own, narrower head (:attr:`AncConfig.motion_widths`, fitted by ``edge-vlm train
--model gesture --level``); a frame is answered by the head of the level that ran it
(:meth:`AncModel.motion_for`). Width 0 (the default): the shared head ``motion``.

Sizes are scaled to a 2-core CPU (the paper's Tiny ~2M / Medium ~20M would not run in
real time here and would not fit a 30 MB checkpoint); the ratio Medium/Tiny FLOPs (~19x)
keeps the paper's spread. Branches are grown from the trained STTF encoder (function-
preserving: Medium starts as Small, Tiny as Small's first layer) and fine-tuned jointly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_vlm.model.config import ModelConfig
from edge_vlm.model.layers import Block
from edge_vlm.model.motion import MotionHead
from edge_vlm.model.sttf import CaptionModel, SparseViT

LEVELS = ("tiny", "small", "medium")

#: hand speeds (px/s on the 128-px model grid) between the complexity levels the estimator is
#: trained to predict: [0] = edge_vlm.sim.gestures.LOW_MOTION_HAND_SPEED (low motion -> Tiny),
#: [1] ~ the 70th percentile of simulated gesture hand speeds (-> Medium).
COMPLEXITY_SPEEDS = (45.0, 100.0)


def complexity_level(speed_px_s) -> np.ndarray:
    """Complexity level (0 tiny, 1 small, 2 medium) of hand speeds (array-like, px/s);
    frames without a gesture (speed 0) are level 0."""
    v = np.asarray(speed_px_s, dtype=np.float64)
    return ((v >= COMPLEXITY_SPEEDS[0]).astype(np.int64)
            + (v >= COMPLEXITY_SPEEDS[1]).astype(np.int64))


@dataclass
class AncConfig:
    depths: list = field(default_factory=lambda: [1, 4, 8])
    mlp_ratios: list = field(default_factory=lambda: [1, 4, 8])
    # the conditional decoder pathway: decoder blocks and beam width (<= beam_size) per level
    decoder_layers: list = field(default_factory=lambda: [1, 2, 2])
    decoder_beams: list = field(default_factory=lambda: [1, 3, 3])
    router_threshold: float = 0.5
    gate_temperature: float = 0.05
    est_hidden: int = 8
    # channels of each level's own motion head (0: the level reads the shared head ``motion``)
    motion_widths: list = field(default_factory=lambda: [0, 0, 0])

    def to_dict(self) -> dict:
        return asdict(self)


def budget_cap(budget: float) -> int:
    """Highest level a compute budget in (0, 1] allows: <= 1/3 tiny, <= 2/3 small, else medium."""
    return max(0, min(2, int(math.ceil(float(budget) * 3 - 1e-9)) - 1))


class ComplexityEstimator(nn.Module):
    """Scene complexity from events: a two-layer conv net on a 4x-pooled log histogram plus
    three scalars (log event count, changed-token fraction, recently-changed fraction)."""

    def __init__(self, cfg: ModelConfig, hidden: int = 8):
        super().__init__()
        self.c1 = nn.Conv2d(cfg.event_channels, hidden, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(hidden, hidden, 3, stride=2, padding=1)
        self.fc = nn.Linear(hidden + 3, len(LEVELS))

    def forward(self, hist: torch.Tensor, change_frac: torch.Tensor,
                recent_frac: torch.Tensor, log_hist: torch.Tensor | None = None) -> torch.Tensor:
        """``hist`` (B,C,H,W) counts, fractions (B,) -> level logits (B, 3); ``log_hist``: its
        ``log1p`` when the caller has it (as the change-mask net; functional calls alike)."""
        c1, c2, fc = self.c1, self.c2, self.fc
        x = F.avg_pool2d(torch.log1p(hist) if log_hist is None else log_hist, 4)
        x = F.gelu(F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1))
        x = F.gelu(F.conv2d(x, c2.weight, c2.bias, stride=2, padding=1)).mean(dim=(2, 3))
        n = torch.log1p(hist.sum(dim=(1, 2, 3))) / 10.0
        return F.linear(torch.cat([x, n[:, None], change_frac[:, None], recent_frac[:, None]],
                                  dim=1), fc.weight, fc.bias)


class GatedBlock(Block):
    """Encoder block whose MLP hidden channels follow a compute budget (sigmoid gates in
    training, sliced weights at inference)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, act: str, temperature: float):
        super().__init__(dim, heads, mlp_ratio, act)
        hid = mlp_ratio * dim
        self.theta = nn.Parameter(torch.linspace(0.0, 0.9, hid))   # channel c kept: beta > theta_c
        self.temperature = temperature
        self.beta: torch.Tensor | None = None                       # training: (B,) budgets

    def gates(self, beta: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((beta[:, None] - self.theta[None]) / self.temperature)

    def set_budget(self, beta: float | None) -> int:
        """Inference: slice the MLP to the channels kept at ``beta`` (None = all). Returns the
        count."""
        fc1, fc2 = self.mlp[0], self.mlp[2]
        if beta is None:
            self.mlp_slice = None
            return fc1.out_features
        keep = torch.nonzero(self.theta.detach() < beta).flatten()
        if len(keep) == 0:
            keep = torch.argmin(self.theta.detach()).view(1)
        stamp = (keep, tuple(t._version for t in (fc1.weight, fc1.bias, fc2.weight, fc2.bias)))
        if (self.mlp_slice is not None and self._stamp[1] == stamp[1]
                and torch.equal(self._stamp[0], keep)):
            return len(keep)      # same channels, same weights: keep the slice (and packed copy)
        self._stamp = stamp
        self.mlp_slice = (fc1.weight.detach()[keep].contiguous(),
                          fc1.bias.detach()[keep].contiguous(),
                          fc2.weight.detach()[:, keep].contiguous(), fc2.bias.detach())
        return len(keep)

    def kept(self) -> int:
        return self.mlp[0].out_features if self.mlp_slice is None else self.mlp_slice[0].shape[0]

    def kv_out(self, x: torch.Tensor, mix: tuple | None = None) -> tuple:
        """Training: (keys, values, output) of the whole (B, N, D) input; ``mix = (m, k_old,
        v_old)`` replaces the keys/values of the tokens with m = 0 by the cached ones (a sparse
        step)."""
        q, k, v = self.attn_qkv(x)
        if mix is not None:
            m, k_old, v_old = mix
            mk = m[:, None, :, None]
            k, v = mk * k + (1 - mk) * k_old, mk * v + (1 - mk) * v_old
        x = self.attn_residual(x, F.scaled_dot_product_attention(q, k, v))
        fc1, fc2 = self.mlp[0], self.mlp[2]
        hdn = self.act_fn(fc1(self.ln2(x)))
        if self.beta is not None:
            hdn = hdn * self.gates(self.beta)[:, None, :]
        return k, v, x + fc2(hdn)

    def forward(self, x: torch.Tensor, cache: dict | None = None,
                causal_from: int | None = None) -> torch.Tensor:
        """Training with channel gates at the budgets ``beta`` (:meth:`kv_out`); else a Block."""
        if self.beta is None:
            return super().forward(x, cache, causal_from)
        return self.kv_out(x)[2]


class BranchViT(SparseViT):
    def __init__(self, cfg: ModelConfig, depth: int, mlp_ratio: int, temperature: float):
        bcfg = replace(cfg, depth=depth, mlp_ratio=mlp_ratio)
        super().__init__(bcfg)
        self.blocks = nn.ModuleList([GatedBlock(cfg.dim, cfg.heads, mlp_ratio, cfg.encoder_act,
                                                temperature) for _ in range(depth)])
        self.depth, self.mlp_ratio = depth, mlp_ratio

    def masked_forward(self, e_prev: torch.Tensor, e: torch.Tensor,
                       m: torch.Tensor) -> torch.Tensor:
        """Training with masks (fixed shapes): one sparse step from a dense pass on ``e_prev``.
        Tokens with ``m`` = 1 are recomputed at every layer with the fresh keys/values of the
        recomputed tokens and the cached ones of the rest; tokens with m = 0 keep their cached
        input, keys, values and output, exactly as the streaming sparse pass
        (:func:`edge_vlm.inference.vit.sparse_infer`) does."""
        with torch.no_grad():
            x = e_prev + self.pos
            cache = []
            for blk in self.blocks:
                k, v, out = blk.kv_out(x)
                cache.append((x, k, v, out))
                x = out
        mm = m[..., None]
        x = e + self.pos
        for blk, (x_old, k_old, v_old, out_old) in zip(self.blocks, cache):
            xin = mm * x + (1 - mm) * x_old
            _, _, out = blk.kv_out(xin, (m, k_old, v_old))
            x = mm * out + (1 - mm) * out_old
        return self.ln(x)

    def set_beta(self, beta: torch.Tensor | None) -> None:
        for blk in self.blocks:
            blk.beta = beta

    def set_budget(self, beta: float | None) -> list[int]:
        return [blk.set_budget(beta) for blk in self.blocks]

    def kept(self) -> list[int]:
        return [blk.kept() for blk in self.blocks]


class AncModel(CaptionModel):
    """STTF front end + estimator/router + three gated sparse-ViT branches + shared heads."""

    def __init__(self, cfg: ModelConfig, acfg: AncConfig | None = None):
        super().__init__(cfg)
        self.acfg = acfg = acfg or AncConfig()
        self.estimator = ComplexityEstimator(cfg, acfg.est_hidden)
        self.branches = nn.ModuleList([BranchViT(cfg, d, r, acfg.gate_temperature)
                                       for d, r in zip(acfg.depths, acfg.mlp_ratios)])
        del self.vit        # the encoder is the routed branch
        self.level_motion = nn.ModuleDict()
        # made under a forked RNG: a model with level heads draws the random numbers one
        # without them draws, so a fit seeded before loading it makes the same head either way
        with torch.random.fork_rng():
            for level, width in enumerate(acfg.motion_widths):
                if width:
                    self.add_level_head(level, width)

    # -- per-level gesture heads --
    def add_level_head(self, level: int, width: int) -> MotionHead:
        """Give ``level`` its own (fresh) motion head of ``width`` channels; returns it."""
        self.cfg.motion_head = True
        head = self.level_motion[LEVELS[level]] = MotionHead(self.cfg, width)
        self.acfg.motion_widths[level] = int(width)
        return head

    def motion_for(self, level: int) -> MotionHead | None:
        """The motion head that answers a frame run by ``level``: the level's own, else the
        shared one."""
        return self.level_motion[LEVELS[level]] if LEVELS[level] in self.level_motion \
            else self.motion

    # -- construction from a trained STTF model (function-preserving growth) --
    @classmethod
    def grow_from(cls, sttf: CaptionModel, acfg: AncConfig | None = None) -> "AncModel":
        cfg = sttf.cfg
        model = cls(cfg, acfg)
        own = {k: v for k, v in sttf.state_dict().items() if not k.startswith("vit.")}
        model.load_state_dict(own, strict=False)
        src = sttf.vit
        for br in model.branches:
            br.pos.data.copy_(src.pos.data)
            br.ln.load_state_dict(src.ln.state_dict())
            for i, blk in enumerate(br.blocks):
                if i < len(src.blocks):
                    _copy_block(src.blocks[i], blk)
                else:   # extra layer: identity at start (zero residual outputs)
                    nn.init.zeros_(blk.proj.weight)
                    nn.init.zeros_(blk.proj.bias)
                    nn.init.zeros_(blk.mlp[2].weight)
                    nn.init.zeros_(blk.mlp[2].bias)
        return model

    # -- routing --
    @staticmethod
    def estimator_inputs(hist: torch.Tensor, change: torch.Tensor, bucket: torch.Tensor) -> tuple:
        """(histogram, changed fraction, recently-changed fraction) the estimator reads."""
        return hist, change.float().mean(dim=1), (bucket <= 4).float().mean(dim=1)

    def route_logits(self, hist: torch.Tensor, change: torch.Tensor, bucket: torch.Tensor,
                     log_hist: torch.Tensor | None = None, run=None) -> torch.Tensor:
        """hist (B,C,H,W) float counts, change (B,N) mask, bucket (B,N) age buckets;
        ``log_hist``: ``log1p(hist)`` when the caller has it. ``run``: in inference, a callable
        ``run(estimator, hist, change_frac, recent_frac, log_hist)`` that computes the
        estimator another way (the streaming engine and the router core pass the native
        kernel's, :func:`edge_vlm.inference.native_convs.estimator_logits`)."""
        inputs = self.estimator_inputs(hist, change, bucket)
        if run is not None:
            return run(self.estimator, *inputs, log_hist)
        return self.estimator(*inputs, log_hist=log_hist)

    def forward(self, hist, rgb, has_rgb, valid, tokens_in, beta: torch.Tensor | None = None,
                front_grad: bool = False, sparse_from: int | None = None) -> dict:
        """Training: every branch runs on the window's memory (each with its own gesture and
        caption outputs, channel gates at the per-sample budgets ``beta``), plus the router
        logits. The STTF front end runs without gradient unless ``front_grad``.
        ``sparse_from = k``: train the sparse path with masks: the encoders run densely on the
        memory k frames back and then one sparse step recomputes only the tokens whose memory
        changed since (:meth:`BranchViT.masked_forward`)."""
        ctx = torch.enable_grad() if front_grad else torch.no_grad()
        with ctx:
            w = self.memory_window(hist, rgb, has_rgb, valid, snapshot=sparse_from)
        e, bucket, m = w.e, w.bucket, w.m_st
        changed = None
        if sparse_from is not None:
            changed = (w.e != w.e_prev).any(dim=-1).float()
        if not front_grad:
            m = w.mask.float()
        est_in = self.estimator_inputs(hist[:, -1].float(), w.mask, bucket)
        logits_r = self.estimator(*est_in)
        outs = []
        for br, dl in zip(self.branches, self.acfg.decoder_layers):
            br.set_beta(beta)
            vis = br(e) if changed is None else br.masked_forward(w.e_prev, e, changed)
            br.set_beta(None)
            fused, z = self.fuse(vis, bucket, m)
            outs.append({"gesture": self.gesture_logits(fused, z, bucket),
                         "caption": self.decoder(fused, tokens_in, dl)})
        return {"branches": outs, "router": logits_r, "mask": w.mask, "p_change": w.p_change,
                "estimator_inputs": est_in}


def _copy_block(src: Block, dst: GatedBlock) -> None:
    """Copy a Block into a (possibly narrower / wider MLP) GatedBlock: the first hidden channels
    are copied, extra ones start with zero output weights (function preserving when wider)."""
    for name in ("ln1", "qkv", "proj", "ln2"):
        getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
    s1, s2, d1, d2 = src.mlp[0], src.mlp[2], dst.mlp[0], dst.mlp[2]
    k = min(s1.out_features, d1.out_features)
    with torch.no_grad():
        d1.weight[:k].copy_(s1.weight[:k])
        d1.bias[:k].copy_(s1.bias[:k])
        d2.weight.zero_()
        d2.weight[:, :k].copy_(s2.weight[:, :k])
        d2.bias.copy_(s2.bias)


def branch_params(br: BranchViT, kept: list[int] | None = None) -> int:
    """Parameters a branch uses with ``kept[l]`` MLP channels at layer l (default all)."""
    d = br.pos.shape[1]
    total = br.pos.numel() + sum(p.numel() for p in br.ln.parameters())
    for i, blk in enumerate(br.blocks):
        h = blk.mlp[0].out_features if kept is None else kept[i]
        total += 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    return total


__all__ = ["branch_params", "LEVELS", "AncConfig", "AncModel", "BranchViT", "ComplexityEstimator",
           "GatedBlock", "budget_cap", "complexity_level", "COMPLEXITY_SPEEDS"]
