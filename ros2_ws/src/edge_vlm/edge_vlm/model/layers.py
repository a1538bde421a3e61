"""Transformer layers of the captioning model and the one place of their attention arithmetic.

Every attention of the model splits a fused projection into heads with :func:`split_heads`,
merges the heads of its output with :func:`merge_heads` and, in a :class:`Block`, projects
them back onto the residual stream with :meth:`Block.attn_residual`. The softmax is PyTorch's
fused ``scaled_dot_product_attention``, except in the batch-1 encoder passes of streaming
inference, which use :func:`attend` (plain ``bmm`` softmax over keys stored transposed, the
layout of the token memory and the native kernel).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

#: (..., T, parts, H, D/H) -> (parts, ..., H, T, D/H), by the number of dimensions
_HEADS_FIRST = {4: (1, 2, 0, 3), 5: (2, 0, 3, 1, 4)}


def split_heads(x: torch.Tensor, parts: int, heads: int) -> torch.Tensor:
    """A fused projection ``(..., T, parts * D)`` (no batch dimension, or one) as a
    ``(parts, ..., heads, T, D / heads)`` view: unpack it into its parts (e.g. q, k, v)."""
    *lead, t, pd = x.shape
    heads_first = _HEADS_FIRST[len(lead) + 4]
    return x.view(*lead, t, parts, heads, pd // (parts * heads)).permute(heads_first)


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """Attention output ``(..., H, T, D/H)`` -> ``(..., T, D)``."""
    return out.transpose(-3, -2).flatten(-2)


def attend(q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of ``q`` (h, nq, dh) over keys ``kt`` (h, dh, nk, transposed) and values
    ``v`` (h, nk, dh) -> (h, nq, dh) (batch-1 inference path)."""
    s = torch.bmm(q, kt).mul_(q.shape[-1] ** -0.5)
    return torch.bmm(torch.softmax(s, dim=-1), v)


def avg_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)`` of a (..., H, W) tensor: the same sums in the same order (the
    window row by row, as PyTorch's CPU kernel adds them) of four strided views, then the same
    division, so the same values (``tests/test_frame_ops.py``); at batch 1 on CPU about half the
    time of ``avg_pool2d`` with kernel 2 on the change-mask net's maps. Odd sizes: avg_pool2d."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        return F.avg_pool2d(x, 2)
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    return a.add(b).add_(x[..., 1::2, 0::2]).add_(x[..., 1::2, 1::2]).div_(4)


@lru_cache(maxsize=64)
def _prefix_causal_mask(t: int, total: int, causal_from: int,
                        device: torch.device) -> torch.Tensor:
    """The attention mask of the last ``t`` of ``total`` positions: each sees every earlier
    position and the first ``causal_from`` (the fully visible prefix). Cached: a decoder makes
    the same few shapes every frame (read only)."""
    i = torch.arange(total - t, total, device=device)[:, None]
    j = torch.arange(total, device=device)[None, :]
    return (j <= i) | (j < causal_from)


class Block(nn.Module):
    """Pre-norm transformer block; causal (decoder, KV cache) or bidirectional (encoder)."""

    #: the MLP's inference weights sliced to a compute budget (ANC's ``GatedBlock.set_budget``:
    #: fc1 weight, fc1 bias, fc2 weight, fc2 bias); None: every channel
    mlp_slice: tuple | None = None

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, act: str = "gelu"):
        super().__init__()
        self.heads = heads
        self.act_fn = F.relu if act == "relu" else F.gelu
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim),
                                 nn.ReLU() if act == "relu" else nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    # -- the steps of the block (functional calls: at a few tokens the per-call overhead of
    # modules dominates on CPU; the same arithmetic as the modules)
    def attn_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values of ``x`` (..., T, D) after the first norm, per head: a
        ``(3, ..., H, T, D/H)`` view (unpack it)."""
        ln = self.ln1
        h = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        return split_heads(F.linear(h, self.qkv.weight, self.qkv.bias), 3, self.heads)

    def attn_residual(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``x`` plus the output projection of the attention output ``out`` (..., H, T, D/H)."""
        return x + F.linear(merge_heads(out), self.proj.weight, self.proj.bias)

    def mlp_params(self) -> tuple:
        """(fc1 weight, fc1 bias, fc2 weight, fc2 bias) as inference uses them."""
        if self.mlp_slice is not None:
            return self.mlp_slice
        fc1, fc2 = self.mlp[0], self.mlp[2]
        return fc1.weight, fc1.bias, fc2.weight, fc2.bias

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP with its inference weights (:meth:`mlp_params`)."""
        w1, b1, w2, b2 = self.mlp_params()
        return F.linear(self.act_fn(F.linear(x, w1, b1)), w2, b2)

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus :meth:`feed_forward` of its second norm."""
        ln = self.ln2
        h = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        return x + self.feed_forward(h)

    def forward(self, x: torch.Tensor, cache: dict | None = None,
                causal_from: int | None = 0) -> torch.Tensor:
        """``causal_from=None``: bidirectional; else the first ``causal_from`` positions are a
        fully visible prefix and the rest is causal (decoder)."""
        t = x.shape[-2]
        q, k, v = self.attn_qkv(x)
        if cache is not None and "k" in cache:
            k = torch.cat([cache["k"], k], dim=2)
            v = torch.cat([cache["v"], v], dim=2)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        total = k.shape[2]
        if t == 1 or causal_from is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            allowed = _prefix_causal_mask(t, total, causal_from, x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = self.attn_residual(x, out)
        ln, fc1, fc2 = self.ln2, self.mlp[0], self.mlp[2]       # (functional: as the modules)
        h = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        return x + F.linear(self.act_fn(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)

    def cached_step(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        """One decoding step (x: (B, 1, D)) against the KV cache, which it extends; the same
        arithmetic as :meth:`forward` with a cache."""
        q, k, v = self.attn_qkv(x)
        k = cache["k"] = torch.cat([cache["k"], k], dim=2)
        v = cache["v"] = torch.cat([cache["v"], v], dim=2)
        return self.mlp_residual(self.attn_residual(x, F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(q, self.kv(kv), bias)

    def attend(self, q: torch.Tensor, kv: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """The attention of ``q`` (B, Q, D) over the already projected keys and values ``kv``
        (B, N, 2D: ``self.kv`` of the key/value side, e.g. a streaming cache of them), with the
        additive ``bias`` (B, N) on the scores."""
        h = self.heads
        qh, = split_heads(self.q(q), 1, h)
        k, v = split_heads(kv, 2, h)
        mask = None if bias is None else bias[:, None, None, :].to(qh.dtype)
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)
        return self.proj(merge_heads(out))
