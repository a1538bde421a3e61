"""The per-frame shortcuts of streaming inference give the values of the plain calls, bit for
bit: the 2x2 pooling of strided views, the histogram's ``log1p`` shared by the change-mask net
and the ANC estimator, the functional head and decoder-block calls; a frame's FLOPs dict is the
caller's own (the engine edits it)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.frame_tensors import FrameTensors
from edge_vlm.model.anc import AncModel
from edge_vlm.model.config import ModelConfig, age_bucket, age_bucket_np
from edge_vlm.model.flops import frame_flops
from edge_vlm.model.layers import Block, avg_pool2x2
from edge_vlm.model.motion import MotionHead, motion_channels
from edge_vlm.model.sttf import CaptionModel, init_weights
from edge_vlm.model.tokenizer import Tokenizer


def _model(**kw) -> CaptionModel:
    torch.manual_seed(0)
    tok = Tokenizer.build(["a person waves the right hand quickly", "nothing moves"])
    m = CaptionModel(ModelConfig(dim=32, heads=2, depth=2, max_age=8, vocab=tok.vocab, **kw))
    init_weights(m)
    torch.nn.init.normal_(m.mask_net.head.weight, std=0.5)
    return m.eval()


def _counts(seed: int, shape=(1, 4, 128, 128), n: int = 1500) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    h = np.zeros(shape, dtype=np.float32)
    flat = h.reshape(-1)
    flat[rng.integers(0, flat.size, n)] = rng.integers(1, 9, n)
    return torch.from_numpy(h)


@pytest.mark.parametrize("shape", [(1, 4, 128, 128), (1, 8, 64, 64), (3, 16, 32, 32), (5, 6)])
def test_avg_pool2x2_is_avg_pool2d_bit_for_bit(shape):
    torch.manual_seed(1)
    x = torch.log1p(torch.rand(shape) * 7)
    want = F.avg_pool2d(x[None] if x.dim() == 2 else x, 2)
    got = avg_pool2x2(x[None] if x.dim() == 2 else x)
    assert got.shape == want.shape and torch.equal(got, want)


def test_avg_pool2x2_odd_sizes_and_gradients_follow_avg_pool2d():
    x = torch.rand(2, 3, 7, 9)
    assert torch.equal(avg_pool2x2(x), F.avg_pool2d(x, 2))
    a = torch.rand(2, 4, 16, 16, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    (avg_pool2x2(a) * torch.arange(64.0).view(8, 8)).sum().backward()
    (F.avg_pool2d(b, 2) * torch.arange(64.0).view(8, 8)).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_mask_net_and_estimator_read_a_shared_log_histogram():
    m = _model()
    a = AncModel.grow_from(m).eval()
    for seed in range(3):
        h = _counts(seed)
        ft = FrameTensors(h[0].numpy())
        with torch.no_grad():
            assert torch.equal(m.mask_net(h), m.mask_net(ft.hist, ft.log))
            change = torch.rand(1, m.cfg.num_tokens) > 0.8
            bucket = torch.randint(0, m.cfg.age_buckets, (1, m.cfg.num_tokens))
            assert torch.equal(a.route_logits(h, change, bucket),
                               a.route_logits(ft.hist, change, bucket, ft.log))


def test_frame_tensors_are_made_per_frame_not_per_buffer():
    """A binner reuses its frame buffers: the engine's tensors of a frame never serve the next
    frame written into the same array."""
    eng = StreamingCaptioner(_model())
    buf = _counts(0)[0].numpy().copy()
    eng.process(buf)
    assert eng.frame is None
    first = eng.change_mask(buf)
    buf[:] = _counts(7, n=6000)[0].numpy()
    assert not np.array_equal(eng.change_mask(buf), first)
    with torch.no_grad():
        want = (eng.model.mask_net(torch.from_numpy(buf)[None])[0] > 0).numpy()
    assert np.array_equal(eng.change_mask(buf), want)
    ft = FrameTensors(buf)
    assert FrameTensors.of(buf, ft) is ft and FrameTensors.of(buf.copy(), ft) is not ft


def test_motion_head_inference_calls_equal_its_modules():
    m = _model(motion_head=True, scene_head=True)
    head: MotionHead = m.motion
    x = torch.rand(2, motion_channels(m.cfg), m.cfg.grid, m.cfg.grid)
    v = torch.randn(2, m.cfg.num_classes)
    coord = head.coord.expand(2, -1, -1, -1)
    with torch.no_grad():
        want = head.net(torch.cat([x, coord], dim=1))
        want = want + F.pad(head.vision_weight * F.log_softmax(v, dim=-1),
                            (1, want.shape[-1] - v.shape[-1] - 1))
        assert torch.equal(head(x, v), want)
    head.train()            # training: the modules, dropout included
    torch.manual_seed(3)
    out = head(x)
    torch.manual_seed(3)
    assert torch.equal(out, head.net(torch.cat([x, coord], dim=1)))


def test_decoder_block_and_gesture_head_equal_their_modules():
    torch.manual_seed(2)
    blk = Block(32, 2).eval()
    x = torch.randn(1, 13, 32)
    q, k, v = blk.attn_qkv(x)
    i, j = torch.arange(13)[:, None], torch.arange(13)[None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i) | (j < 8))
    y = blk.attn_residual(x, out)
    with torch.no_grad():
        assert torch.equal(blk(x, causal_from=8), y + blk.mlp(blk.ln2(y)))
    m = _model()
    fused, z = torch.randn(1, m.cfg.fusion_queries, 32), torch.randn(1, m.cfg.num_tokens, 32)
    bucket = torch.randint(0, m.cfg.age_buckets, (1, m.cfg.num_tokens))
    w = (bucket <= 4).float()[..., None]
    dyn = (z * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
    with torch.no_grad():
        assert torch.equal(m.gesture_logits(fused, z, bucket),
                           m.gesture(torch.cat([fused.mean(dim=1), dyn], dim=-1)))


def test_frame_flops_are_the_counter_and_independent_copies():
    eng = StreamingCaptioner(_model())
    r = eng.process(_counts(0)[0].numpy())
    c = eng.cfg
    args = (r.layer_tokens, 9, 5, 1, True, 17)
    enc = type("Enc", (), {"layer_tokens": r.layer_tokens})()
    first, dense = eng._flops(enc, *args[1:])
    first["decoder"] = -1.0                         # process() edits its copy
    again, dense2 = eng._flops(enc, *args[1:])
    assert again == frame_flops(c, list(r.layer_tokens), 9, 5, 1, learned_mask=True,
                                fusion_tokens=17)
    assert dense2 == dense


@pytest.mark.parametrize("max_age", [8, 32])
def test_age_bucket_table_is_the_rule(max_age):
    """The streaming engines' table lookup gives age_bucket's buckets, for every age (out of
    range too: negative ages count as 0, older ones as never changed)."""
    age = np.arange(-3, max_age + 5)
    want = age_bucket(torch.from_numpy(np.clip(age, 0, None)), max_age)
    got = age_bucket_np(age, max_age)
    assert got.dtype == want.dtype and torch.equal(got, want)
