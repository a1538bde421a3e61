"""The caption decoder's teacher-forced pass through the sparse ViT's fused block kernel
(``_native/sparsevit.c``, ``svit_layer_causal``): :func:`decoder_start` does what
:meth:`~edge_vlm.model.sttf.MicroGPT.start` does, one C call per decoder block.

Why: a grounded caption is verified in one teacher-forced pass over the fused prefix and the
draft (about 20 positions, :func:`~edge_vlm.model.decoding.decode_greedy`), and through PyTorch
that pass is two dozen small calls whose fixed costs are most of the decoder stage. A decoder
block is the encoder's :class:`~edge_vlm.model.layers.Block` with a prefix-causal attention
mask, so the encoder's kernel runs it with that mask (every position a token of a small layer
memory of this module's own; the positions no row may see hold zeros or finite values of
earlier passes and get weight 0).

The result agrees with PyTorch to float rounding, not bit for bit (another summation order,
the kernel's polynomial exp), as the encoder's kernel: ``tests/test_native_decoder.py`` bounds
the logits' difference and checks that engines write the same captions both ways. PyTorch runs
instead whenever the encoder's kernel would not (:func:`~edge_vlm.inference.native_vit.load`,
``EDGE_VLM_NO_NATIVE_VIT=1``), under autograd, for a batch other than 1, or when the shapes are
not the kernel's. The pass's KV cache stays in those memories (:class:`NativeKV`): the
single-token steps after a disagreeing draft run on the kernel too, and PyTorch's per-block
caches are made only when a step cannot; the pass's last block computes only the rows whose
logits are read (the prefix gets its keys and values only).
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from edge_vlm.inference import native_vit
from edge_vlm.inference.memory import LayerMemory
from edge_vlm.model.decoding import StepCache
from edge_vlm.model.sttf import MicroGPT

__all__ = ["decoder_start", "backend", "State", "NativeKV"]


class State:
    """``enabled`` False: :func:`decoder_start` runs PyTorch (lock-step A/B in one process,
    ``scripts/native_convs_ab.py --kernel decoder``)."""

    enabled = True


def backend() -> str:
    """``"native"`` or ``"torch"``: the path of the decoder's teacher-forced pass in inference."""
    return "native" if State.enabled and native_vit.load() is not None else "torch"


_LOCAL_LOCK = threading.Lock()


def _local(dec: MicroGPT) -> threading.local:
    """The decoder's per-thread native state (its layer memories, the pass counter): two
    threads decoding with one model (the kernel runs without the GIL) never share memories."""
    loc = dec.__dict__.get("_native_local")
    if loc is None:
        with _LOCAL_LOCK:
            loc = dec.__dict__.get("_native_local")
            if loc is None:
                loc = dec._native_local = threading.local()
    return loc


