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
not the kernel's; the KV caches it returns are PyTorch's layout, so the single-token steps
after the pass stay PyTorch's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from edge_vlm.inference import native_vit
from edge_vlm.inference.memory import LayerMemory
from edge_vlm.model.sttf import MicroGPT

__all__ = ["decoder_start", "backend", "State"]


class State:
    """``enabled`` False: :func:`decoder_start` runs PyTorch (lock-step A/B in one process,
    ``scripts/native_convs_ab.py --kernel decoder``)."""

    enabled = True


def backend() -> str:
    """``"native"`` or ``"torch"``: the path of the decoder's teacher-forced pass in inference."""
    return "native" if State.enabled and native_vit.load() is not None else "torch"


def _memories(dec: MicroGPT) -> list[LayerMemory]:
    """One zeroed layer memory per decoder block, as many tokens as positions (padded to 16),
    cached on the decoder."""
    mems = dec.__dict__.get("_native_memories")
    n, d = dec.pos.shape
    cap = -(-n // 16) * 16
    if mems is None or len(mems) != len(dec.blocks) or mems[0].x.shape != (cap, d):
        mems = [LayerMemory(cap, d, blk.heads) for blk in dec.blocks]
        dec._native_memories = mems
    return mems


def decoder_start(dec: MicroGPT, prefix: torch.Tensor, first: torch.Tensor,
                  layers: int | None = None,
                  all_logits: bool = False) -> tuple[torch.Tensor, list[dict]]:
    """:meth:`MicroGPT.start` (same arguments and results: the next-token logits, or with
    ``all_logits`` those after each token of ``first``, and the KV caches of the blocks run)
    through the native kernel where it applies, else :meth:`MicroGPT.start` itself."""
    if (not State.enabled or native_vit.load() is None or torch.is_grad_enabled()
            or prefix.shape[0] != 1
            or prefix.dtype != torch.float32):
        return dec.start(prefix, first, layers, all_logits)
    x = torch.cat([prefix, F.embedding(first, dec.tok.weight)], dim=1)
    s = x.shape[1]
    h = (x + dec.pos[:s])[0].contiguous()
    idx = torch.arange(s)
    caches = []
    for blk, lm in zip(dec.blocks[:layers], _memories(dec)):
        out = native_vit.run_layer(blk, lm, h, idx, causal_from=dec.prefix_len)
        if out is None:
            return dec.start(prefix, first, layers, all_logits)
        caches.append({"k": lm.kt[:, :, :s].transpose(1, 2).contiguous()[None],
                       "v": lm.v[:, :s].clone()[None]})
        h = out
    ln = dec.ln
    y = F.layer_norm(h[dec.prefix_len:] if all_logits else h[-1:], ln.normalized_shape,
                     ln.weight, ln.bias, ln.eps)
    logits = F.linear(y, dec.head.weight)
    return (logits[None] if all_logits else logits), caches
