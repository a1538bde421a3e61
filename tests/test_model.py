"""Model-level tests: shapes, exact token reuse, KV cache, FLOPs counter vs torch."""
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from edge_vlm.model.captioner import CaptionModel, ModelConfig, decode_beam, decode_greedy, patchify
from edge_vlm.model.engine import CheckpointError, StreamingCaptioner, load_checkpoint, save_checkpoint
from edge_vlm.model.flops import encoder_flops, frame_flops, fusion_flops
from edge_vlm.model.tokenizer import Tokenizer

import pytest


def tiny_model(seed=0):
    torch.manual_seed(seed)
    tok = Tokenizer.build(["a person waves the right hand quickly", "a tall person claps hands slowly"])
    return CaptionModel(ModelConfig(dim=32, heads=2, vocab=tok.vocab)).eval(), tok


def moving_blob(frame, n=128):
    h = np.zeros((4, n, n), dtype=np.float32)
    x0 = 20 + 3 * frame
    h[1, 40:56, x0:x0 + 10] = 2
    h[0, 40:56, x0 + 10:x0 + 13] = 1
    return h


def test_forward_shapes():
    m, tok = tiny_model()
    c = m.cfg
    frames = torch.rand(2 * c.history, c.in_channels, 128, 128)
    patches = patchify(frames, c.patch).view(2, c.history, c.num_tokens, c.patch_dim)
    active = torch.rand(2, c.history, c.num_tokens) > 0.8
    ids = torch.tensor([tok.encode("a person waves", c.max_len)] * 2)
    g, logits = m(patches, active, torch.tensor([False, True]), ids[:, :-1])
    assert g.shape == (2, 11) and logits.shape == (2, c.max_len, len(tok.vocab))


def test_sparse_equals_dense_tokens():
    """Patch-local encoder: the token memory after sparse updates equals a dense re-encode."""
    m, _ = tiny_model()
    sparse = StreamingCaptioner(m, refresh_period=0)
    dense = StreamingCaptioner(m, sparse=False)
    for f in range(6):
        h = moving_blob(f)
        rs, rd = sparse.process(h), dense.process(h)
        assert torch.allclose(sparse.memory, dense.memory, atol=1e-5)
        assert rs.text == rd.text and rs.label == rd.label
    assert rs.active_tokens < rs.total_tokens and not rs.refreshed
    assert rd.active_tokens == rd.total_tokens


def test_kv_cache_matches_full_forward():
    m, tok = tiny_model()
    fused = torch.randn(1, m.cfg.fusion_queries, m.cfg.dim)
    ids, _ = decode_greedy(m, fused, tok.bos, tok.eos, 8)
    seq = torch.tensor([[tok.bos] + ids])
    full = m.decoder(fused, seq)
    logits, caches = m.decoder.start(fused, seq[:, :1])
    assert torch.allclose(full[0, 0], logits[0], atol=1e-4)
    for i in range(1, seq.shape[1]):
        step = m.decoder.step(seq[:, i:i + 1], m.cfg.fusion_queries + i, caches)
        assert torch.allclose(full[0, i], step[0], atol=1e-4)


def test_beam_search_runs_and_scores():
    m, tok = tiny_model()
    fused = torch.randn(1, m.cfg.fusion_queries, m.cfg.dim)
    ids, score = decode_beam(m, fused, tok.bos, tok.eos, 8, beam=3)
    assert len(ids) <= 8 and np.isfinite(score)


def test_flops_counter_matches_torch():
    m, _ = tiny_model()
    c = m.cfg
    x = torch.rand(1, c.in_channels, 128, 128)
    patches = patchify(x, c.patch)
    act = torch.zeros(1, c.num_tokens, dtype=torch.bool)
    hist = torch.zeros(1, c.history, c.summary_tokens, c.dim)
    with FlopCounterMode(display=False) as fc:
        tok = m.encoder(patches[0])
    assert abs(fc.get_total_flops() - encoder_flops(c, c.num_tokens)) / encoder_flops(c, c.num_tokens) < 0.05
    with FlopCounterMode(display=False) as fc:
        fused = m.fuse(tok[None], act, hist)
        m.summarize(tok[None], act)
        m.gesture_logits(fused, tok[None], act)
    assert abs(fc.get_total_flops() - fusion_flops(c)) / fusion_flops(c) < 0.05


def test_checkpoint_roundtrip_and_errors(tmp_path):
    m, _ = tiny_model()
    p = tmp_path / "c.pt"
    save_checkpoint(str(p), m, extra={"model_id": "t"})
    m2, extra = load_checkpoint(str(p))
    assert extra["model_id"] == "t"
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(str(bad))


def test_training_batch_matches_streaming_input():
    """make_batch lays out (denoised) patches exactly as the streaming engine does."""
    from edge_vlm.model.data import FrameSet
    from edge_vlm.model.train import TrainConfig, make_batch

    m, tok = tiny_model()
    c = m.cfg
    rng = np.random.default_rng(0)
    n = c.history + 2
    hist = np.zeros((n, 4, 128, 128), dtype=np.uint8)
    for f in range(n):
        hist[f] = moving_blob(f).astype(np.uint8)
        hist[f, 0, rng.integers(0, 128, 20), rng.integers(0, 128, 20)] += 1  # sparse noise
    rgb = rng.integers(0, 255, (n, 128, 128, 3), dtype=np.uint8)
    fs = FrameSet(hist, rgb, np.full(n, 3), ["a person waves"] * n, [[]] * n, [""] * n,
                  np.zeros(n, dtype=np.int64), np.arange(n), np.arange(n))
    idx = np.array([n - 1])
    for use_rgb in (False, True):
        patches, active, _, _, _ = make_batch(fs, idx, c, tok, TrainConfig(), rng, np.array([use_rgb]))
        eng = StreamingCaptioner(m)
        x, change = eng.input_tensor(hist[-1].astype(np.float32), rgb[-1] if use_rgb else None)
        assert torch.allclose(patches[0, -1], patchify(x, c.patch)[0], atol=1e-6)
        assert np.array_equal(active[0, -1].numpy(), change)


def test_rgb_at_half_frame_rate_does_not_force_dense_refresh():
    m, _ = tiny_model()
    eng = StreamingCaptioner(m, refresh_period=0)
    rgb = np.full((128, 128, 3), 100, dtype=np.uint8)
    res = [eng.process(moving_blob(f), rgb if f % 2 == 0 else None) for f in range(8)]
    assert res[0].refreshed and not any(r.refreshed for r in res[1:])
    assert all(r.active_tokens < r.total_tokens for r in res[1:])


def test_caption_period_reuses_text_and_reports_no_decoder_flops():
    m, _ = tiny_model()
    eng = StreamingCaptioner(m, caption_period=3, refresh_period=0)
    res = [eng.process(moving_blob(f)) for f in range(7)]
    fresh = [r.caption_fresh for r in res]
    labels = [r.label for r in res]
    assert fresh[0] and fresh[3] and fresh[6]
    # off-period frames reuse the text unless the gesture changed
    expect = [i % 3 == 0 or labels[i] != labels[i - 1] for i in range(7)]
    assert fresh == expect and not all(fresh)
    for r, prev in zip(res[1:], res[:-1]):
        if not r.caption_fresh:
            assert r.text == prev.text and r.flops["decoder"] == 0.0
        else:
            assert r.flops["decoder"] > 0