def _memories(dec: MicroGPT) -> list[LayerMemory]:
    """One zeroed layer memory per decoder block, as many tokens as positions (padded to 16),
    cached on the decoder (per thread)."""
    loc = _local(dec)
    mems = getattr(loc, "mems", None)
    n, d = dec.pos.shape
    cap = -(-n // 16) * 16
    if mems is None or len(mems) != len(dec.blocks) or mems[0].x.shape != (cap, d):
        mems = loc.mems = [LayerMemory(cap, d, blk.heads) for blk in dec.blocks]
    return mems


class NativeKV(StepCache):
    """The KV cache of a native teacher-forced pass: the keys and values stay where the kernel
    wrote them, in the decoder's layer memories (:func:`_memories`), and a single-token
    :meth:`step` runs each block through the kernel for that one position (it writes its own
    key/value there and attends to the positions before it; those after it, stale values of
    the pass, get weight 0). :meth:`trim` therefore only moves the length. PyTorch's per-block
    dicts (:meth:`torch_caches`) are made only when a step cannot run on the kernel.

    Valid until the next pass over the same decoder in the same thread (which rewrites the
    memories): a stale cache raises instead of reading another pass's keys."""

    def __init__(self, dec: MicroGPT, mems: list[LayerMemory], length: int):
        self.dec, self.mems, self.length = dec, mems, length
        self.generation = _next_generation(dec)
        self.fallback: list[dict] | None = None

    def _check(self) -> None:
        if getattr(_local(self.dec), "generation", None) != self.generation:
            raise RuntimeError("a decoder KV cache used after another pass over its decoder")

    def trim(self, n: int) -> None:
        if self.fallback is not None:
            for c in self.fallback:
                c["k"], c["v"] = c["k"][:, :, :n], c["v"][:, :, :n]
        self.length = min(self.length, n)

    def torch_caches(self) -> list[dict]:
        """PyTorch's per-block dicts of the first :attr:`length` positions."""
        self._check()
        n = self.length
        return [{"k": lm.kt[:, :, :n].transpose(1, 2).contiguous()[None],
                 "v": lm.v[:, :n].clone()[None]} for lm in self.mems]

    def step(self, token: int, position: int) -> torch.Tensor:
        dec = self.dec
        if self.fallback is None:
            self._check()
            if position != self.length:
                raise ValueError(f"a step at position {position} of a cache of {self.length}")
            h = (dec.tok.weight[token] + dec.pos[position])[None]
            idx = torch.tensor([position])
            for blk, lm in zip(dec.blocks, self.mems):
                out = native_vit.run_layer(blk, lm, h, idx, causal_from=dec.prefix_len)
                if out is None:           # the kernel refused: PyTorch from here on
                    self.fallback = self.torch_caches()
                    break
                h = out
            else:
                self.length += 1
                ln = dec.ln
                y = F.layer_norm(h, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
                return F.linear(y, dec.head.weight)
        return dec.step(torch.tensor([[token]]), position, self.fallback)


def _next_generation(dec: MicroGPT) -> int:
    loc = _local(dec)
    loc.generation = g = getattr(loc, "generation", 0) + 1
    return g


def decoder_start(dec: MicroGPT, prefix: torch.Tensor, first: torch.Tensor,
                  layers: int | None = None,
                  all_logits: bool = False) -> tuple[torch.Tensor, list[dict] | NativeKV]:
    """:meth:`MicroGPT.start` (same arguments and results: the next-token logits, or with
    ``all_logits`` those after each token of ``first``, and the KV cache of the blocks run)
    through the native kernel where it applies, else :meth:`MicroGPT.start` itself. The
    native pass returns its cache as a :class:`NativeKV`."""
    if (not State.enabled or native_vit.load() is None or torch.is_grad_enabled()
            or prefix.shape[0] != 1
            or prefix.dtype != torch.float32):
        return dec.start(prefix, first, layers, all_logits)
    x = torch.cat([prefix, F.embedding(first, dec.tok.weight)], dim=1)
    s = x.shape[1]
    h = (x + dec.pos[:s])[0].contiguous()
    idx = torch.arange(s)
    blocks = dec.blocks[:layers]
    mems = _memories(dec)[:len(blocks)]
    # the last block computes the rows whose logits are read (the positions of ``first``, or
    # the last one); the rows before them need only their keys and values there
    kv_only = dec.prefix_len if all_logits else s - 1
    for i, (blk, lm) in enumerate(zip(blocks, mems)):
        out = native_vit.run_layer(blk, lm, h, idx, causal_from=dec.prefix_len,
                                   kv_only=kv_only if i == len(blocks) - 1 else 0)
        if out is None:
            return dec.start(prefix, first, layers, all_logits)
        h = out
    ln = dec.ln
    y = F.layer_norm(h[dec.prefix_len:] if all_logits else h[-1:], ln.normalized_shape,
                     ln.weight, ln.bias, ln.eps)
    logits = F.linear(y, dec.head.weight)
    return (logits[None] if all_logits else logits), NativeKV(dec, mems, s)
