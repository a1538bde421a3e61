"""The peer token-reduction methods of the peers benchmark (edge_vlm.inference.peers): ToMe
(merge / unmerge, r = 0 is the dense pass) and Eventful top-k gating (k >= N is the dense pass,
exactly k tokens per block, gate state of recomputed tokens only), and their FLOPs against
torch.utils.flop_counter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edge_vlm.bench.engines import sttf_engine
from edge_vlm.cores.graph import replay_params
from edge_vlm.inference.memory import new_memory
from edge_vlm.inference.peers import (_bipartite_merge, install_peer, tome_infer, tome_schedule,
                                      tome_vit_flops, topk_infer)
from edge_vlm.inference.vit import dense_infer, set_native
from edge_vlm.model.anc import AncModel
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.flops import embed_flops, vit_flops
from edge_vlm.model.sttf import CaptionModel, init_weights
from edge_vlm.model.tokenizer import Tokenizer


def _small() -> CaptionModel:
    torch.manual_seed(0)
    vocab = Tokenizer.build(["a person waves the right hand"]).vocab
    m = CaptionModel(ModelConfig(dim=32, heads=2, depth=3, vocab=vocab))
    init_weights(m)
    return m.eval()


@pytest.fixture(scope="module", params=["sttf", "anc"])
def model(request):
    m = _small()
    if request.param == "anc":
        m = AncModel.grow_from(m).eval()
    for mod in m.modules():            # exactness is claimed on the PyTorch backend
        if hasattr(mod, "blocks") and hasattr(mod, "pos"):
            set_native(mod, False)
    return m


def _vit(m):
    return m.branches[2] if hasattr(m, "branches") else m.vit


def _frames(n=8, seed=1):
    """Event histograms with a moving blob (changes every frame) and some noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h = rng.poisson(0.05, (4, 128, 128)).astype(np.float32)
        h[:, 30 + 6 * i:50 + 6 * i, 40:70] += rng.poisson(2.0, (4, 20, 30))
        out.append(h)
    return out


def _params():
    return replay_params(graph=None).captioner


def test_tome_r0_equals_dense_exactly(model):
    dense = sttf_engine(model, _params(), False)
    tome = install_peer(sttf_engine(model, _params(), False), "tome", 0)
    for h in _frames():
        a, b = dense.process(h), tome.process(h)
        assert torch.equal(dense.memory, tome.memory)
        assert (a.label, a.confidence, a.text) == (b.label, b.confidence, b.text)
        assert a.flops["encoder"] == b.flops["encoder"]


def test_tome_merges_and_unmerges(model):
    vit = _vit(model)
    torch.manual_seed(3)
    e = torch.randn(vit.pos.shape)
    n = e.shape[0]
    for r in (4, 16, 200):
        vis = tome_infer(vit, e, r)
        assert vis.shape == e.shape
        left = n - sum(s.merged for s in tome_schedule(n, r, len(vit.blocks)))
        # every merged group is copied back to all its sources: N rows, `left` distinct ones
        assert len(torch.unique(vis, dim=0)) == left < n
    assert tome_schedule(256, 32, 8)[-1] == (32, 16)       # capped at half the tokens


def test_bipartite_merge_is_a_size_weighted_average():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [5.0, 5.0]])
    metric = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    size = torch.tensor([2.0, 1.0, 1.0, 1.0])
    y, s, idx = _bipartite_merge(x, size, metric, 1)
    # token 0 (even) is identical in metric to token 1 (odd): merged into it, sizes 2 + 1
    assert y.shape == (3, 2) and torch.equal(s, torch.tensor([1.0, 3.0, 1.0]))
    assert torch.allclose(y[idx[0]], (2 * x[0] + x[1]) / 3) and idx[0] == idx[1]
    assert torch.equal(y[idx[2]], x[2]) and torch.equal(y[idx[3]], x[3])
    assert len(set(idx.tolist())) == 3


