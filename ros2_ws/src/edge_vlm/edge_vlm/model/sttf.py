"""The STTF captioning model (Sparse Temporal Token Fusion), in one readable file.

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
   accumulate instead of drifting. Training runs the dense layers (fixed shapes).
4. ``Fusion``: temporal cross-attention of learned query tokens over the vision tokens
   plus their age embedding; the change mask is an additive attention bias (learned
   strength) that favours dynamic content.
5. ``MicroGPT``: a small causal transformer with a KV cache writes the caption after the
   fused prefix (greedy or beam search); a linear head on the fused tokens gives the
   gesture class (the vision head), joined after training by the motion head on the
   memory's motion state (:mod:`.motion`, ``edge-vlm train --model gesture``).
"""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_vlm.inference import native_vit

#: upper bounds (inclusive) of the age buckets, in frames; the last bucket is "older / never"
AGE_BUCKETS = (0, 1, 2, 4, 8, 16, 31)


@dataclass
class ModelConfig:
    image_size: int = 128
    patch: int = 8
    event_channels: int = 4
    rgb_channels: int = 3
    dim: int = 128
    heads: int = 4
    depth: int = 4
    mlp_ratio: int = 4
    encoder_act: str = "relu"    # ReLU in the encoder: at batch 1 on CPU, GELU's erf costs as much as a matmul
    fusion_queries: int = 8
    dec_layers: int = 2
    max_len: int = 24
    num_classes: int = 11
    max_age: int = 32            # frames; a token not refreshed for this long expires
    mask_hidden: int = 16        # channels of the change-mask net
    mask_count_threshold: float = 3.0   # the rule the mask net starts from (events per patch)
    motion_head: bool = False    # gesture head reads the memory's motion state too (edge-vlm train --model gesture)
    motion_width: int = 32       # channels of the motion head's first convs
    vocab: list = field(default_factory=list)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def in_channels(self) -> int:
        return self.event_channels + self.rgb_channels

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch * self.patch

    @property
    def age_buckets(self) -> int:
        return len(AGE_BUCKETS) + 1

    def to_dict(self) -> dict:
        return asdict(self)


