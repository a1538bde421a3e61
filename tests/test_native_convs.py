"""The change-mask net in one C call (_native/convnets.c via inference/native_convs.py): the same
logits as the net's PyTorch forward up to float rounding, the same mask decisions, its fallbacks,
and weight changes seen; the motion head's trunk and the ANC estimator likewise; the motion
state maps the numpy code's to the bit."""
import os
import shutil

import numpy as np
import pytest
import torch

from edge_vlm.cores.graph import replay_params
from edge_vlm.bench import recordings
from edge_vlm.inference import native_convs
from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.factory import load_model
from edge_vlm.inference.native_convs import LOG1P_TABLE, mask_net_logits, motion_state_maps
from edge_vlm.model.motion import MotionState, patch_channel_counts

from test_model import moving_blob, tiny_model
from test_native_vit import _cpu_flags


def test_library_is_built_and_loaded_where_it_can_be():
    """scripts/setup.sh builds it wherever gcc is; it loads on an x86 CPU with AVX2/FMA."""
    if os.environ.get("EDGE_VLM_NO_NATIVE_CONVS", "") not in ("", "0"):
        assert native_convs.load() is None and native_convs.backend() == "torch"
        return
    if shutil.which("gcc") and {"avx2", "fma"} <= _cpu_flags():
        assert native_convs.load() is not None, native_convs.why()
        assert native_convs.backend() == "native"
    else:
        assert native_convs.backend() in ("native", "torch")


needs_lib = pytest.mark.skipif(native_convs.load() is None,
                               reason=f"library not loaded: {native_convs.why()}")


def _pair(net, hist: np.ndarray):
    h = torch.from_numpy(np.ascontiguousarray(hist, dtype=np.float32))[None]
    lh = torch.log1p(h)
    with torch.no_grad():
        return net(h, lh), mask_net_logits(net, h, lh)


def _random_hist(rng, n=128, density=0.1, high=6):
    return (rng.random((4, n, n)) < density) * rng.integers(1, high, (4, n, n))


@needs_lib
def test_shipped_net_agrees_on_simulated_frames():
    """The shipped checkpoint's net on a simulated test recording: logits within 1e-4 of
    PyTorch's, and every patch on the same side of the threshold (none lies within 1e-4)."""
    model, _ = load_model("")
    params = replay_params(graph=None).captioner
    frames = recordings.sim_frames(recordings.test_recordings(quick=True)[0], params)
    worst, changed = 0.0, 0
    for f in frames:
        ref, nat = _pair(model.mask_net, f.hist)
        assert nat.shape == ref.shape == (1, 256)
        worst = max(worst, float((ref - nat).abs().max()))
        changed += int((ref > 0).sum())
        sure = ref.abs() > 1e-4
        assert torch.equal((ref > 0)[sure], (nat > 0)[sure])
    assert worst <= 1e-4, worst
    assert changed > 0                  # the frames do select patches


@needs_lib
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_nets_and_histograms_agree(seed):
    """A random net (mask head not zero) on dense and sparse random histograms, large counts."""
    m, _ = tiny_model(seed=seed)
    rng = np.random.default_rng(seed)
    for density, high in ((0.02, 3), (0.3, 50), (1.0, 200)):
        ref, nat = _pair(m.mask_net, _random_hist(rng, density=density, high=high))
        assert float((ref - nat).abs().max()) <= 1e-4 * (1 + float(ref.abs().max()))