def test_topk_full_k_equals_dense_exactly(model):
    dense = sttf_engine(model, _params(), False)
    topk = install_peer(sttf_engine(model, _params(), True), "topk", model.cfg.num_tokens)
    for h in _frames():
        a, b = dense.process(h), topk.process(h)
        assert torch.equal(dense.memory, topk.memory)         # the encoder's output, exactly
        # (a sparse engine's later stages may cache, e.g. the fusion: equal up to rounding)
        assert (a.label, a.text) == (b.label, b.text)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
        assert b.layer_tokens == [model.cfg.num_tokens] * len(_vit(model).blocks)


def test_topk_recomputes_k_tokens_per_frame(model):
    eng = install_peer(sttf_engine(model, _params(), True), "topk", 5)
    res = [eng.process(h) for h in _frames()]
    assert res[0].refreshed and res[0].active_tokens == model.cfg.num_tokens
    for r in res[1:]:
        assert not r.refreshed and r.layer_tokens == [5] * len(_vit(model).blocks)


def test_topk_gates_against_the_last_propagated_input(model):
    vit = _vit(model)
    torch.manual_seed(4)
    n, d = vit.pos.shape
    e0 = torch.randn(n, d)
    mem = new_memory(vit)
    dense_infer(vit, e0, mem)
    x0 = mem[0].x.clone()
    moved = torch.tensor([3, 40, 77])
    e1 = e0.clone()
    e1[moved] += 5.0
    e1[100] += 0.01                      # a small change: not among the top 3
    counts = topk_infer(vit, e1, mem, 3).layer_tokens
    assert counts == [3] * len(vit.blocks)
    x1 = e1 + vit.pos
    assert torch.equal(mem[0].x[moved], x1[moved])           # recomputed: state updated
    rest = torch.ones(n, dtype=torch.bool)
    rest[moved] = False
    assert torch.equal(mem[0].x[rest], x0[rest])             # the others keep theirs
    # the small change accumulates against the last propagated value: it is picked next
    e2 = e1.clone()
    e2[100] += 0.01
    topk_infer(vit, e2, mem, 1)
    assert torch.equal(mem[0].x[100], (e2 + vit.pos)[100])


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops()


def _branch_cfg(model):
    c = model.cfg
    if hasattr(model, "acfg"):
        from dataclasses import replace
        c = replace(c, mlp_ratio=model.acfg.mlp_ratios[2], depth=model.acfg.depths[2])
    return c


def test_peer_flops_match_the_flop_counter(model):
    vit, c = _vit(model), _branch_cfg(model)
    torch.manual_seed(5)
    n, d = vit.pos.shape
    e = torch.randn(n, d)
    for r in (0, 3, 8, 40):
        assert _counted(lambda: tome_infer(vit, e, r)) == tome_vit_flops(c, n, r)
    mem = new_memory(vit)
    dense_infer(vit, e, mem)
    for k in (1, 7, n):
        e = e + 0.1 * torch.randn(n, d)
        assert _counted(lambda: topk_infer(vit, e, mem, k)) == vit_flops(c, [k] * c.depth)


def test_engine_counts_the_peer_flops(model):
    c = _branch_cfg(model)
    tome = install_peer(sttf_engine(model, _params(), False), "tome", 8)
    topk = install_peer(sttf_engine(model, _params(), True), "topk", 9)
    for i, h in enumerate(_frames(4)):
        a, b = tome.process(h), topk.process(h)
        n_embed = c.num_tokens if i == 0 else None
        if n_embed is not None:
            assert a.flops["encoder"] == embed_flops(c, n_embed) + tome_vit_flops(
                c, c.num_tokens, 8)
        if i:
            assert b.flops["encoder"] - vit_flops(c, [9] * c.depth) == pytest.approx(
                a.flops["encoder"] - tome_vit_flops(c, c.num_tokens, 8))


def test_install_peer_rejects_bad_settings(model):
    with pytest.raises(ValueError, match="unknown peer"):
        install_peer(sttf_engine(model, _params(), False), "nope", 1)
    with pytest.raises(ValueError, match="sparse=False"):
        install_peer(sttf_engine(model, _params(), True), "tome", 8)
    with pytest.raises(ValueError, match="sparse=True"):
        install_peer(sttf_engine(model, _params(), False), "topk", 8)
    with pytest.raises(ValueError, match=">= 0"):
        install_peer(sttf_engine(model, _params(), False), "tome", -1)
