"""Peer token-reduction methods on the streaming engine, for the peers benchmark
(``edge-vlm bench all``: :mod:`edge_vlm.bench.peers`). Each one replaces the encoder stage of an
engine built as the node builds it (:func:`install_peer`); the change mask, the token memory,
fusion, heads, grounding and decoder stay the engine's own, so rows differ by the encoder only.

* **ToMe** (Bolya et al., "Token Merging: Your ViT but Faster"): in every block, after the
  attention, bipartite soft matching merges ``r`` tokens (the even tokens' most similar odd
  partners by cosine similarity of the keys, averaged over heads; size-weighted averages);
  attention is proportional (``+ log size`` on the scores). Every frame runs the whole pass (no
  memory). For our streaming model the merged tokens are *unmerged* after the final norm
  (copied back to every source token), so fusion sees all N tokens.
* **Eventful top-k** (Dutson et al., "Eventful Transformers"): a gate before every block
  recomputes exactly ``k`` tokens per frame, the ``k`` whose block input moved most (L2) from
  the *last propagated* input of that block; the others reuse the block's cached output, and the
  gate state (the last propagated input) changes only for recomputed tokens, so skipped changes
  accumulate. Recomputed tokens attend to every token (fresh plus cached keys/values, as in
  STTF's sparse step). Simplification: one gate per block (the paper also gates the MLP apart).

Exactness: ToMe with ``r = 0`` and top-k with ``k >= N`` are the dense pass, bit for bit on the
PyTorch backend (``tests/test_peers.py``). FLOPs: :func:`tome_vit_flops`, and for top-k the
model's :func:`~edge_vlm.model.flops.vit_flops` (``k`` tokens per layer); both checked against
``torch.utils.flop_counter`` in the tests.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from edge_vlm.inference import native_vit
from edge_vlm.inference.anc_engine import AncStreamingCaptioner
from edge_vlm.inference.engine import EncoderOutput, StreamingCaptioner
from edge_vlm.inference.memory import LayerMemory
from edge_vlm.inference.vit import dense_infer, native_on, sparse_step
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.flops import embed_flops, linear
from edge_vlm.model.sttf import SparseViT

__all__ = ["METHODS", "MergeStep", "Merged", "PeerPass", "TomeEncoder", "TopkEncoder",
           "install_peer", "tome_infer", "tome_schedule", "tome_vit_flops", "topk_infer"]

#: the peer methods :func:`install_peer` knows, and their setting's name
METHODS = {"tome": "r", "topk": "k"}


class MergeStep(NamedTuple):
    """One block of a ToMe pass: tokens at its input, tokens merged after its attention."""

    tokens: int
    merged: int


class Merged(NamedTuple):
    """The tokens after one ToMe merge, their sizes, and the new index of every old token."""

    x: torch.Tensor
    size: torch.Tensor
    new_index: torch.Tensor


class PeerPass(NamedTuple):
    """A peer's encoder pass: the vision tokens (N, D), the tokens computed per block, whether
    it was a dense pass."""

    vis: torch.Tensor
    layer_tokens: list[int]
    dense: bool = False


def tome_schedule(n: int, r: int, depth: int) -> list[MergeStep]:
    """Tokens per block of a ToMe pass over ``n`` tokens, ``r`` merged per block (at most half
    of the block's tokens, as ToMe caps it)."""
    out = []
    for _ in range(depth):
        m = max(0, min(int(r), n // 2))
        out.append(MergeStep(n, m))
        n -= m
    return out


def tome_vit_flops(cfg: ModelConfig, n: int, r: int, hidden: list[int] | None = None) -> float:
    """Analytic FLOPs of :func:`tome_infer` (the terms ``torch.utils.flop_counter`` counts):
    per block qkv, attention over its own tokens, projection, the matching scores (even x odd
    tokens over the head-averaged keys, dim D/H) and the MLP on the tokens left after merging;
    ``hidden[l]``: MLP channels of block l (default ``mlp_ratio * dim``)."""
    d, dh = cfg.dim, cfg.dim // cfg.heads
    total = 0.0
    for li, (t, m) in enumerate(tome_schedule(n, r, cfg.depth)):
        h = cfg.mlp_ratio * d if hidden is None else hidden[li]
        total += linear(t, d, 3 * d) + 2.0 * 2.0 * t * t * d + linear(t, d, d)
        if m:
            total += linear((t + 1) // 2, dh, t // 2)
        total += linear(t - m, d, h) + linear(t - m, h, d)
    return total


def _bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor,
                     r: int) -> Merged:
    """ToMe's bipartite soft matching: the ``r`` even tokens most similar to an odd token merge
    into it (size-weighted average)."""
    n = x.shape[0]
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[0::2] @ metric[1::2].T                      # (ceil(n/2), floor(n/2))
    best, partner = scores.max(dim=-1)
    order = best.argsort(descending=True)
    src, unm = order[:r], order[r:]
    dst = partner[src]
    xa, xb, sa, sb = x[0::2], x[1::2], size[0::2], size[1::2]
    merged_size = sb.index_add(0, dst, sa[src])
    merged = (xb * sb[:, None]).index_add(0, dst, xa[src] * sa[src, None]) / merged_size[:, None]
    ia = torch.arange(0, n, 2)
    new_index = torch.empty(n, dtype=torch.long)
    nu = len(unm)
    new_index[ia[unm]] = torch.arange(nu)
    new_index[ia[src]] = nu + dst
    new_index[1::2] = nu + torch.arange(n // 2)
    return Merged(torch.cat([xa[unm], merged]), torch.cat([sa[unm], merged_size]), new_index)


def tome_infer(vit: SparseViT, e: torch.Tensor, r: int) -> torch.Tensor:
    """A ToMe pass over the memory tokens ``e`` (N, D), ``r`` tokens merged per block, batch 1;
    the vision tokens (N, D), merged tokens copied back to their sources. ``r = 0``: the dense
    pass's arithmetic (:func:`~edge_vlm.inference.vit.dense_step`)."""
    x = e + vit.pos
    n = x.shape[0]
    size = torch.ones(n)
    source = torch.arange(n)             # current index of every original token
    weighted = False                     # a merged token exists: proportional attention
    for blk, step in zip(vit.blocks, tome_schedule(n, r, len(vit.blocks))):
        q, k, v = blk.attn_qkv(x)
        kt, v = k.transpose(1, 2).contiguous(), v.contiguous()
        s = torch.bmm(q, kt).mul_(q.shape[-1] ** -0.5)
        if weighted:
            s = s + size.log()[None, None, :]
        x = blk.attn_residual(x, torch.bmm(torch.softmax(s, dim=-1), v))
        if step.merged:
            x, size, new_index = _bipartite_merge(x, size, k.mean(dim=0), step.merged)
            source = new_index[source]
            weighted = True
        x = blk.mlp_residual(x)
    return vit.ln(x)[source]


def topk_infer(vit: SparseViT, e: torch.Tensor, mem: list[LayerMemory],
               k: int) -> PeerPass:
    """An Eventful top-k pass over the memory tokens ``e`` (N, D) and the layer memories
    ``mem`` (filled by a dense pass first): before every block the ``k`` tokens whose input
    moved most (L2) from the block's last propagated input are recomputed (sorted by index),
    the rest keep their cached outputs."""
    x_full = e + vit.pos
    n = x_full.shape[0]
    native = native_on(vit)
    counts = []
    for blk, lm in zip(vit.blocks, mem):
        if k >= n:
            idx = torch.arange(n)
        else:
            dev = (x_full - lm.x).norm(dim=-1)
            idx = torch.topk(dev, k, sorted=False).indices.sort().values
        x = x_full[idx]
        y = native_vit.run_layer(blk, lm, x, idx) if native else None
        if y is None:
            lm.x.index_copy_(0, idx, x)
            y = sparse_step(blk, x, idx, lm)
            lm.out.index_copy_(0, idx, y)
        counts.append(int(idx.numel()))
        x_full = lm.out
    return PeerPass(vit.ln(mem[-1].out), counts)


@dataclass
class _Target:
    """The encoder a peer replaces: the ViT, its layer memories, the ANC level (None: STTF)."""

    vit: SparseViT
    mem: list[LayerMemory]
    level: int | None


def _target(eng: StreamingCaptioner) -> _Target:
    if isinstance(eng, AncStreamingCaptioner):
        if eng.force_level is None:
            raise ValueError("a peer encoder needs one ANC branch (force_level)")
        lv = int(eng.force_level)
        return _Target(eng.model.branches[lv], eng.branch_layers[lv], lv)
    return _Target(eng.model.vit, eng.layers, None)


class _PeerEncoder:
    """The engine's encoder stage with a peer's ViT pass (an instance attribute ``_encode``):
    the ANC router still runs (as in the STTF engine of the bench), its time apart."""

    def __init__(self, eng: StreamingCaptioner, setting: int):
        self.eng = eng
        self.setting = int(setting)

    def pass_(self, t: _Target, refresh: bool) -> PeerPass:
        raise NotImplementedError

    def __call__(self, hist, change, changed, resync: bool, refresh: bool) -> EncoderOutput:
        eng = self.eng
        t = _target(eng)     # the memories are replaced by reset(): looked up every frame
        router_ms, kw = None, {}
        if t.level is not None:
            t0 = time.perf_counter()
            eng.route(hist, change)
            router_ms = (time.perf_counter() - t0) * 1e3
            a = eng.model.acfg
            kw = {"decoder_layers": a.decoder_layers[t.level],
                  "decoder_beam": int(a.decoder_beams[t.level])}
        vis, tokens, dense = self.pass_(t, refresh)
        branch = {} if t.level is None else {t.level: tokens}
        return EncoderOutput(vis, tokens, dense, branch_tokens=branch, router_ms=router_ms, **kw)


class TomeEncoder(_PeerEncoder):
    """ToMe, ``r`` tokens merged per block, every frame (the engine runs with ``sparse=False``).
    Its FLOPs replace the encoder entry of the engine's count (:meth:`flops`)."""

    def pass_(self, t: _Target, refresh: bool) -> PeerPass:
        vis = tome_infer(t.vit, self.eng.e, self.setting)
        steps = tome_schedule(vis.shape[0], self.setting, len(t.vit.blocks))
        return PeerPass(vis, [s.tokens for s in steps], self.setting == 0)

    def flops(self, base):
        """The engine's ``_flops`` with the encoder entry counted for ToMe."""
        eng = self.eng

        def count(enc, n_embed, *rest, **kw):
            flops, dense = base(enc, n_embed, *rest, **kw)
            t = _target(eng)
            c = eng.cfg
            hidden = None
            if t.level is not None:
                c = replace(c, mlp_ratio=eng.model.acfg.mlp_ratios[t.level],
                            depth=len(t.vit.blocks))
                hidden = list(eng.kept[t.level])
            flops["encoder"] = (embed_flops(eng.cfg, n_embed)
                                + tome_vit_flops(c, c.num_tokens, self.setting, hidden))
            return flops, dense
        return count


class TopkEncoder(_PeerEncoder):
    """Eventful top-k, ``k`` tokens per block and frame; a dense pass fills the memories on the
    first frame and after a resync only (the engine runs sparse, no periodic refresh)."""

    def pass_(self, t: _Target, refresh: bool) -> PeerPass:
        if refresh:
            vis = dense_infer(t.vit, self.eng.e, t.mem)
            return PeerPass(vis, [self.eng.cfg.num_tokens] * len(t.vit.blocks), True)
        return topk_infer(t.vit, self.eng.e, t.mem, self.setting)


def install_peer(eng: StreamingCaptioner, method: str, setting: int) -> StreamingCaptioner:
    """Replace the encoder stage of ``eng`` (built by
    :func:`~edge_vlm.inference.factory.engine_from_params`; ToMe with ``sparse=False``, top-k
    with ``sparse=True``) by the peer ``method`` (:data:`METHODS`) at ``setting`` (r or k).
    Top-k turns the engine's periodic and drift refreshes off. Returns ``eng``."""
    if method in METHODS and int(setting) < 0:
        raise ValueError(f"{METHODS[method]} must be >= 0, got {setting}")
    if method == "tome":
        if eng.sparse:
            raise ValueError("ToMe runs every frame: build its engine with sparse=False")
        enc = TomeEncoder(eng, setting)
        eng._flops = enc.flops(eng._flops)
    elif method == "topk":
        if not eng.sparse:
            raise ValueError("top-k gating streams: build its engine with sparse=True")
        if int(setting) < 1:
            raise ValueError(f"top-k needs k >= 1, got {setting}")
        enc = TopkEncoder(eng, setting)
        eng.refresh_period, eng.drift_bound = 0, 0.0
    else:
        raise ValueError(f"unknown peer method {method!r} (one of {sorted(METHODS)})")
    eng._encode = enc
    return eng