def patchify(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, C*patch*patch)`` with N row-major patches."""
    b, c, h, w = frames.shape
    x = frames.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def age_bucket(age: torch.Tensor, max_age: int) -> torch.Tensor:
    """Bucket index of token ages (frames since the patch last changed; >= max_age = never)."""
    edges = torch.tensor(AGE_BUCKETS, dtype=age.dtype, device=age.device)
    b = torch.bucketize(age, edges)
    return torch.where(age >= max_age, torch.full_like(b, len(AGE_BUCKETS)), b)


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

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        """``hist`` raw counts (B, C, H, W) float -> logits (B, N)."""
        p = self.patch
        counts = F.avg_pool2d(hist.sum(dim=1, keepdim=True), p) * (p * p)       # (B,1,g,g)
        x = F.avg_pool2d(torch.log1p(hist), 2)                                 # H/2
        x = F.gelu(self.c1(x))
        x = F.avg_pool2d(x, 2)                                                 # H/4
        x = F.gelu(self.c2(x))
        x = F.avg_pool2d(x, p // 4)                                            # grid
        logit = self.scale * (torch.log1p(counts) - self.offset) + self.head(x)
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
class Block(nn.Module):
    """Pre-norm transformer block; causal (decoder, KV cache) or bidirectional (encoder)."""

    @property
    def _slice(self) -> tuple | None:
        """Inference weights of the MLP sliced to a compute budget (ANC's GatedBlock); None: all."""
        return self.__dict__.get("_slice_w")

    @_slice.setter
    def _slice(self, w: tuple | None) -> None:
        self.__dict__["_slice_w"] = w
        native_vit.invalidate()                      # the native plans hold the old slice

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, act: str = "gelu"):
        super().__init__()
        self.heads = heads
        self.act_fn = F.relu if act == "relu" else F.gelu
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.ReLU() if act == "relu" else nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, cache: dict | None = None, causal_from: int | None = 0) -> torch.Tensor:
        """``causal_from=None``: bidirectional; else the first ``causal_from`` positions are a
        fully visible prefix and the rest is causal (decoder)."""
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        if cache is not None and "k" in cache:
            k = torch.cat([cache["k"], k], dim=2)
            v = torch.cat([cache["v"], v], dim=2)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        total = k.shape[2]
        if t == 1 or causal_from is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            i = torch.arange(total - t, total, device=x.device)[:, None]
            j = torch.arange(total, device=x.device)[None, :]
            allowed = (j <= i) | (j < causal_from)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.proj(out.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))

    def cached_step(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        """One decoding step (x: (B, 1, D)) against the KV cache, which it extends; the same
        arithmetic as :meth:`forward` with a cache, in functional calls (at one token per beam
        the per-call overhead of modules dominates on CPU)."""
        b, _, d = x.shape
        h = self.heads
        q, k, v = F.linear(self._ln(self.ln1, x), self.qkv.weight, self.qkv.bias).view(
            b, 1, 3, h, d // h).permute(2, 0, 3, 1, 4)
        k = cache["k"] = torch.cat([cache["k"], k], dim=2)
        v = cache["v"] = torch.cat([cache["v"], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        x = x + F.linear(out.transpose(1, 2).reshape(b, 1, d), self.proj.weight, self.proj.bias)
        return x + self._mlp(self._ln(self.ln2, x))

    def mlp_params(self) -> tuple:
        """(fc1 weight, fc1 bias, fc2 weight, fc2 bias) as inference uses them."""
        fc1, fc2 = self.mlp[0], self.mlp[2]
        return fc1.weight, fc1.bias, fc2.weight, fc2.bias

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = self.mlp_params()
        return F.linear(self.act_fn(F.linear(x, w1, b1)), w2, b2)

    def _ln(self, ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

    def sparse_step(self, x: torch.Tensor, idx: torch.Tensor, layer: "LayerMemory") -> torch.Tensor:
        """Recompute only the tokens ``idx`` (x: (n, D)); they attend to all cached keys/values.
        Functional calls and plain softmax attention: at a few dozen tokens the per-call
        overhead of modules and of the fused SDPA kernel dominates on CPU."""
        n, d = x.shape
        h = self.heads
        qkv = F.linear(self._ln(self.ln1, x), self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(n, 3, h, d // h).permute(1, 2, 0, 3)                      # (h, n, dh) each
        layer.kt.index_copy_(2, idx, k.transpose(1, 2))
        layer.v.index_copy_(1, idx, v)
        out = attend(q, layer.kt, layer.v)                                           # (h, n, dh)
        x = x + F.linear(out.transpose(0, 1).reshape(n, d), self.proj.weight, self.proj.bias)
        return x + self._mlp(self._ln(self.ln2, x))

    def dense_step(self, x: torch.Tensor, layer: "LayerMemory") -> torch.Tensor:
        """All tokens (x: (N, D)), same arithmetic as :meth:`sparse_step`; fills the layer's keys/values."""
        n, d = x.shape
        h = self.heads
        qkv = F.linear(self._ln(self.ln1, x), self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(n, 3, h, d // h).permute(1, 2, 0, 3)
        layer.kt.copy_(k.transpose(1, 2))
        layer.v.copy_(v)
        out = attend(q, layer.kt, layer.v)
        x = x + F.linear(out.transpose(0, 1).reshape(n, d), self.proj.weight, self.proj.bias)
        return x + self._mlp(self._ln(self.ln2, x))


def attend(q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of ``q`` (h, nq, dh) over keys ``kt`` (h, dh, nk, transposed) and values
    ``v`` (h, nk, dh) -> (h, nq, dh) (batch-1 inference path)."""
    s = torch.bmm(q, kt).mul_(q.shape[-1] ** -0.5)
    return torch.bmm(torch.softmax(s, dim=-1), v)


class LayerMemory:
    """One encoder layer's memory: last propagated input, keys (stored transposed, (H, D/H, N):
    the layout the native kernel reads), values and output per token. Written by the inference
    passes only (``dense_infer`` / ``sparse_infer``)."""

    def __init__(self, n: int, d: int, heads: int):
        self._x = torch.zeros(n, d)
        self._kt = torch.zeros(heads, d // heads, n)
        self._v = torch.zeros(heads, n, d // heads)
        self._out = torch.zeros(n, d)
        #: in the ViT's last layer: the vision tokens, i.e. ``out`` after the final norm, which the
        #: passes return. Kept up to date in place (a sparse pass re-normalises only the tokens it
        #: recomputed: the others' outputs did not change); ``vis_ok``: it matches ``out``.
        self.vis: torch.Tensor | None = None
        self.vis_ok = False
        self.scratch: torch.Tensor | None = None      # the native pass's activations (N, D)

    def _tensor(name: str) -> property:             # noqa: N805 (a helper run in the class body)
        """A memory tensor as a property: replacing it makes the native plans stale."""
        def replace(self, t: torch.Tensor) -> None:
            setattr(self, "_" + name, t)
            native_vit.invalidate()
        return property(operator.attrgetter("_" + name), replace)

    x, kt, v, out = _tensor("x"), _tensor("kt"), _tensor("v"), _tensor("out")
    del _tensor

    def publish(self, vis: torch.Tensor) -> torch.Tensor:
        """Store ``vis`` (the final norm of ``out``, computed by a PyTorch pass) as this memory's
        vision tokens and return them (the stored tensor; not under autograd: ``vis`` itself)."""
        if torch.is_grad_enabled():
            self.vis_ok = False
            return vis
        if self.vis is None or self.vis.shape != vis.shape:
            self.vis = torch.empty_like(vis)
        self.vis.copy_(vis)
        self.vis_ok = True
        return self.vis


class SparseViT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(cfg.num_tokens, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.encoder_act) for _ in range(cfg.depth)])
        self.ln = nn.LayerNorm(cfg.dim)
        #: inference passes (dense_infer / sparse_infer) run each layer through the fused native
        #: kernel when it is built (model/native_vit.py); False: the PyTorch path (same results)
        self.native = True

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """Dense (training, reference): ``e`` (B, N, D) memory tokens -> (B, N, D)."""
        x = e + self.pos
        for blk in self.blocks:
            x = blk(x, causal_from=None)
        return self.ln(x)

    def new_memory(self) -> list[LayerMemory]:
        n, d = self.pos.shape
        return [LayerMemory(n, d, blk.heads) for blk in self.blocks]

    def _native_step(self, blk: Block, lm: LayerMemory, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        """The layer through the fused native kernel (:mod:`~edge_vlm.model.native_vit`), or None
        (kernel off for this ViT, not built, or not applicable: the caller's PyTorch path runs)."""
        if not self.native:
            return None
        return native_vit.run_layer(blk, lm, x, idx)

    def _native_pass(self, mem: list[LayerMemory], e: torch.Tensor,
                     idx: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, int]:
        """Every layer over ``idx`` in one native call (:func:`~edge_vlm.model.native_vit.encode`):
        (vision tokens or None, activations of the tokens ``idx``, layers done; 0 = kernel off)."""
        if not self.native:
            return None, e[idx] + self.pos[idx], 0
        return native_vit.encode(self, mem, e, idx)

    def dense_infer(self, e: torch.Tensor, mem: list[LayerMemory], inplace: bool = False) -> torch.Tensor:
        """Dense pass at inference (batch 1, ``e`` (N, D)) that also (re)fills every layer memory.
        Returns the vision tokens (N, D): with ``inplace``, the memory's own tensor
        (``mem[-1].vis``, which the next pass over ``mem`` updates in place), else a copy."""
        vis, x, done = self._native_pass(mem, e, torch.arange(e.shape[0]))
        if vis is None:
            for blk, lm in list(zip(self.blocks, mem))[done:]:
                lm.x.copy_(x)
                x = blk.dense_step(x, lm)
                lm.out.copy_(x)
            vis = mem[-1].publish(self.ln(x))
        return vis if inplace or not mem[-1].vis_ok else vis.clone()

    def sparse_infer(self, e: torch.Tensor, idx: torch.Tensor, mem: list[LayerMemory],
                     thresholds: list[float], inplace: bool = False) -> tuple[torch.Tensor, list[int]]:
        """Recompute the tokens ``idx`` whose memory input changed; returns (vision tokens (N, D),
        tokens recomputed per layer). Layer ``l > 0`` propagates a token only if its input
        moved more than ``thresholds[l]`` (relative L2) from its last propagated input. The
        vision tokens: with ``inplace``, the memory's own tensor (``mem[-1].vis``, which the
        next pass over ``mem`` updates in place; what a streaming engine wants), else a copy."""
        blocks = self._modules["blocks"]           # (not self.blocks: Module.__getattr__ is slow)
        n = idx.numel()
        if n and self.native and max(thresholds[:len(blocks._modules)], default=0.0) <= 0:
            vis, x, done = native_vit.encode(self, mem, e, idx)   # no gating: the whole pass in one call
            if vis is not None:
                return (vis if inplace else vis.clone()), [n] * done
        else:
            x, done = e[idx] + self.pos[idx], 0
        counts = [int(idx.numel())] * done
        for li, (blk, lm) in list(enumerate(zip(self.blocks, mem)))[done:]:
            tau = thresholds[li] if li < len(thresholds) else 0.0
            if tau > 0 and len(idx):
                ref = lm.x[idx]
                dev = (x - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-6)
                keep = dev > tau
                if not bool(keep.all()):
                    idx, x = idx[keep], x[keep]
            counts.append(int(idx.numel()))
            if not len(idx):
                continue
            y = self._native_step(blk, lm, x, idx)
            if y is not None:
                x = y
                continue
            lm.x.index_copy_(0, idx, x)
            x = blk.sparse_step(x, idx, lm)
            lm.out.index_copy_(0, idx, x)
        vis = mem[-1].publish(self.ln(mem[-1].out))
        return (vis if inplace or not mem[-1].vis_ok else vis.clone()), counts


# ----------------------------------------------------------------------------- fusion + decoder
class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, nq, d = q.shape
        nk = kv.shape[1]
        h = self.heads
        qh = self.q(q).view(b, nq, h, d // h).transpose(1, 2)
        k, v = self.kv(kv).view(b, nk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if bias is None else bias[:, None, None, :].to(qh.dtype)
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


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
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))

    def tokens(self, vis: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        return vis + self.age(bucket)

    def forward(self, z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.queries.expand(z.shape[0], -1, -1)
        x = x + self.attn(x, self.norm_kv(z), bias)
        return x + self.mlp(self.norm2(x))


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

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """Teacher-forced logits for ``tokens`` (B,T) after ``prefix`` (B,P,D): (B,T,V).
        ``layers``: run only the first ``layers`` blocks (early exit, ANC's conditional pathway)."""
        x = torch.cat([prefix, self.tok(tokens)], dim=1)
        x = x + self.pos[: x.shape[1]]
        for blk in self.blocks[:layers]:
            x = blk(x, causal_from=self.prefix_len)
        return self.head(self.ln(x[:, self.prefix_len:]))

    def start(self, prefix: torch.Tensor, first: torch.Tensor,
              layers: int | None = None, all_logits: bool = False) -> tuple[torch.Tensor, list[dict]]:
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
        """One cached decoding step for ``token`` (B,1) at absolute ``position`` (as many blocks as caches)."""
        x = F.embedding(token, self.tok.weight) + self.pos[position]
        for blk, c in zip(self.blocks, caches):
            x = blk.cached_step(x, c)
        ln = self.ln
        return F.linear(F.layer_norm(x[:, -1], ln.normalized_shape, ln.weight, ln.bias, ln.eps), self.head.weight)


# ----------------------------------------------------------------------------- the model
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
        self.gesture = nn.Sequential(nn.LayerNorm(2 * cfg.dim), nn.Linear(2 * cfg.dim, cfg.num_classes))
        self.motion = None
        if cfg.motion_head:
            self.add_motion_head()

    def add_motion_head(self) -> None:
        """Give the gesture head the motion state input (:mod:`.motion`); sets ``cfg.motion_head``."""
        from edge_vlm.model.motion import MotionHead

        self.cfg.motion_head = True
        self.motion = MotionHead(self.cfg)

    # -- heads shared by training and streaming inference --
    def fuse(self, vis: torch.Tensor, bucket: torch.Tensor, change: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """vis (B,N,D) encoder output, bucket (B,N) age buckets, change (B,N) mask (float or bool).
        Returns (fused queries (B,Q,D), vision tokens with age (B,N,D))."""
        z = self.fusion.tokens(vis, bucket)
        return self.fusion(z, self.mask_strength * change.to(z.dtype)), z

    def gesture_logits(self, fused: torch.Tensor, z: torch.Tensor, bucket: torch.Tensor,
                       motion: torch.Tensor | None = None) -> torch.Tensor:
        """Gesture from the fused queries plus the mean of the recently changed tokens (the
        vision head); with a motion head and ``motion`` (B, C, g, g), the motion state's
        logits plus the vision head's weighted log-probabilities (:class:`.motion.MotionHead`)."""
        w = (bucket <= 4).to(z.dtype)[..., None]          # changed within the last 8 frames
        dyn = (z * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        vision = self.gesture(torch.cat([fused.mean(dim=1), dyn], dim=-1))
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
                      valid: torch.Tensor, snapshot: int | None = None) -> dict:
        """The token memory after a window of T frames (the front end of :meth:`forward`).

        ``hist`` (B,T,C,H,W) uint8 event counts (oldest first), ``rgb`` (B,T,H,W,3) uint8 or
        None, ``has_rgb`` (B,), ``valid`` (B,T) frame exists. Same semantics as the streaming
        engine: the window's first frame is a reset (every patch embedded); each later frame
        merges the patches of its change mask into the memory (learned gate). The last
        frame's mask is a straight-through estimate so the task loss trains the mask net;
        earlier masks are hard decisions of the same net without gradient.
        Returns memory ``e`` (B,N,D), age buckets, the last frame's change probabilities,
        hard mask and straight-through mask; with ``snapshot = k`` also the memory ``k`` frames
        before the last (``e_prev``, for training the sparse path with masks).
        """
        b, t = hist.shape[:2]
        c = self.cfg
        n = c.num_tokens
        fr = (lambda ti: None) if rgb is None else (lambda ti: rgb[:, ti])
        with torch.no_grad():
            masks = [(self.mask_net(hist[:, ti].float()) > 0) & valid[:, ti, None] for ti in range(t - 1)]
        p_last = torch.sigmoid(self.mask_net(hist[:, -1].float()))
        hard_last = p_last > 0.5
        m_last = hard_last.float() + p_last - p_last.detach()                        # straight-through
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
        return {"e": e, "bucket": age_bucket(age, c.max_age), "p_change": p_last, "mask": hard_last,
                "m_st": m_last, "e_prev": e_prev}

    def forward(self, hist: torch.Tensor, rgb: torch.Tensor | None, has_rgb: torch.Tensor, valid: torch.Tensor,
                tokens_in: torch.Tensor) -> dict:
        """Training / reference forward of a window (see :meth:`memory_window`); the ViT runs
        dense on the last frame's memory. ``tokens_in`` (B,L) teacher-forcing caption ids."""
        w = self.memory_window(hist, rgb, has_rgb, valid)
        vis = self.vit(w["e"])
        fused, z = self.fuse(vis, w["bucket"], w["m_st"])
        return {"gesture": self.gesture_logits(fused, z, w["bucket"]), "caption": self.decoder(fused, tokens_in),
                "p_change": w["p_change"], "mask": w["mask"]}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def decode_greedy(model: CaptionModel, fused: torch.Tensor, bos: int, eos: int,
                  max_len: int, layers: int | None = None, draft: list[int] | None = None,
                  stats: dict | None = None) -> tuple[list[int], float]:
    """Greedy KV-cached decoding of one caption; returns (token ids, mean log-prob).

    ``draft`` (e.g. the previous frame's caption): speculative decoding with the draft as the
    guess -- one teacher-forced pass over BOS + draft gives greedy's choice after every draft
    prefix; the draft is kept up to its first disagreement (or entirely, with the EOS check),
    the KV cache is cut there and plain steps continue. The result is greedy decoding's
    (the same argmax decisions), at one pass instead of one step per token when the caption
    did not change. ``stats`` receives ``first`` (tokens of the first pass, BOS included) and
    ``steps`` (single-token steps after it), for the FLOPs counter."""
    out: list[int] = []
    logp_sum = 0.0
    if max_len <= 0:
        return out, logp_sum
    p = fused.shape[1]
    draft = list(draft or [])[:max_len]
    if draft:
        logits, caches = model.decoder.start(fused, torch.tensor([[bos] + draft]), layers, all_logits=True)
        logp_all = torch.log_softmax(logits[0], dim=-1)
        pred = logp_all.argmax(dim=-1).tolist()
        for i, nxt in enumerate(pred):
            logp_sum += float(logp_all[i, nxt])
            if nxt == eos:
                if stats is not None:
                    stats.update(first=len(draft) + 1, steps=0)
                return out, logp_sum / max(1, len(out) + 1)
            out.append(nxt)
            if len(out) == max_len:
                if stats is not None:
                    stats.update(first=len(draft) + 1, steps=0)
                return out, logp_sum / max(1, len(out) + 1)
            if i < len(draft) and nxt != draft[i]:      # disagreement: keep the cache up to here
                for c in caches:
                    c["k"], c["v"] = c["k"][:, :, :p + i + 1], c["v"][:, :, :p + i + 1]
                break
        first = len(draft) + 1
        pos = p + len(out)
        logits = model.decoder.step(torch.tensor([[out[-1]]]), pos, caches)
        pos += 1
        steps = 1
    else:
        logits, caches = model.decoder.start(fused, torch.tensor([[bos]]), layers)
        first, steps, pos = 1, 0, p + 1
    while True:
        logp = torch.log_softmax(logits, dim=-1)[0]
        nxt = int(torch.argmax(logp))
        logp_sum += float(logp[nxt])
        if nxt == eos:
            break
        out.append(nxt)
        if len(out) >= max_len:
            break
        logits = model.decoder.step(torch.tensor([[nxt]]), pos, caches)
        pos += 1
        steps += 1
    if stats is not None:
        stats.update(first=first, steps=steps)
    return out, logp_sum / max(1, len(out) + 1)


@torch.no_grad()
def decode_beam(model: CaptionModel, fused: torch.Tensor, bos: int, eos: int, max_len: int,
                beam: int = 3, layers: int | None = None) -> tuple[list[int], float]:
    """Beam search (batched beams, KV cache reordered per step); length-normalised score."""
    logits, caches = model.decoder.start(fused, torch.tensor([[bos]]), layers)
    logp = torch.log_softmax(logits, dim=-1)[0]
    top = torch.topk(logp, beam)
    beams = [([int(i)], float(s)) for s, i in zip(top.values, top.indices)]
    caches = [{"k": c["k"].repeat(beam, 1, 1, 1), "v": c["v"].repeat(beam, 1, 1, 1)} for c in caches]
    finished: list[tuple[list[int], float]] = []
    pos = fused.shape[1] + 1
    for _ in range(max_len - 1):
        alive = [(i, b) for i, b in enumerate(beams) if b[0][-1] != eos]
        for b in beams:
            if b[0][-1] == eos:
                finished.append((b[0][:-1], b[1] / len(b[0])))
        if not alive:
            break
        if len(alive) < len(beams):        # drop the finished beams' cache rows
            idx = torch.tensor([i for i, _ in alive])
            caches = [{"k": c["k"][idx], "v": c["v"][idx]} for c in caches]
        last = torch.tensor([[b[0][-1]] for _, b in alive])
        lp = torch.log_softmax(model.decoder.step(last, pos, caches), dim=-1)
        pos += 1
        scores = torch.tensor([b[1] for _, b in alive])[:, None] + lp
        flat = torch.topk(scores.flatten(), min(beam, scores.numel()))
        v = lp.shape[1]
        new_beams, sel = [], []
        for s, f in zip(flat.values, flat.indices):
            r, tkn = divmod(int(f), v)
            new_beams.append((alive[r][1][0] + [tkn], float(s)))
            sel.append(r)
        sel_t = torch.tensor(sel)
        caches = [{"k": c["k"][sel_t], "v": c["v"][sel_t]} for c in caches]
        beams = new_beams
    for b in beams:
        if b[0][-1] != eos:
            finished.append((b[0], b[1] / max(1, len(b[0]))))
    best = max(finished, key=lambda z: z[1])
    return best[0], best[1]


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, pad: int) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad)


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
