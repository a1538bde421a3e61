"""The STTF captioning model (Sparse Temporal Token Fusion): its modules, training forward.

Per frame (batch 1 at inference, a window of frames in training):

1. ``ChangeMaskNet``: a small conv net on the frame's event histogram gives a change
   probability per 8x8 patch. It starts as the rule "patch has >= k events" (a skip
   term on the patch count) and learns corrections under an active-token penalty.
2. ``PatchEmbed`` + **gated token memory** (input level): a patch in the change mask is
   embedded and merged with the patch's cached token by a learned gate
   ``g = sigmoid(W [new; cached])``: ``e <- g * new + (1 - g) * e``. Every other patch
   keeps its cached token. Each token also has an *age* (frames since its patch last
   changed); a token older than ``max_age`` frames expires (re-embedded from the
   current frame). The memory is a learned, patch-level time surface: the trajectory of
   the last second of motion stays visible, its order encoded by the age.
3. ``SparseViT``: pre-norm transformer blocks over all tokens. At inference only the
   tokens whose input changed go through qkv, projection and MLP; they attend to every
   token (fresh keys/values plus the cached ones of the rest). Each layer keeps its own
   memory (last propagated input, keys, values, output) and a token is propagated
   further only while its input deviates from the *last propagated* value by more than
   a per-layer threshold (eventful-transformer style gate), so skipped small changes
   accumulate instead of drifting (the streaming passes: :mod:`edge_vlm.inference.vit`).
   Training runs the dense layers (fixed shapes).
4. ``Fusion``: temporal cross-attention of learned query tokens over the vision tokens
   plus their age embedding; the change mask is an additive attention bias (learned
   strength) that favours dynamic content.
5. ``MicroGPT``: a small causal transformer with a KV cache writes the caption after the
   fused prefix (greedy or beam search, :mod:`.decoding`); a linear head on the fused tokens
   gives the gesture class (the vision head), joined after training by the motion head on
   the memory's motion state (:mod:`.motion`, ``edge-vlm train --model gesture``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_vlm.model.config import ModelConfig, age_bucket, patchify
from edge_vlm.model.layers import Block, CrossAttention, avg_pool2x2
from edge_vlm.model.motion import MotionHead

#: the vision head's "recently changed" tokens: age bucket <= this (changed within the last 8
#: frames)
DYN_BUCKET = 4

# ----------------------------------------------------------------------------- change mask
class ChangeMaskNet(nn.Module):
    """Per-patch change logits from a ``(B, 4, H, W)`` event-count histogram.

    ``logit = a * (log1p(count) - log1p(k - 0.5)) + conv(log1p(hist))``: with the conv
    head initialised to zero the net *is* the count rule at the start of training.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.mask_hidden
        self.patch = cfg.patch
        self.c1 = nn.Conv2d(cfg.event_channels, h // 2, 3, padding=1)
        self.c2 = nn.Conv2d(h // 2, h, 3, padding=1)
        self.head = nn.Conv2d(h, 1, 1)
        self.scale = nn.Parameter(torch.tensor(4.0))
        self.offset = nn.Parameter(torch.tensor(math.log1p(cfg.mask_count_threshold - 0.5)))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, hist: torch.Tensor, log_hist: torch.Tensor | None = None) -> torch.Tensor:
        """``hist`` raw counts (B, C, H, W) float -> logits (B, N); ``log_hist``: its
        ``log1p`` when the caller has it (a streaming engine computes it once per frame for
        every stage that reads it). Functional calls with the modules' weights: the same
        arithmetic, without the per-module overhead that dominates at batch 1 on CPU."""
        p, c1, c2, head = self.patch, self.c1, self.c2, self.head
        counts = F.avg_pool2d(hist.sum(dim=1, keepdim=True), p) * (p * p)       # (B,1,g,g)
        x = avg_pool2x2(torch.log1p(hist) if log_hist is None else log_hist)     # H/2
        x = F.gelu(F.conv2d(x, c1.weight, c1.bias, padding=1))
        x = avg_pool2x2(x)                                                     # H/4
        x = F.gelu(F.conv2d(x, c2.weight, c2.bias, padding=1))
        x = avg_pool2x2(x) if p == 8 else F.avg_pool2d(x, p // 4)              # grid
        logit = (self.scale * (torch.log1p(counts) - self.offset)
                 + F.conv2d(x, head.weight, head.bias))
        return logit.flatten(1)


# ----------------------------------------------------------------------------- token memory
class PatchEmbed(nn.Module):
    """Patch-local embedding (Linear-GELU-Linear) and the learned gate of the token memory."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.patch_dim, cfg.dim)
        self.fc2 = nn.Linear(cfg.dim, cfg.dim)
        self.gate = nn.Linear(2 * cfg.dim, cfg.dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(patches)))

    def empty(self) -> torch.Tensor:
        """Embedding of an all-zero patch, ``(D,)``."""
        return self.fc2(F.gelu(self.fc1.bias))

    def merge(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """Learned gated averaging of a new token with the cached one."""
        g = torch.sigmoid(self.gate(torch.cat([new, old], dim=-1)))
        return g * new + (1.0 - g) * old


# ----------------------------------------------------------------------------- sparse ViT
class SparseViT(nn.Module):
    """The encoder: pre-norm blocks over every memory token (training, reference); the
    streaming passes over a layer memory are :mod:`edge_vlm.inference.vit`'s."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(cfg.num_tokens, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.encoder_act)
                                     for _ in range(cfg.depth)])
        self.ln = nn.LayerNorm(cfg.dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """Dense (training, reference): ``e`` (B, N, D) memory tokens -> (B, N, D)."""
        x = e + self.pos
        for blk in self.blocks:
            x = blk(x, causal_from=None)
        return self.ln(x)


# ----------------------------------------------------------------------------- fusion + decoder
class Fusion(nn.Module):
    """Temporal cross-attention: query tokens over vision tokens (+ age), change mask as bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.fusion_queries, cfg.dim) * 0.02)
        self.age = nn.Embedding(cfg.age_buckets, cfg.dim)
        nn.init.normal_(self.age.weight, std=0.02)
        self.norm_kv = nn.LayerNorm(cfg.dim)
        self.attn = CrossAttention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(),
                                 nn.Linear(4 * cfg.dim, cfg.dim))

    def tokens(self, vis: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        return vis + self.age(bucket)

    # functional calls with the modules' weights (the same arithmetic as calling the modules;
    # at batch 1 on CPU the modules' per-call overhead is a visible part of this stage)
    def keys_values(self, z: torch.Tensor) -> torch.Tensor:
        """Keys and values of the vision tokens ``z`` (..., N, D) -> (..., N, 2D): per token (a
        token's row depends on its own ``z`` row only, so a streaming cache recomputes only the
        rows whose vision token or age bucket changed: :mod:`edge_vlm.inference.fusion_cache`)."""
        ln, kv = self.norm_kv, self.attn.kv
        return F.linear(F.layer_norm(z, ln.normalized_shape, ln.weight, ln.bias, ln.eps),
                        kv.weight, kv.bias)

    def attend(self, kv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The queries over the keys/values ``kv`` (B, N, 2D), scores biased by ``bias`` (B, N),
        then the MLP: the fused queries (B, Q, D)."""
        x = self.queries.expand(kv.shape[0], -1, -1)
        x = x + self.attn.attend(x, kv, bias)
        ln, fc1, fc2 = self.norm2, self.mlp[0], self.mlp[2]
        h = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        return x + F.linear(F.gelu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)

    def forward(self, z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.attend(self.keys_values(z), bias)


class MicroGPT(nn.Module):
    """A tiny GPT that continues a vision prefix with caption tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = len(cfg.vocab)
        self.tok = nn.Embedding(v, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.fusion_queries + cfg.max_len + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads) for _ in range(cfg.dec_layers)])
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, v, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        self.prefix_len = cfg.fusion_queries

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor,
                layers: int | None = None) -> torch.Tensor:
        """Teacher-forced logits for ``tokens`` (B,T) after ``prefix`` (B,P,D): (B,T,V).
        ``layers``: run only the first ``layers`` blocks (early exit, ANC's conditional
        pathway)."""
        x = torch.cat([prefix, self.tok(tokens)], dim=1)
        x = x + self.pos[: x.shape[1]]
        for blk in self.blocks[:layers]:
            x = blk(x, causal_from=self.prefix_len)
        return self.head(self.ln(x[:, self.prefix_len:]))

    def start(self, prefix: torch.Tensor, first: torch.Tensor, layers: int | None = None,
              all_logits: bool = False) -> tuple[torch.Tensor, list[dict]]:
        """Fill the KV cache with the prefix and the tokens ``first`` (B,T); return the logits of
        the next token (B,V), or with ``all_logits`` those after each of the T tokens (B,T,V)."""
        blocks = self.blocks[:layers]
        caches = [dict() for _ in blocks]
        x = torch.cat([prefix, self.tok(first)], dim=1)
        x = x + self.pos[: x.shape[1]]
        for blk, c in zip(blocks, caches):
            x = blk(x, cache=c, causal_from=self.prefix_len)
        return self.head(self.ln(x[:, self.prefix_len:] if all_logits else x[:, -1])), caches

    def step(self, token: torch.Tensor, position: int, caches: list[dict]) -> torch.Tensor:
        """One cached decoding step for ``token`` (B,1) at absolute ``position`` (as many blocks
        as caches)."""
        x = F.embedding(token, self.tok.weight) + self.pos[position]
        for blk, c in zip(self.blocks, caches):
            x = blk.cached_step(x, c)
        ln = self.ln
        h = F.layer_norm(x[:, -1], ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        return F.linear(h, self.head.weight)


# ----------------------------------------------------------------------------- the model
@dataclass
class MemoryWindow:
    """The token memory after a training window (:meth:`CaptionModel.memory_window`)."""

    e: torch.Tensor                 # the memory (B, N, D)
    bucket: torch.Tensor            # age buckets (B, N)
    p_change: torch.Tensor          # the last frame's change probabilities (B, N)
    mask: torch.Tensor              # ... its hard change mask
    m_st: torch.Tensor              # ... its straight-through mask
    e_prev: torch.Tensor | None     # the memory ``snapshot`` frames before the last


class CaptionModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.mask_net = ChangeMaskNet(cfg)
        self.embed = PatchEmbed(cfg)
        self.vit = SparseViT(cfg)
        self.fusion = Fusion(cfg)
        self.mask_strength = nn.Parameter(torch.tensor(3.0))
        self.decoder = MicroGPT(cfg)
        self.gesture = nn.Sequential(nn.LayerNorm(2 * cfg.dim),
                                     nn.Linear(2 * cfg.dim, cfg.num_classes))
        self.motion = None
        if cfg.motion_head:
            self.add_motion_head()

    def add_motion_head(self) -> None:
        """Give the gesture head the motion state input (:mod:`.motion`); sets
        ``cfg.motion_head``."""
        self.cfg.motion_head = True
        self.motion = MotionHead(self.cfg)

    # -- heads shared by training and streaming inference --
    def fuse(self, vis: torch.Tensor, bucket: torch.Tensor,
             change: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """vis (B,N,D) encoder output, bucket (B,N) age buckets, change (B,N) mask (float or bool).
        Returns (fused queries (B,Q,D), vision tokens with age (B,N,D))."""
        z = self.fusion.tokens(vis, bucket)
        return self.fusion(z, self.fusion_bias(change, z.dtype)), z

    def fusion_bias(self, change: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The fusion's attention bias of the change mask ``change`` (B, N): its learned
        strength on the changed tokens."""
        return self.mask_strength * change.to(dtype)

    def gesture_logits(self, fused: torch.Tensor, z: torch.Tensor, bucket: torch.Tensor,
                       motion: torch.Tensor | None = None) -> torch.Tensor:
        """Gesture from the fused queries plus the mean of the recently changed tokens (the
        vision head); with a motion head and ``motion`` (B, C, g, g), the motion state's
        logits plus the vision head's weighted log-probabilities (:class:`.motion.MotionHead`)."""
        w = (bucket <= DYN_BUCKET).to(z.dtype)[..., None]
        dyn = (z * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        ln, fc = self.gesture[0], self.gesture[1]           # (functional: as the modules)
        h = F.layer_norm(torch.cat([fused.mean(dim=1), dyn], dim=-1), ln.normalized_shape,
                         ln.weight, ln.bias, ln.eps)
        vision = F.linear(h, fc.weight, fc.bias)
        if self.motion is None or motion is None:
            return vision
        return self.motion(motion, vision)

    # -- training: a window of T frames from a reset, the last one supervised --
    def content(self, hist: torch.Tensor, rgb: torch.Tensor | None, has_rgb: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Model input rows (B, N, patch_dim) of one frame: log1p event counts of the patches in
        ``mask`` (denoised: the others count as empty), then RGB in [-0.5, 0.5] or zeros.
        ``hist`` (B, C, H, W) counts, ``rgb`` (B, H, W, 3) uint8 or None."""
        c = self.cfg
        ev = patchify(torch.log1p(hist.float()), c.patch) * mask[..., None].to(torch.float32)
        b = hist.shape[0]
        if rgb is None:
            col = ev.new_zeros(b, c.num_tokens, c.rgb_channels * c.patch * c.patch)
        else:
            col = patchify(rgb.permute(0, 3, 1, 2).float() / 255.0 - 0.5, c.patch)
            col = col * has_rgb.view(b, 1, 1).to(col.dtype)
        return torch.cat([ev, col], dim=-1)

    def memory_window(self, hist: torch.Tensor, rgb: torch.Tensor | None, has_rgb: torch.Tensor,
                      valid: torch.Tensor, snapshot: int | None = None) -> MemoryWindow:
        """The token memory after a window of T frames (the front end of :meth:`forward`).

        ``hist`` (B,T,C,H,W) uint8 event counts (oldest first), ``rgb`` (B,T,H,W,3) uint8 or
        None, ``has_rgb`` (B,), ``valid`` (B,T) frame exists. Same semantics as the streaming
        engine: the window's first frame is a reset (every patch embedded); each later frame
        merges the patches of its change mask into the memory (learned gate). The last
        frame's mask is a straight-through estimate so the task loss trains the mask net;
        earlier masks are hard decisions of the same net without gradient.
        With ``snapshot = k`` also the memory ``k`` frames before the last (``e_prev``, for
        training the sparse path with masks).
        """
        b, t = hist.shape[:2]
        c = self.cfg
        n = c.num_tokens
        fr = (lambda ti: None) if rgb is None else (lambda ti: rgb[:, ti])
        with torch.no_grad():
            masks = [(self.mask_net(hist[:, ti].float()) > 0) & valid[:, ti, None]
                     for ti in range(t - 1)]
        p_last = torch.sigmoid(self.mask_net(hist[:, -1].float()))
        hard_last = p_last > 0.5
        m_last = hard_last.float() + p_last - p_last.detach()          # straight-through
        masks.append(hard_last)
        age = torch.full((b, n), c.max_age, dtype=torch.long, device=hist.device)
        e = self.embed(self.content(hist[:, 0], fr(0), has_rgb, masks[0]))           # reset frame
        age = torch.where(masks[0], torch.zeros_like(age), age)
        e_prev = e if snapshot is not None and t - 1 - snapshot <= 0 else None
        for ti in range(1, t):
            if snapshot is not None and ti == t - snapshot:
                e_prev = e
            m = masks[ti]
            age = torch.where(m, torch.zeros_like(age), (age + 1).clamp(max=c.max_age))
            x = self.content(hist[:, ti], fr(ti), has_rgb, m)
            if ti < t - 1:
                rows, cols = m.nonzero(as_tuple=True)
                if len(rows):
                    e = e.clone()
                    e[rows, cols] = self.embed.merge(self.embed(x[rows, cols]), e[rows, cols])
            else:   # last frame: every patch, weighted by the straight-through mask
                e = e + m_last[..., None] * (self.embed.merge(self.embed(x), e) - e)
        return MemoryWindow(e, age_bucket(age, c.max_age), p_last, hard_last, m_last, e_prev)

    def forward(self, hist: torch.Tensor, rgb: torch.Tensor | None, has_rgb: torch.Tensor,
                valid: torch.Tensor, tokens_in: torch.Tensor) -> dict:
        """Training / reference forward of a window (see :meth:`memory_window`); the ViT runs
        dense on the last frame's memory. ``tokens_in`` (B,L) teacher-forcing caption ids."""
        w = self.memory_window(hist, rgb, has_rgb, valid)
        vis = self.vit(w.e)
        fused, z = self.fuse(vis, w.bucket, w.m_st)
        return {"gesture": self.gesture_logits(fused, z, w.bucket),
                "caption": self.decoder(fused, tokens_in), "p_change": w.p_change, "mask": w.mask}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, pad: int) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=pad)


def init_weights(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not name.startswith("mask_net"):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    # scale residual projections as in GPT-2
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.trunc_normal_(p, std=0.02 / math.sqrt(2 * 2))
    if isinstance(model, CaptionModel):   # the gate starts by preferring the new token
        nn.init.constant_(model.embed.gate.bias, 2.0)
