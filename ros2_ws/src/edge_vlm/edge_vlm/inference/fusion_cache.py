"""The fusion's vision side, cached across frames: STTF applied downstream of the encoder.

The fusion (:class:`~edge_vlm.model.sttf.Fusion`) lets a few learned queries attend to every
vision token plus its age embedding. Its per-token work -- ``z = vis + age(bucket)``, the
key/value norm and projection (:meth:`~edge_vlm.model.sttf.Fusion.keys_values`) -- depends on
the token's own row only, so a streaming engine keeps ``z`` and the keys/values of every token
and recomputes only the rows whose vision token or age bucket changed since the last frame
(found by comparing them with the cached inputs: exact whatever the encoder did, a refresh
included). The attention of the queries over all N cached keys/values and the MLP on the
queries run every frame (they read every token and the change-mask bias): in FLOPs about a
fifth of the full key/value projection, but at this model's size (D = 128, Q = 8, batch 1,
one CPU thread) they are a dozen small calls whose fixed cost dominates the stage's wall time,
so the cache saves the FLOPs of the unchanged rows and only part of the stage's time.

Where the encoder's native kernel runs (:mod:`.native_stages`), the cache lives in the kernel's
layout and the whole stage (the changed rows, the attention, the MLP, the vision head's logits)
is one C call.

The output equals the full recompute (:meth:`~edge_vlm.model.sttf.CaptionModel.fuse`) up to
float rounding of matrix products of different row counts
(``tests/test_fusion_cache.py``: max abs difference <= 1e-5 over recorded sequences; the native
kernel: ``tests/test_native_stages.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_vlm.inference.native_stages import NativeFusion
from edge_vlm.model.sttf import CaptionModel


@dataclass(slots=True)
class FusedFrame:
    """The fusion of one frame (:meth:`FusionCache.fuse`)."""

    fused: torch.Tensor     # fused queries (1, Q, D)
    z: torch.Tensor         # vision tokens with their age embedding (1, N, D): the cache's
    #                         own tensor, updated in place by the next frame (clone to keep)
    recomputed: int         # tokens whose keys/values were recomputed this frame
    vision: torch.Tensor | None = None  # (1, K) the vision head's logits (the native kernel's)


class FusionCache:
    """Per-token keys/values of the fusion over a stream (batch 1, inference only)."""

    def __init__(self, model: CaptionModel):
        self.model = model
        self.reset()

    def reset(self) -> None:
        """Forget the cache (the next frame recomputes every token)."""
        self.vis: torch.Tensor | None = None        # the vision tokens the rows were made of
        self.bucket: torch.Tensor | None = None     # ... and their age buckets
        self.z: torch.Tensor | None = None          # vis + age embedding (N, D)
        self.kv: torch.Tensor | None = None         # keys and values (N, 2D)
        self._weights: tuple = ()
        # the native kernel's cache (None: not made yet, False: PyTorch in this cache)
        self.native: NativeFusion | None | bool = None

    def _weights_version(self) -> tuple:
        """Identity and version of the weights the cached rows depend on (a changed weight,
        e.g. a loaded state dict, invalidates every row)."""
        f = self.model.fusion
        ws = (f.age.weight, f.norm_kv.weight, f.norm_kv.bias, f.attn.kv.weight, f.attn.kv.bias)
        return tuple((id(w), w._version) for w in ws)

    def _rows(self, vis: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor | None:
        """Indices of the rows to recompute, None for all of them. (Compared in numpy: at
        these sizes torch's boolean reductions cost several times more.)"""
        version = self._weights_version()
        if self.vis is None or self.vis.shape != vis.shape or version != self._weights:
            self._weights = version
            return None
        moved = (vis.numpy() != self.vis.numpy()).any(axis=1)
        moved |= bucket.numpy() != self.bucket.numpy()
        return torch.from_numpy(np.flatnonzero(moved))

    def _native(self, rebuild: bool) -> NativeFusion | None:
        """The native cache for this frame (made anew when ``rebuild``: every row is then
        recomputed); None: PyTorch."""
        if self.native is False:
            return None
        if rebuild:
            self.native = NativeFusion.build(self.model, self.model.cfg.num_tokens) or False
        return self.native or None

    def fuse(self, vis: torch.Tensor, bucket: torch.Tensor, change: torch.Tensor,
             every_row: bool = False) -> FusedFrame:
        """``vis`` (N, D) vision tokens, ``bucket`` (N,) age buckets, ``change`` (N,) change mask
        -> the frame's fusion, as :meth:`CaptionModel.fuse` computes it. Inference: call it
        without autograd (the engine's ``perceive`` runs under ``torch.no_grad``; with autograd
        on, the PyTorch path runs). ``every_row``: recompute every token's row (the dense
        baseline: no cache, the same kernels)."""
        rows = None if every_row else self._rows(vis, bucket)
        native = (self.native is not False and vis.dtype == torch.float32
                  and not torch.is_grad_enabled())
        rebuild = native and (self.native is None or self.native.stale())
        if rebuild:
            rows = None             # no native cache yet, or its weights changed: every row
        elif not native and self.native:    # PyTorch this frame: it goes on from the native
            self.z, self.kv = self.native.z.clone(), self.native.keys_values()   # cache, which
            self.native = None      # then misses this frame (made anew by the next native one)
        if every_row:
            self.vis = None         # (no cache kept: a later call recomputes every row too)
        elif rows is None:
            self.vis, self.bucket = vis.detach().clone(), bucket.clone()
        elif rows.numel():
            self.vis.index_copy_(0, rows, vis.index_select(0, rows))
            self.bucket.index_copy_(0, rows, bucket.index_select(0, rows))
        nat = self._native(rebuild) if native else None
        if nat is not None:
            idx = np.arange(vis.shape[0]) if rows is None else rows.numpy()
            out = nat.run(idx, vis, bucket, change.numpy(), float(self.model.mask_strength))
            if out is not None:
                self.z, self.kv = nat.z, None   # (PyTorch's keys/values are not kept meanwhile)
                return FusedFrame(out.fused, nat.z[None], len(idx), out.vision)
            self.native, rows = False, None     # refused: PyTorch from now on, every row anew
        return self._torch(vis, bucket, change, rows)

    def _torch(self, vis: torch.Tensor, bucket: torch.Tensor, change: torch.Tensor,
               rows: torch.Tensor | None) -> FusedFrame:
        """The PyTorch path of :meth:`fuse` (``self.vis`` / ``self.bucket`` already updated)."""
        f = self.model.fusion
        if rows is None or self.kv is None:
            self.z = f.tokens(vis, bucket)
            self.kv = f.keys_values(self.z)
            n = int(vis.shape[0])
        else:
            n = int(rows.numel())
            if n:
                z = f.tokens(vis.index_select(0, rows), bucket.index_select(0, rows))
                self.z.index_copy_(0, rows, z)
                self.kv.index_copy_(0, rows, f.keys_values(z))
        fused = f.attend(self.kv[None], self.model.fusion_bias(change[None], self.kv.dtype))
        return FusedFrame(fused, self.z[None], n)
