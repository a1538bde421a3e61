"""Two stages of a streaming frame in one C call each, on the encoder's kernels
(``_native/sparsevit.c``: packed weights, the same GEMM, layer norm and softmax; :mod:`.native_vit`
loads the library):

* :class:`NativeFusion` (``svit_fusion``): the key/value rows of the changed tokens into the
  fusion's cache, the queries' cross-attention over all of them (the change mask as the scores'
  bias), the fusion's MLP and the vision head (:meth:`~edge_vlm.model.sttf.CaptionModel.
  gesture_logits` without a motion state). The cache is kept in the kernel's layout: ``z``
  (N, D), the keys transposed per head (H, D/H, N), the values (H, N, D/H).
* :class:`NativeEmbed` (``svit_embed``): the token memory update of an events-only frame (the
  changed patches embedded and gated into their tokens, the expired ones replaced).

Why: after the key/value cache (:mod:`.fusion_cache`) a sparse frame recomputes ~20 rows, and
what was left of these stages in PyTorch was two dozen small calls on a few rows whose fixed
costs were most of the stages' wall time.

It is the same arithmetic as :meth:`~edge_vlm.model.sttf.Fusion.keys_values`, ``attend``, the
vision head and :class:`~edge_vlm.model.sttf.PatchEmbed` (float32; the results agree to
rounding, not bit for bit: another summation order, the kernel's polynomial exp, the zero RGB
columns of an events-only patch skipped), checked by ``tests/test_native_stages.py`` against
PyTorch and by whole engines (labels, captions). PyTorch runs instead whenever the encoder's
kernel would not (:func:`~edge_vlm.inference.native_vit.load`, ``EDGE_VLM_NO_NATIVE_VIT=1``),
when ``EDGE_VLM_NO_NATIVE_STAGES=1`` is set, under autograd, with RGB frames (the embedding),
or when the shapes are not the kernel's (``dim``, ``dim/heads``, the token count, the MLP width
and a patch's event values multiples of 16, GELU).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edge_vlm.inference import native_vit
from edge_vlm.inference.native_vit import EmbedStruct, FusionStruct
from edge_vlm.model.sttf import DYN_BUCKET

__all__ = ["NativeEmbed", "NativeFusion", "State", "backend", "enabled"]


class State:
    """``enabled`` False: engines made afterwards run these stages in PyTorch (lock-step A/B in
    one process, ``scripts/native_convs_ab.py --kernel stages``)."""

    enabled = True


def enabled() -> bool:
    """Whether these stages may run natively in this process (the encoder's library is loaded,
    ``EDGE_VLM_NO_NATIVE_STAGES`` is not set, :class:`State` allows it). Engines ask when they
    make their native views (their first frame, a weight change)."""
    if not State.enabled or os.environ.get("EDGE_VLM_NO_NATIVE_STAGES", "") not in ("", "0"):
        return False
    return native_vit.load() is not None


def backend() -> str:
    """``"native"`` or ``"torch"``: the path of these stages in inference (where the shapes are
    the kernel's: the shipped checkpoints' are)."""
    return "native" if enabled() else "torch"


def _sources(model) -> tuple:
    """The parameters the kernel reads, in the order of ``FusionStruct.WEIGHTS`` and ``HEAD``
    (unpacked): the fusion's, then the vision head's."""
    f, ln, fc = model.fusion, model.gesture[0], model.gesture[1]
    a, fc1, fc2 = f.attn, f.mlp[0], f.mlp[2]
    return (f.queries, f.age.weight, f.norm_kv.weight, f.norm_kv.bias,
            a.kv.weight, a.kv.bias, a.q.weight, a.q.bias, a.proj.weight, a.proj.bias,
            f.norm2.weight, f.norm2.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
            ln.weight, ln.bias, fc.weight, fc.bias)


def _applies(model, ntok: int) -> bool:
    f = model.fusion
    d, h = f.queries.shape[1], f.attn.heads
    hid = f.mlp[0].weight.shape[0]
    return (d % 16 == 0 and h > 0 and d % h == 0 and (d // h) % 16 == 0 and ntok % 16 == 0
            and hid % 16 == 0 and isinstance(f.mlp[1], torch.nn.GELU)
            and f.mlp[1].approximate == "none" and len(model.gesture) == 2
            and isinstance(model.gesture[0], torch.nn.LayerNorm)
            and isinstance(model.gesture[1], torch.nn.Linear)
            and all(t is not None and t.dtype == torch.float32 for t in _sources(model)))


@dataclass(slots=True)
class NativeOutput:
    """One frame of :meth:`NativeFusion.run`."""

    fused: torch.Tensor       # (1, Q, D) fused queries
    vision: torch.Tensor      # (1, K) the vision head's logits


@dataclass(slots=True)
class NativeFusion:
    """One stream's fusion cache in the kernel's layout, with the packed weights it was made for
    (:meth:`stale` says when they changed)."""

    struct: FusionStruct
    versions: tuple           # the sources' version counters when packed
    sources: tuple
    tensors: tuple            # the kernel's weight tensors (kept alive: the struct points in)
    z: torch.Tensor           # (N, D) vision tokens + age embedding: the cache's own tensor
    kt: torch.Tensor
    v: torch.Tensor

    @classmethod
    def build(cls, model, ntok: int) -> NativeFusion | None:
        """The kernel's view of the fusion and vision head of ``model`` (a CaptionModel) with an
        empty cache of ``ntok`` tokens; None when the kernel does not apply (PyTorch then)."""
        if not enabled() or not _applies(model, ntok):
            return None
        fusion = model.fusion
        src = _sources(model)
        with torch.no_grad():
            ts = tuple(native_vit.pack(t) if i in (4, 8, 12, 14) else t.detach().contiguous()
                       for i, t in enumerate(src))
            # the queries' projection is constant: made once here, not per frame
            q = F.linear(src[0], src[6], src[7]).contiguous()
            ts = ts[:6] + (q,) + ts[8:]
        nq, d = fusion.queries.shape
        h = fusion.attn.heads
        z, kt, v = torch.zeros(ntok, d), torch.zeros(h, d // h, ntok), torch.zeros(h, ntok, d // h)
        st = FusionStruct(d=d, heads=h, ntok=ntok, nq=nq, hid=int(src[12].shape[0]),
                          nage=int(src[1].shape[0]), eps_kv=float(fusion.norm_kv.eps),
                          eps2=float(fusion.norm2.eps), ncls=int(src[-1].shape[0]),
                          dyn_bucket=DYN_BUCKET, eps_g=float(model.gesture[0].eps))
        names = FusionStruct.WEIGHTS + FusionStruct.HEAD + FusionStruct.CACHE
        for name, t in zip(names, ts + (z, kt, v)):
            setattr(st, name, t.data_ptr())
        return cls(st, tuple(t._version for t in src), src, ts, z, kt, v)

    def stale(self) -> bool:
        """The weights were updated in place since :meth:`build` (``load_state_dict``, an
        optimiser step: their version counters moved). Parameters replaced by other tensor
        objects are not seen here (a new engine is made for a new model)."""
        return tuple(t._version for t in self.sources) != self.versions

    def keys_values(self) -> torch.Tensor:
        """The cached keys and values as :meth:`~edge_vlm.model.sttf.Fusion.keys_values` lays
        them out, (N, 2D): a copy."""
        h, dh, n = self.kt.shape
        return torch.cat([self.kt.permute(2, 0, 1).reshape(n, h * dh),
                          self.v.permute(1, 0, 2).reshape(n, h * dh)], dim=1)

    def run(self, rows: np.ndarray, vis: torch.Tensor, bucket: torch.Tensor,
            change: np.ndarray, strength: float) -> NativeOutput | None:
        """Recompute the cache rows ``rows`` (int64 indices) from ``vis`` (N, D) and ``bucket``
        (N,), then the fused queries with the change mask ``change`` (bool, N) and the vision
        head's logits; None when the kernel refused (nothing written)."""
        lib = native_vit.load()
        out = torch.empty(1, self.struct.nq, self.struct.d)
        logits = torch.empty(1, self.struct.ncls)
        vc = vis if vis.is_contiguous() else vis.contiguous()
        ch = np.ascontiguousarray(change, dtype=np.bool_)
        ii = np.ascontiguousarray(rows, dtype=np.int64)
        bk = bucket if bucket.dtype == torch.int64 and bucket.is_contiguous() \
            else bucket.to(torch.int64).contiguous()
        rc = lib.svit_fusion(ctypes.byref(self.struct), len(ii), ii.ctypes.data, vc.data_ptr(),
                             bk.data_ptr(), ch.ctypes.data, strength, out.data_ptr(),
                             logits.data_ptr())
        return NativeOutput(out, logits) if rc == 0 else None



