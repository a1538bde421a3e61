"""The streaming encoder passes: a SparseViT over its layer memories, batch 1.

:func:`dense_infer` recomputes every token and (re)fills every layer memory; :func:`sparse_infer`
recomputes only the tokens whose memory input changed: they attend to every token (their fresh
keys/values plus the cached ones of the rest), and layer ``l > 0`` propagates a token only while
its input deviates from the *last propagated* value by more than a per-layer threshold
(:func:`layer_gate`, eventful-transformer style), so skipped small changes accumulate instead
of drifting. A pass runs through the fused native kernel (:mod:`.native_vit`) or on the PyTorch
steps :func:`dense_step` / :func:`sparse_step`, with the same results (to float32 rounding): per
ViT the faster of the two on this CPU (:func:`backend_choice`, measured once per ViT shape and
process, kept on disk across processes: :mod:`.backend_cache`), unless :func:`set_native`
forces one.
"""
from __future__ import annotations

import time

import torch

from edge_vlm.inference import backend_cache, native_vit
from edge_vlm.inference.backend_cache import BackendChoice
from edge_vlm.inference.memory import LayerMemory, new_memory
from edge_vlm.model.layers import Block, attend
from edge_vlm.model.sttf import SparseViT

#: ``vit.__dict__`` keys: :func:`set_native`'s switch (absent or None: :func:`backend_choice`),
#: and the choice (read with one dict lookup per pass)
_MODE, _CHOICE = "_native_mode", "_native_choice"
#: active tokens of the calibration's sparse pass (a typical sparse frame has 10-30)
CALIBRATION_TOKENS = 16


#: choices made in this process, by ViT shape (:func:`_shape_key`)
_choices: dict[tuple, BackendChoice] = {}


def set_native(vit: SparseViT, on: bool | None) -> None:
    """Run ``vit``'s passes through the native kernel when it is loaded (``True``), always on
    PyTorch calls (``False``: the same results; benchmarks and tests compare), or on the faster
    of the two on this CPU (``None``, the default: :func:`backend_choice`)."""
    vit.__dict__[_MODE] = on


def native_mode(vit: SparseViT) -> bool | None:
    """What :func:`set_native` set for ``vit`` (None: the per-CPU choice)."""
    return vit.__dict__.get(_MODE)


def native_on(vit: SparseViT, dense: bool = False) -> bool:
    """Whether ``vit``'s sparse (or ``dense``) passes try the native kernel: :func:`set_native`'s
    setting, else :func:`backend_choice`'s."""
    mode = vit.__dict__.get(_MODE)
    if mode is not None:
        return mode
    choice = vit.__dict__.get(_CHOICE) or backend_choice(vit)
    return choice.dense if dense else choice.sparse


def _shape_key(vit: SparseViT) -> tuple:
    blocks = list(vit.blocks)
    return (type(vit).__name__, tuple(vit.pos.shape), native_vit.isa(),
            tuple((blk.heads, int(blk.mlp_params()[0].shape[0]),
                   getattr(blk.act_fn, "__name__", type(blk.act_fn).__name__))
                  for blk in blocks))


def _cache_fields(key: tuple) -> dict:
    """What the on-disk cache keys a choice by (:mod:`.backend_cache` adds the CPU model)."""
    return {"shape": key, "isa": native_vit.isa(), "build": native_vit.build_id(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "calibration_tokens": CALIBRATION_TOKENS}


def backend_choice(vit: SparseViT) -> BackendChoice:
    """The per-CPU choice of ``vit``'s pass backends, made by :func:`calibrate` once per ViT
    shape and process (at model load: :func:`~edge_vlm.inference.factory.load_model`; else at
    the first pass), then kept on ``vit`` (an ANC budget change keeps it). A choice measured by
    an earlier process on this CPU, kernel build, torch and thread count is read from the
    on-disk cache instead (:mod:`.backend_cache`; ``EDGE_VLM_BACKEND_CACHE=0``: off). Without
    the native kernel: PyTorch for both."""
    choice = vit.__dict__.get(_CHOICE)
    if choice is None:
        if native_vit.load() is None:
            choice = BackendChoice(False, False)
        else:
            key = _shape_key(vit)
            choice = _choices.get(key)
            if choice is None:
                fields = _cache_fields(key)
                disk_key = backend_cache.entry_key(fields)
                choice = backend_cache.lookup(disk_key)
                if choice is None:
                    choice = calibrate(vit)
                    backend_cache.store(disk_key, choice, fields)
                _choices[key] = choice
        vit.__dict__[_CHOICE] = choice
    return choice


@torch.no_grad()
def calibrate(vit: SparseViT, rounds: int = 2) -> BackendChoice:
    """Time a dense pass and 3 sparse passes over :data:`CALIBRATION_TOKENS` tokens on both
    backends (interleaved, ``rounds`` rounds after a warm-up round, the best of each: robust to a
    busy machine) on a scratch memory of ``vit`` and choose the faster per pass kind (native on
    a tie). ``vit``'s own memories and setting are untouched. The shipped model's three branches
    take about a second together on this project's 2-core machines."""
    n_all, d = vit.pos.shape
    g = torch.Generator().manual_seed(0)
    e = torch.randn(n_all, d, generator=g)
    idx = torch.randperm(n_all, generator=g)[:min(CALIBRATION_TOKENS, n_all)].sort().values
    mems = {nat: new_memory(vit) for nat in (True, False)}
    before = vit.__dict__.get(_MODE)
    best: dict[str, float] = {}
    try:
        for r in range(rounds + 1):
            for nat in ((True, False) if r % 2 == 0 else (False, True)):
                vit.__dict__[_MODE] = nat
                name = "native" if nat else "torch"
                runs = (("dense", lambda: dense_infer(vit, e, mems[nat], inplace=True)),
                        ("sparse", lambda: sparse_infer(vit, e, idx, mems[nat], [], inplace=True)))
                for kind, fn in runs:
                    for _ in range(1 if kind == "dense" else 3):
                        t = time.thread_time()
                        fn()
                        ms = (time.thread_time() - t) * 1e3
                        if r:                                    # round 0: the warm-up
                            k = f"{kind}_{name}"
                            best[k] = min(best.get(k, ms), ms)
    finally:
        vit.__dict__[_MODE] = before
    return BackendChoice(dense=best["dense_native"] <= best["dense_torch"],
                         sparse=best["sparse_native"] <= best["sparse_torch"],
                         isa=native_vit.isa(), timings_ms=best)


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
    mode = vit.__dict__.get(_MODE)
    if not (mode if mode is not None else (vit.__dict__.get(_CHOICE)
                                           or backend_choice(vit)).dense):
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
    native = vit.__dict__.get(_MODE)
    if native is None:
        native = (vit.__dict__.get(_CHOICE) or backend_choice(vit)).sparse
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
