"""The streaming encoder passes: a SparseViT over its layer memories, batch 1.

:func:`dense_infer` recomputes every token and (re)fills every layer memory; :func:`sparse_infer`
recomputes only the tokens whose memory input changed: they attend to every token (their fresh
keys/values plus the cached ones of the rest), and layer ``l > 0`` propagates a token only while
its input deviates from the *last propagated* value by more than a per-layer threshold
(:func:`layer_gate`, eventful-transformer style), so skipped small changes accumulate instead
of drifting. A pass runs through the fused native kernel (:mod:`.native_vit`) when it is loaded,
else (or after :func:`set_native` ``(vit, False)``) on the PyTorch steps :func:`dense_step` /
:func:`sparse_step`, with the same results.
"""
from __future__ import annotations

import torch

from edge_vlm.inference import native_vit
from edge_vlm.inference.memory import LayerMemory
from edge_vlm.model.layers import Block, attend
from edge_vlm.model.sttf import SparseViT

#: ``vit.__dict__`` key of :func:`set_native`'s switch (read with one dict lookup per pass)
_TORCH_ONLY = "_native_off"


def set_native(vit: SparseViT, on: bool) -> None:
    """Run ``vit``'s passes through the native kernel when it is loaded (``True``, the default)
    or always on PyTorch calls (``False``: the same results; benchmarks and tests compare)."""
    vit.__dict__[_TORCH_ONLY] = not on


def native_on(vit: SparseViT) -> bool:
    """Whether :func:`set_native` leaves ``vit``'s passes to the native kernel."""
    return not vit.__dict__.get(_TORCH_ONLY, False)


def sparse_step(blk: Block, x: torch.Tensor, idx: torch.Tensor, lm: LayerMemory) -> torch.Tensor:
    """Recompute only the tokens ``idx`` (x: (n, D)); they attend to all cached keys/values, which
    they update. Plain softmax attention (:func:`~edge_vlm.model.layers.attend`): at a few dozen
    tokens the per-call overhead of the fused SDPA kernel dominates on CPU."""
    q, k, v = blk.attn_qkv(x)                                     # (h, n, dh) each
    lm.kt.index_copy_(2, idx, k.transpose(1, 2))
    lm.v.index_copy_(1, idx, v)
    return blk.mlp_residual(blk.attn_residual(x, attend(q, lm.kt, lm.v)))


def dense_step(blk: Block, x: torch.Tensor, lm: LayerMemory) -> torch.Tensor:
    """All tokens (x: (N, D)), the arithmetic of :func:`sparse_step`; fills the keys/values."""
    q, k, v = blk.attn_qkv(x)
    lm.kt.copy_(k.transpose(1, 2))
    lm.v.copy_(v)
    return blk.mlp_residual(blk.attn_residual(x, attend(q, lm.kt, lm.v)))


def layer_gate(x: torch.Tensor, idx: torch.Tensor, lm: LayerMemory,
               tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens ``idx`` (inputs ``x``) whose input moved more than ``tau`` (relative L2) from
    their last propagated input (``lm.x``): those the layer propagates."""
    ref = lm.x[idx]
    dev = (x - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-6)
    keep = dev > tau
    if bool(keep.all()):
        return x, idx
    return x[keep], idx[keep]


def dense_infer(vit: SparseViT, e: torch.Tensor, mem: list[LayerMemory],
                inplace: bool = False) -> torch.Tensor:
    """Dense pass at inference (batch 1, ``e`` (N, D)) that also (re)fills every layer memory.
    Returns the vision tokens (N, D): with ``inplace``, the memory's own tensor
    (``mem[-1].vis``, which the next pass over ``mem`` updates in place), else a copy."""
    idx = torch.arange(e.shape[0])
    if vit.__dict__.get(_TORCH_ONLY):
        vis, x, done = None, e[idx] + vit.pos[idx], 0
    else:
        vis, x, done = native_vit.encode(vit, mem, e, idx)
    if vis is None:
        for blk, lm in list(zip(vit.blocks, mem))[done:]:
            lm.x.copy_(x)
            x = dense_step(blk, x, lm)
            lm.out.copy_(x)
        vis = mem[-1].publish(vit.ln(x))
    return vis if inplace or not mem[-1].vis_ok else vis.clone()


def sparse_infer(vit: SparseViT, e: torch.Tensor, idx: torch.Tensor, mem: list[LayerMemory],
                 thresholds: list[float], inplace: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Recompute the tokens ``idx`` whose memory input changed; returns (vision tokens (N, D),
    tokens recomputed per layer). Layer ``l > 0`` propagates a token only if its input
    moved more than ``thresholds[l]`` (:func:`layer_gate`). The vision tokens: with ``inplace``,
    the memory's own tensor (``mem[-1].vis``, which the next pass over ``mem`` updates in place;
    what a streaming engine wants), else a copy."""
    blocks = vit._modules["blocks"]           # (not vit.blocks: Module.__getattr__ is slow)
    n = idx.numel()
    native = not vit.__dict__.get(_TORCH_ONLY)
    if n and native and max(thresholds[:len(blocks._modules)], default=0.0) <= 0:
        vis, x, done = native_vit.encode(vit, mem, e, idx)   # no gating: the pass in one call
        if vis is not None:
            return (vis if inplace else vis.clone()), [n] * done
    else:
        x, done = e[idx] + vit.pos[idx], 0
    counts = [int(idx.numel())] * done
    for li, (blk, lm) in list(enumerate(zip(blocks, mem)))[done:]:
        tau = thresholds[li] if li < len(thresholds) else 0.0
        if tau > 0 and len(idx):
            x, idx = layer_gate(x, idx, lm, tau)
        counts.append(int(idx.numel()))
        if not len(idx):
            continue
        y = native_vit.run_layer(blk, lm, x, idx) if native else None
        if y is not None:
            x = y
            continue
        lm.x.index_copy_(0, idx, x)
        x = sparse_step(blk, x, idx, lm)
        lm.out.index_copy_(0, idx, x)
    vis = mem[-1].publish(vit.ln(mem[-1].out))
    return (vis if inplace or not mem[-1].vis_ok else vis.clone()), counts