@needs_lib
def test_falls_back_to_pytorch_where_it_does_not_apply():
    """Batch 2, a width that is not a multiple of 32, training mode, autograd: the PyTorch
    forward itself (bit for bit)."""
    m, _ = tiny_model()
    net = m.mask_net
    rng = np.random.default_rng(3)
    two = torch.from_numpy(np.stack([_random_hist(rng), _random_hist(rng)]).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(mask_net_logits(net, two, torch.log1p(two)), net(two, torch.log1p(two)))
        odd = torch.from_numpy(_random_hist(rng, n=120).astype(np.float32))[None]
        assert torch.equal(mask_net_logits(net, odd, torch.log1p(odd)), net(odd, torch.log1p(odd)))
    one = torch.from_numpy(_random_hist(rng).astype(np.float32))[None]
    assert torch.equal(mask_net_logits(net, one, torch.log1p(one)), net(one, torch.log1p(one)))
    net.train()
    try:
        with torch.no_grad():
            assert torch.equal(mask_net_logits(net, one, torch.log1p(one)),
                               net(one, torch.log1p(one)))
    finally:
        net.eval()


@needs_lib
def test_a_changed_weight_is_seen():
    m, _ = tiny_model()
    net = m.mask_net
    hist = moving_blob(3)
    _, before = _pair(net, hist)
    with torch.no_grad():
        net.head.bias.add_(1.5)
        net.c1.weight.mul_(0.5)
    ref, after = _pair(net, hist)
    assert float((ref - after).abs().max()) <= 1e-4
    assert not torch.allclose(before, after)


@needs_lib
def test_engine_mask_is_the_nets_decision():
    """The streaming engine's learned change mask is the net's decision (threshold 0)."""
    m, _ = tiny_model()
    eng = StreamingCaptioner(m, sparse=True)
    for f in range(4):
        hist = moving_blob(f)
        ref, _ = _pair(m.mask_net, hist)
        assert np.array_equal(eng.change_mask(hist), (ref[0] > 0).numpy())


# ------------------------------------------------------------------------------ motion head
@needs_lib
@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_motion_trunk_agrees_with_pytorch(scale):
    """The shipped motion head's trunk (convs, ReLUs, linear layer) on random motion states."""
    model, _ = load_model("")
    head = model.motion
    torch.manual_seed(int(scale * 10))
    x = torch.rand(1, head.net[0].in_channels, model.cfg.grid, model.cfg.grid) * scale
    with torch.no_grad():
        ref, nat = head._infer(x), native_convs.motion_trunk(head, x)
    assert nat.shape == ref.shape
    assert float((ref - nat).abs().max()) <= 1e-5 * (1 + float(ref.abs().max()))
    assert not torch.equal(ref, nat) or float(ref.abs().max()) == 0   # the kernel did run


@needs_lib
def test_motion_trunk_falls_back_and_sees_weight_changes():
    m, _ = tiny_model(motion_width=8)
    m.add_motion_head()
    head = m.motion.eval()
    torch.manual_seed(0)
    x = torch.rand(2, head.net[0].in_channels, m.cfg.grid, m.cfg.grid)
    with torch.no_grad():
        assert torch.equal(native_convs.motion_trunk(head, x), head._infer(x))     # batch 2
        one = x[:1]
        before = native_convs.motion_trunk(head, one)
        head.net[0].weight.mul_(0.5)
        ref, after = head._infer(one), native_convs.motion_trunk(head, one)
    assert float((ref - after).abs().max()) <= 1e-5 * (1 + float(ref.abs().max()))
    assert not torch.allclose(before, after)
    assert torch.equal(native_convs.motion_trunk(head, one), head._infer(one))    # autograd on


# ------------------------------------------------------------------------------ ANC estimator
@needs_lib
@pytest.mark.parametrize("density,high", [(0.01, 2), (0.1, 5), (0.6, 40)])
def test_estimator_agrees_with_pytorch(density, high):
    """The shipped ANC complexity estimator's level logits, sparse to busy histograms."""
    model, _ = load_model("")
    est = model.estimator
    rng = np.random.default_rng(high)
    h = torch.from_numpy(_random_hist(rng, density=density, high=high).astype(np.float32))[None]
    lh = torch.log1p(h)
    cf, rf = torch.tensor([0.12]), torch.tensor([0.3])
    with torch.no_grad():
        ref = est(h, cf, rf, log_hist=lh)
        nat = native_convs.estimator_logits(est, h, cf, rf, lh)
        two = native_convs.estimator_logits(est, h.repeat(2, 1, 1, 1), cf.repeat(2), rf.repeat(2),
                                            lh.repeat(2, 1, 1, 1))
    assert nat.shape == ref.shape == (1, 3)
    assert float((ref - nat).abs().max()) <= 1e-5 * (1 + float(ref.abs().max()))
    assert torch.equal(two, est(h.repeat(2, 1, 1, 1), cf.repeat(2), rf.repeat(2),
                                log_hist=lh.repeat(2, 1, 1, 1)))        # batch 2: PyTorch


@needs_lib
def test_engines_agree_with_the_pytorch_path():
    """A whole STTF+ANC engine with the kernels and one without (the library unloaded), on a
    simulated recording: the same captions, labels, tokens and routes; confidences to 1e-5."""
    from edge_vlm.bench.anc import anc_model, level_engine
    ck = anc_model("")
    params = replay_params(graph=None).captioner
    frames = recordings.sim_frames(recordings.test_recordings(quick=True)[0], params)
    lib = native_convs.load()
    out = {}
    try:
        for use in (True, False):
            native_convs._State.lib = lib if use else None
            eng = level_engine(ck.model, params, ck.meta, None, True)
            out[use] = [eng.process(f.hist) for f in frames]
    finally:
        native_convs._State.lib = lib
    for a, b in zip(out[True], out[False]):
        assert (a.text, a.label, a.active_tokens, a.route.branch) == (
            b.text, b.label, b.active_tokens, b.route.branch)
        assert abs(a.confidence - b.confidence) <= 1e-5


@needs_lib
def test_motion_state_maps_are_numpys_to_the_bit():
    """Simulated frames, random ages: the maps and the ring of the native call equal
    MotionState.update's on every frame (the ring wraps several times)."""
    params = replay_params(graph=None).captioner
    frames = recordings.sim_frames(recordings.test_recordings(quick=True)[0], params)
    a, b = MotionState(16), MotionState(16)
    rng = np.random.default_rng(0)
    age = rng.integers(0, 33, 256)
    for f in frames:
        age = np.where(rng.random(256) < 0.1, 0, np.minimum(age + 1, 32))
        got = motion_state_maps(a, f.hist, age, 8, 32)
        want = b.update(age, patch_channel_counts(f.hist, 8), 32)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert a.pos == b.pos == len(frames) > 3 * len(a.ring) and np.array_equal(a.ring, b.ring)


@needs_lib
def test_motion_state_maps_where_the_kernel_does_not_apply():
    """Large and fractional counts (log1pf: the last bit may differ), an age outside the table
    (numpy's code runs), another grid (numpy's code)."""
    rng = np.random.default_rng(1)
    age = rng.integers(0, 33, 256)
    hist = rng.poisson(2.0, (4, 128, 128)).astype(np.float32)
    hist[0, :8, :8] = LOG1P_TABLE                           # a patch total past the table
    hist[1, 8:16, :8] += 0.25                               # not counts
    a, b = MotionState(16), MotionState(16)
    got = motion_state_maps(a, hist, age, 8, 32)
    want = b.update(age, patch_channel_counts(hist, 8), 32)
    assert np.allclose(got, want, rtol=1e-6, atol=0) and np.array_equal(a.ring, b.ring)
    old = age.copy()
    old[5] = 40                                             # past max_age: numpy's code
    got = motion_state_maps(a, hist, old, 8, 32)
    assert np.array_equal(got, b.update(old, patch_channel_counts(hist, 8), 32))
    c, d = MotionState(8), MotionState(8)                   # patch 16: 8 x 8 grid
    got = motion_state_maps(c, hist, age[:64], 16, 32)
    assert np.array_equal(got, d.update(age[:64], patch_channel_counts(hist, 16), 32))


@needs_lib
def test_mask_log1p_table_gives_pytorchs_map_bit_for_bit():
    """The kernel reads log1p of counts from a table torch.log1p made: the same logits, bit for
    bit, as from PyTorch's log1p map of the frame; a value the table does not hold (a count past
    it, a fraction) makes it ask for the map."""
    m, _ = tiny_model(seed=4)
    net = m.mask_net
    lib = native_convs.load()
    table = native_convs.mask_log1p_table()
    rng = np.random.default_rng(4)
    hists = [moving_blob(i) for i in range(3)] + [
        _random_hist(rng, density=d, high=hi) for d, hi in ((0.02, 3), (0.3, 50), (1.0, 4096))]
    with torch.no_grad():
        for hist in hists:
            h = torch.from_numpy(np.ascontiguousarray(hist, dtype=np.float32))[None]
            assert torch.equal(torch.log1p(h), table[h.long()])
            a = mask_net_logits(net, h)                          # the table
            pk = native_convs._pack(lib, net, 4, 128, 128)
            lut, pk.struct.lut = pk.struct.lut, None             # the kernel reads the map
            try:
                b = mask_net_logits(net, h, torch.log1p(h))
            finally:
                pk.struct.lut = lut
            assert torch.equal(a, b)
        for value in (float(native_convs.MASK_LOG1P_COUNTS), 2.5):
            h = torch.from_numpy(np.ascontiguousarray(hists[0], dtype=np.float32))[None].clone()
            h[0, 1, 5, 7] = value
            asked = []
            got = mask_net_logits(net, h, lambda: asked.append(1) or torch.log1p(h))
            assert asked == [1]
            assert float((got - net(h, torch.log1p(h))).abs().max()) <= 1e-4
