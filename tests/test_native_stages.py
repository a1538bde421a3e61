"""The fusion stage and the token memory update in one C call each (inference/native_stages.py,
svit_fusion and svit_embed of _native/sparsevit.c): the same fused queries, vision logits,
caches and memory tokens as the PyTorch paths to float rounding, the same engine outputs, and
PyTorch wherever the kernels do not apply (whether the library is built at all:
test_native_vit.py)."""
import numpy as np
import pytest
import torch

from edge_vlm.bench.engines import bench_model, sttf_engine
from edge_vlm.bench.recordings import sim_frames
from edge_vlm.bench.recordings import test_recordings as bench_recordings
from edge_vlm.cores.graph import replay_params
from edge_vlm.inference import native_vit
from edge_vlm.inference.factory import load_model
from edge_vlm.inference.fusion_cache import FusionCache
from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.native_stages import NativeEmbed, NativeFusion
from edge_vlm.model.config import ModelConfig, age_bucket
from edge_vlm.model.sttf import CaptionModel, init_weights

needs_kernel = pytest.mark.skipif(native_vit.load() is None,
                                  reason=f"kernel not loaded: {native_vit.why()}")
TOL = 1e-5


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def _stream(cfg, frames: int, seed: int):
    """Random frames of a stream: vision tokens, age buckets, change mask (a few tokens change
    per frame, as in a sparse frame)."""
    g = torch.Generator().manual_seed(seed)
    n, d = cfg.num_tokens, cfg.dim
    vis = torch.randn(n, d, generator=g)
    age = torch.full((n,), cfg.max_age, dtype=torch.long)
    for t in range(frames):
        k = 2 + int(torch.randint(0, 30, (1,), generator=g))
        idx = torch.randperm(n, generator=g)[:k]
        vis = vis.clone()
        vis[idx] = torch.randn(k, d, generator=g)
        age = torch.clamp(age + 1, max=cfg.max_age)
        age[idx] = 0
        change = torch.zeros(n, dtype=torch.bool)
        change[idx] = True
        yield vis, age_bucket(age, cfg.max_age), change


@needs_kernel
def test_native_cache_equals_pytorch_on_the_shipped_model():
    model, _ = load_model("")
    native, ref = FusionCache(model), FusionCache(model)
    ref.native = False
    with torch.no_grad():
        for t, (vis, bucket, change) in enumerate(_stream(model.cfg, 40, 0)):
            a, b = native.fuse(vis, bucket, change), ref.fuse(vis, bucket, change)
            assert isinstance(native.native, NativeFusion), t
            assert a.recomputed == b.recomputed
            assert _max(a.fused, b.fused) <= TOL, t
            assert _max(a.z, b.z) <= TOL, t
            want = model.gesture_logits(b.fused, b.z, bucket[None])
            assert b.vision is None and _max(a.vision, want) <= TOL, t
        assert _max(native.native.keys_values(), ref.kv) <= TOL


@needs_kernel
@pytest.mark.parametrize("sparse", [True, False])
def test_engine_outputs_are_those_of_pytorch(sparse):
    """The engine gives the same captions, labels, (to rounding) confidences and memory tokens
    with the native stages as with PyTorch's, on the bench's quick recording (a resync and the
    expiry of unchanged tokens included)."""
    params = replay_params(graph=None).captioner
    rec = bench_recordings(True)[0]
    model, minfo = bench_model("", [r for c in rec.clips for r in c.references])
    native = sttf_engine(model, params, sparse, minfo)
    ref = sttf_engine(model, params, sparse, minfo)
    ref.fusion_cache.native, ref._native_embed = False, False
    hists = [f.hist for f in sim_frames(rec, params)]
    hists += [np.zeros_like(hists[0])] * ref.cfg.max_age      # still: changed tokens expire
    expired = 0
    for i, h in enumerate(hists):
        if i == 30:
            native.force_refresh()
            ref.force_refresh()
        expired += int((ref.age == ref.cfg.max_age - 1).sum())
        a, b = native.process(h), ref.process(h)
        assert (a.text, a.label, a.caption_fresh) == (b.text, b.label, b.caption_fresh)
        assert abs(a.confidence - b.confidence) <= TOL
        # the fusion recomputes the rows whose vision token moved, to the bit: a token the
        # encoder recomputed may land on its old value in one path and not in the other
        fa, fb = a.flops.pop("fusion"), b.flops.pop("fusion")
        assert a.flops == b.flops and abs(fa - fb) <= 0.02 * fb, i
        assert _max(native.e, ref.e) <= TOL, i
    assert expired > 0
    assert isinstance(native._native_embed, NativeEmbed)
    assert isinstance(native.fusion_cache.native, NativeFusion)     # the dense baseline's too


@needs_kernel
def test_a_weight_change_rebuilds_the_native_cache():
    model, _ = load_model("")
    cache = FusionCache(model)
    frames = list(_stream(model.cfg, 3, 1))
    try:
        with torch.no_grad():
            cache.fuse(*frames[0])
            first = cache.native
            assert cache.fuse(*frames[1]).recomputed < model.cfg.num_tokens
            model.fusion.mlp[2].weight.mul_(1.5)          # a weight only the attention reads
            out = cache.fuse(*frames[2])
            assert out.recomputed == model.cfg.num_tokens and cache.native is not first
            vis, bucket, change = frames[2]
            fused, z = model.fuse(vis[None], bucket[None], change[None])
            assert _max(out.fused, fused) <= TOL
    finally:
        with torch.no_grad():
            model.fusion.mlp[2].weight.div_(1.5)


