"""The fusion's cached keys/values (inference/fusion_cache.py) against the full recompute."""
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edge_vlm.bench.engines import bench_model, sttf_engine
from edge_vlm.bench.recordings import sim_frames
from edge_vlm.bench.recordings import test_recordings as bench_recordings
from edge_vlm.cores.graph import replay_params
from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.fusion_cache import FusedFrame, FusionCache
from edge_vlm.model.config import age_bucket
from edge_vlm.model.flops import fusion_flops
from test_model import moving_blob, tiny_model

TOL = 1e-5


def _full(model, eng, change):
    """The dense path's fusion of the engine's current state (every token recomputed)."""
    bucket = age_bucket(torch.from_numpy(eng.age), eng.cfg.max_age)[None]
    with torch.no_grad():
        return model.fuse(eng.memory[None], bucket, torch.from_numpy(change)[None])


def _check_stream(model, eng, hists, resync_at=()):
    """Perceive every frame; the cached fusion equals the full one; returns the recomputed
    token counts and whether each frame ran a dense encoder pass."""
    counts, dense = [], []
    for i, h in enumerate(hists):
        if i in resync_at:
            eng.force_refresh()
        p = eng.perceive(h)
        fused, z = _full(model, eng, p.change)
        assert float((p.fused - fused).abs().max()) <= TOL, i
        assert float((eng.fusion_cache.z[None] - z).abs().max()) <= TOL, i
        counts.append(p.fusion_tokens)
        dense.append(p.enc.dense)
    return counts, dense


@pytest.fixture(scope="module")
def recorded():
    """The bench's model (shipped checkpoint) and its quick simulated test recording."""
    params = replay_params(graph=None).captioner
    rec = bench_recordings(True)[0]
    model, minfo = bench_model("", [r for c in rec.clips for r in c.references])
    return model, minfo, params, [f.hist for f in sim_frames(rec, params)]


def test_cached_fusion_equals_full_recompute_on_a_recording_with_refreshes(recorded):
    model, minfo, params, hists = recorded
    eng = sttf_engine(model, {**params, "refresh_period": 10}, True, minfo)
    n = eng.cfg.num_tokens
    counts, dense = _check_stream(model, eng, hists, resync_at=(25,))
    assert counts[0] == n                           # first frame: every token
    assert sum(dense) >= 4                          # refreshes (every 10) and the resync ran
    steady = [c for c, d in zip(counts, dense) if not d]
    assert steady and max(steady) < n and np.mean(steady) < n / 2   # scales with the changes


def test_cached_fusion_equals_full_recompute_on_a_tiny_model():
    m, _ = tiny_model()
    eng = StreamingCaptioner(m, refresh_period=5)
    hists = [moving_blob(f) for f in range(14)] + [np.zeros((4, 128, 128), np.float32)] * 3
    counts, _ = _check_stream(m, eng, hists, resync_at=(9,))
    assert counts[0] == m.cfg.num_tokens and min(counts) < m.cfg.num_tokens


def test_engine_outputs_are_those_of_the_full_fusion(recorded, monkeypatch):
    """The sparse engine with the cache gives what it gives with the full recompute."""
    model, minfo, params, hists = recorded
    cached = sttf_engine(model, params, True, minfo)
    full = sttf_engine(model, params, True, minfo)

    def full_fuse(vis, bucket, change, every_row=False):
        fused, z = model.fuse(vis[None], bucket[None], change[None])
        return FusedFrame(fused, z, vis.shape[0])

    monkeypatch.setattr(full.fusion_cache, "fuse", full_fuse)
    for h in hists:
        a, b = cached.process(h), full.process(h)
        assert (a.text, a.label, a.caption_fresh) == (b.text, b.label, b.caption_fresh)
        assert abs(a.confidence - b.confidence) <= TOL
        assert a.flops["fusion"] <= b.flops["fusion"]


def test_weight_change_invalidates_the_cache():
    m, _ = tiny_model()
    cache = FusionCache(m)
    n, d = m.cfg.num_tokens, m.cfg.dim
    vis, bucket = torch.randn(n, d), torch.zeros(n, dtype=torch.long)
    change = torch.zeros(n, dtype=torch.bool)
    assert cache.fuse(vis, bucket, change).recomputed == n
    assert cache.fuse(vis, bucket, change).recomputed == 0
    vis2 = vis.clone()
    vis2[3] += 1.0
    bucket[7] = 2
    assert cache.fuse(vis2, bucket, change).recomputed == 2
    with torch.no_grad():
        m.fusion.attn.kv.weight.mul_(1.5)
    out = cache.fuse(vis2, bucket, change)
    assert out.recomputed == n
    with torch.no_grad():
        want, _ = m.fuse(vis2[None], bucket[None], change[None])
    assert float((out.fused - want).abs().max()) <= TOL


def test_fusion_flops_count_the_recomputed_rows():
    m, _ = tiny_model()
    c = m.cfg
    cache = FusionCache(m)
    n = c.num_tokens
    vis, bucket = torch.randn(n, c.dim), torch.zeros(n, dtype=torch.long)
    change = torch.zeros(n, dtype=torch.bool)
    with torch.no_grad():
        cache.fuse(vis, bucket, change)
    vis[:40] += 0.5
    # with autograd on, as test_model's counter check (sdpa's CPU kernel is counted then)
    with FlopCounterMode(display=False) as fc:
        out = cache.fuse(vis, bucket, change)
        m.gesture_logits(out.fused, out.z, bucket[None])
    assert out.recomputed == 40
    want = fusion_flops(c, 40)
    assert want < fusion_flops(c)
    assert abs(fc.get_total_flops() - want) / want < 0.05