def _embed_sources(embed) -> tuple:
    """The embedding's parameters the kernel reads (fc1 whole: the kernel reads its event
    columns), in the order of ``EmbedStruct.WEIGHTS``."""
    return (embed.fc1.weight, embed.fc1.bias, embed.fc2.weight, embed.fc2.bias,
            embed.gate.weight, embed.gate.bias)


@dataclass(slots=True)
class NativeEmbed:
    """The kernel's view of a :class:`~edge_vlm.model.sttf.PatchEmbed` (packed weights)."""

    struct: EmbedStruct
    versions: tuple           # the sources' version counters when packed
    sources: tuple
    tensors: tuple            # the kernel's weight tensors (kept alive: the struct points in)
    ntok: int

    @classmethod
    def build(cls, embed, cfg) -> NativeEmbed | None:
        """The kernel's view of ``embed`` for frames of ``cfg`` (a ModelConfig); None when the
        kernel does not apply (PyTorch then)."""
        k = cfg.event_channels * cfg.patch * cfg.patch
        src = _embed_sources(embed)
        if (not enabled() or cfg.dim % 16 or k % 16 or src[0].shape != (cfg.dim, cfg.patch_dim)
                or any(t.dtype != torch.float32 for t in src)):
            return None
        with torch.no_grad():
            ts = (native_vit.pack(src[0][:, :k]), src[1].detach().contiguous(),
                  native_vit.pack(src[2]), src[3].detach().contiguous(),
                  native_vit.pack(src[4]), src[5].detach().contiguous())
        st = EmbedStruct(d=cfg.dim, ch=cfg.event_channels, patch=cfg.patch,
                         h=cfg.grid * cfg.patch, w=cfg.grid * cfg.patch)
        for name, t in zip(EmbedStruct.WEIGHTS, ts):
            setattr(st, name, t.data_ptr())
        return cls(st, tuple(t._version for t in src), src, ts, cfg.num_tokens)

    def stale(self) -> bool:
        """The weights were updated in place since :meth:`build` (see NativeFusion.stale)."""
        return tuple(t._version for t in self.sources) != self.versions

    def run(self, e: torch.Tensor, hist: np.ndarray, idx: np.ndarray, on: np.ndarray,
            merge: np.ndarray) -> bool:
        """Into ``e`` (N, D, updated in place): the tokens ``idx`` from their patches of ``hist``
        (C, H, W) event counts, as log1p counts where ``on`` (else an empty patch), gated into
        the token where ``merge`` (else replacing it). False when the kernel refused (nothing
        written)."""
        lib = native_vit.load()
        ii = np.ascontiguousarray(idx, dtype=np.int64)
        o = np.ascontiguousarray(on, dtype=np.uint8)
        m = np.ascontiguousarray(merge, dtype=np.uint8)
        h = np.ascontiguousarray(hist, dtype=np.float32)
        if (e.dtype != torch.float32 or not e.is_contiguous() or not len(ii) == len(o) == len(m)
                or h.shape != (self.struct.ch, self.struct.h, self.struct.w)):
            return False
        rc = lib.svit_embed(ctypes.byref(self.struct), len(ii), ii.ctypes.data, o.ctypes.data,
                            m.ctypes.data, h.ctypes.data, e.data_ptr(), self.ntok)
        return rc == 0