@needs_kernel
def test_a_refused_call_falls_back_to_pytorch():
    """A bucket the age table does not have: the kernel writes nothing and refuses; the cache
    runs PyTorch from then on (which raises for it, as the module would)."""
    model, _ = load_model("")
    cache = FusionCache(model)
    frames = list(_stream(model.cfg, 2, 2))
    with torch.no_grad():
        cache.fuse(*frames[0])
        vis, bucket, change = frames[1]
        bad = bucket.clone()
        bad[int(torch.nonzero(change)[0])] = model.cfg.age_buckets    # one past the table
        with pytest.raises(IndexError):
            cache.fuse(vis, bad, change)
        assert cache.native is False
        ref = FusionCache(model)
        ref.native = False
        ref.fuse(*frames[0])
        assert _max(cache.fuse(*frames[1]).fused, ref.fuse(*frames[1]).fused) <= TOL


def test_pytorch_where_the_kernel_does_not_apply(monkeypatch):
    """A model whose shapes are not the kernel's, and EDGE_VLM_NO_NATIVE_STAGES=1."""
    cfg = ModelConfig(dim=40, heads=2, depth=1, dec_layers=1)
    m = CaptionModel(cfg)
    init_weights(m)
    m.eval()
    assert NativeFusion.build(m, cfg.num_tokens) is None
    cache = FusionCache(m)
    with torch.no_grad():
        for vis, bucket, change in _stream(cfg, 3, 3):
            out = cache.fuse(vis, bucket, change)
            want, _ = m.fuse(vis[None], bucket[None], change[None])
            assert out.vision is None and _max(out.fused, want) <= TOL
    assert cache.native is False
    monkeypatch.setenv("EDGE_VLM_NO_NATIVE_STAGES", "1")
    model, _ = load_model("")
    assert NativeFusion.build(model, model.cfg.num_tokens) is None


@needs_kernel
def test_the_kernel_checks_its_indices():
    """Out-of-range rows are refused before anything is written."""
    model, _ = load_model("")
    nat = NativeFusion.build(model, model.cfg.num_tokens)
    n, d = model.cfg.num_tokens, model.cfg.dim
    vis, bucket = torch.randn(n, d), torch.zeros(n, dtype=torch.long)
    change = np.zeros(n, dtype=bool)
    z0 = nat.z.clone()
    for rows in (np.array([n]), np.array([-1]), np.array([0, n + 5])):
        assert nat.run(rows, vis, bucket, change, 1.0) is None
    assert torch.equal(nat.z, z0)
    assert nat.run(np.arange(n), vis, bucket, change, 1.0) is not None


def _hist(seed: int, shape=(4, 128, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(0.3, shape).astype(np.float32)


@needs_kernel
def test_native_embed_merges_and_replaces_as_pytorch():
    model, _ = load_model("")
    eng = StreamingCaptioner(model)
    nat = NativeEmbed.build(model.embed, model.cfg)
    n, d = model.cfg.num_tokens, model.cfg.dim
    torch.manual_seed(4)
    for seed in range(3):
        hist = _hist(seed)
        e0 = torch.randn(n, d)
        upd = np.sort(np.random.default_rng(seed).choice(n, 25, replace=False))
        exp = np.setdiff1d(np.arange(0, n, 7), upd)
        change = np.zeros(n, dtype=bool)
        change[upd] = True
        eng.e = e0.clone()
        eng._embed(hist, None, change, upd, exp)
        got = e0.clone()
        rows = np.concatenate([upd, exp])
        flags = np.arange(len(rows)) < len(upd)
        assert nat.run(got, hist, rows, flags, flags)
        assert _max(got, eng.e) <= TOL
        rest = np.setdiff1d(np.arange(n), np.concatenate([upd, exp]))
        assert torch.equal(got[rest], e0[rest])             # no other row written


@needs_kernel
def test_native_embed_refuses_what_it_cannot_do():
    """Out-of-range rows, another frame size: refused with nothing written; an RGB frame and a
    model of other shapes run PyTorch."""
    model, _ = load_model("")
    nat = NativeEmbed.build(model.embed, model.cfg)
    n, d = model.cfg.num_tokens, model.cfg.dim
    e = torch.randn(n, d)
    e0 = e.clone()
    one = np.ones(1, dtype=bool)
    assert not nat.run(e, _hist(0), np.array([n]), one, one)
    assert not nat.run(e, _hist(0), np.array([-1]), one, ~one)
    assert not nat.run(e, _hist(0, (4, 64, 64)), np.array([1]), one, one)
    assert torch.equal(e, e0)
    eng = StreamingCaptioner(model)
    rgb = np.zeros((128, 128, 3), dtype=np.uint8)
    assert not eng._embed_native(e, _hist(1), rgb, np.array([1]), one, one)
    assert torch.equal(e, e0)
    cfg = ModelConfig(dim=40, heads=2, depth=1, dec_layers=1)
    assert NativeEmbed.build(CaptionModel(cfg).embed, cfg) is None
