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

The output equals the full recompute (:meth:`~edge_vlm.model.sttf.CaptionModel.fuse`) up to
float rounding of matrix products of different row counts
(``tests/test_fusion_cache.py``: max abs difference <= 1e-5 over recorded sequences).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_vlm.model.sttf import CaptionModel


@dataclass(slots=True)
class FusedFrame:
    """The fusion of one frame (:meth:`FusionCache.fuse`)."""

    fused: torch.Tensor     # fused queries (1, Q, D)
    z: torch.Tensor         # vision tokens with their age embedding (1, N, D): the cache's
    #                         own tensor, updated in place by the next frame (clone to keep)
    recomputed: int         # tokens whose keys/values were recomputed this frame


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

    def fuse(self, vis: torch.Tensor, bucket: torch.Tensor, change: torch.Tensor) -> FusedFrame:
        """``vis`` (N, D) vision tokens, ``bucket`` (N,) age buckets, ``change`` (N,) change mask
        -> the frame's fusion, as :meth:`CaptionModel.fuse` computes it. Inference: call it
        without autograd (the engine's ``perceive`` runs under ``torch.no_grad``)."""
        f = self.model.fusion
        rows = self._rows(vis, bucket)
        if rows is None:
            self.vis, self.bucket = vis.detach().clone(), bucket.clone()
            self.z = f.tokens(vis, bucket)
            self.kv = f.keys_values(self.z)
            n = int(vis.shape[0])
        else:
            n = int(rows.numel())
            if n:
                v, b = vis.index_select(0, rows), bucket.index_select(0, rows)
                self.vis.index_copy_(0, rows, v)
                self.bucket.index_copy_(0, rows, b)
                z = f.tokens(v, b)
                self.z.index_copy_(0, rows, z)
                self.kv.index_copy_(0, rows, f.keys_values(z))
        fused = f.attend(self.kv[None], self.model.fusion_bias(change[None], self.kv.dtype))
        return FusedFrame(fused, self.z[None], n)
