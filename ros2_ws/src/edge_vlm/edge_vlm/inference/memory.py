"""The streaming encoder's state: one memory per encoder layer (inputs, keys, values, outputs)."""
from __future__ import annotations

import operator

import torch

from edge_vlm.inference import native_vit
from edge_vlm.model.sttf import SparseViT


class LayerMemory:
    """One encoder layer's memory: last propagated input, keys (stored transposed, (H, D/H, N):
    the layout the native kernel reads), values and output per token. Written by the inference
    passes only (:func:`~edge_vlm.inference.vit.dense_infer` / ``sparse_infer``)."""

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


def new_memory(vit: SparseViT) -> list[LayerMemory]:
    """A fresh (zero) memory for every layer of ``vit``."""
    n, d = vit.pos.shape
    return [LayerMemory(n, d, blk.heads) for blk in vit.blocks]
