"""The fused encoder-block kernel (_native/sparsevit.c via inference/native_vit.py): the same
arithmetic as the PyTorch path (inference/vit.py sparse_step / dense_step), token memory included;
its float16 weight copies only when exact; the fallbacks; weight changes seen."""
import os
import shutil

import numpy as np
import pytest
import torch

from edge_vlm.inference import native_vit
from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.factory import load_model
from edge_vlm.inference.memory import LayerMemory, new_memory
from edge_vlm.inference.vit import dense_infer, dense_step, set_native, sparse_infer, sparse_step
from edge_vlm.model.anc import BranchViT, GatedBlock
from edge_vlm.model.checkpoint import save_checkpoint
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.layers import Block
from edge_vlm.model.sttf import SparseViT

from test_model import moving_blob, tiny_model


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_kernel_is_built_and_loaded_where_it_can_be():
    """scripts/setup.sh builds it wherever gcc is; it loads on an x86 CPU with AVX2/FMA/F16C."""
    if os.environ.get("EDGE_VLM_NO_NATIVE_VIT", "") not in ("", "0"):
        assert native_vit.load() is None and native_vit.backend() == "torch"
        return
    if shutil.which("gcc") and {"avx2", "fma", "f16c"} <= _cpu_flags():
        assert native_vit.load() is not None, native_vit.why()
        assert native_vit.backend() == "native"
    else:
        assert native_vit.backend() in ("native", "torch")


needs_kernel = pytest.mark.skipif(native_vit.load() is None,
                                  reason=f"kernel not loaded: {native_vit.why()}")


def _block(d=32, heads=2, ratio=4, act="relu", half_exact=False, seed=0, gated=False):
    torch.manual_seed(seed)
    blk = (GatedBlock(d, heads, ratio, act, 0.05) if gated else Block(d, heads, ratio, act)).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
            if half_exact:
                p.copy_(p.half().float())
    return blk


@torch.no_grad()
def _memory(blk, n=64, d=32, seed=1):
    """A layer memory filled by a dense torch step over random tokens."""
    g = torch.Generator().manual_seed(seed)
    lm = LayerMemory(n, d, blk.heads)
    x = torch.randn(n, d, generator=g)
    lm.x.copy_(x)
    lm.out.copy_(dense_step(blk, x, lm))
    return lm


def _clone(lm):
    c = LayerMemory(*lm.x.shape, lm.kt.shape[0])
    for k in ("x", "kt", "v", "out"):
        getattr(c, k).copy_(getattr(lm, k))
    return c


def _torch_sparse(blk, lm, x, idx):
    lm.x.index_copy_(0, idx, x)
    y = sparse_step(blk, x, idx, lm)
    lm.out.index_copy_(0, idx, y)
    return y


@needs_kernel
@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("n", [1, 5, 6, 13, 64])
@pytest.mark.parametrize("half_exact", [False, True])
@torch.no_grad()
def test_sparse_layer_matches_torch(act, n, half_exact):
    blk = _block(act=act, half_exact=half_exact)
    lm = _memory(blk)
    lm_t = _clone(lm)
    g = torch.Generator().manual_seed(n)
    idx = torch.from_numpy(np.sort(np.random.default_rng(n).choice(64, n, replace=False)))
    x = torch.randn(n, 32, generator=g)
    want = _torch_sparse(blk, lm_t, x.clone(), idx)
    got = native_vit.run_layer(blk, lm, x, idx)
    assert got is not None
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4)
    for k in ("x", "kt", "v", "out"):           # the token memory updated the same way
        assert torch.allclose(getattr(lm, k), getattr(lm_t, k), atol=2e-5, rtol=1e-4), k
    st = lm._native.struct
    # float16 copies exist exactly when every weight is float16-representable
    assert bool(st.wqkv_h) == half_exact and bool(st.w2_h) == half_exact


@needs_kernel
@torch.no_grad()
def test_sliced_mlp_pads_to_16_channels():
    """An ANC block's budget slice (here 50 channels) is padded with zero channels."""
    blk = _block(gated=True, ratio=4)
    kept = blk.set_budget(0.35)
    assert kept % 16 != 0
    lm = _memory(blk)
    lm_t = _clone(lm)
    idx = torch.tensor([3, 9, 40])
    x = torch.randn(3, 32)
    want = _torch_sparse(blk, lm_t, x.clone(), idx)
    got = native_vit.run_layer(blk, lm, x, idx)
    assert got is not None and torch.allclose(got, want, atol=2e-5, rtol=1e-4)
    assert lm._native.struct.hid == kept + (-kept % 16)


@needs_kernel
@torch.no_grad()
def test_set_budget_keeps_its_slice_and_weight_changes_are_seen():
    blk = _block(gated=True)
    blk.set_budget(0.5)
    first = blk.mlp_slice
    blk.set_budget(0.5)
    assert blk.mlp_slice is first                   # the kernel's packed copy stays valid
    lm = _memory(blk)
    idx, x = torch.tensor([0, 7]), torch.randn(2, 32)
    a = native_vit.run_layer(blk, _clone(lm), x, idx)
    blk.qkv.weight.mul_(0.5)                     # in place: the version counter moves
    blk.set_budget(0.5)
    lm2 = _clone(lm)
    b = native_vit.run_layer(blk, lm2, x, idx)
    want = _torch_sparse(blk, _clone(lm), x.clone(), idx)
    assert not torch.allclose(a, b) and torch.allclose(b, want, atol=2e-5, rtol=1e-4)


@needs_kernel
def test_fallbacks_write_nothing():
    blk = _block()
    lm = _memory(blk)
    before = _clone(lm)
    idx, x = torch.tensor([1, 2]), torch.randn(2, 32)
    assert native_vit.run_layer(blk, lm, x, idx) is None      # autograd recording: PyTorch path
    with torch.no_grad():
        assert native_vit.run_layer(blk, lm, x.double(), idx) is None
        odd = Block(24, 2, 4, "relu").eval()                        # head dim 12: not the kernel's
        lm_odd = LayerMemory(64, 24, 2)
        assert native_vit.run_layer(odd, lm_odd, torch.randn(2, 24), idx) is None
    for k in ("x", "kt", "v", "out"):
        assert torch.equal(getattr(lm, k), getattr(before, k))


@needs_kernel
@torch.no_grad()
def test_vit_passes_match_between_backends():
    """dense_infer and sparse_infer of a ViT (with per-layer gating) agree across backends."""
    cfg = ModelConfig(dim=32, heads=2, depth=3)
    torch.manual_seed(0)
    vit = SparseViT(cfg).eval()
    e = torch.randn(cfg.num_tokens, 32)
    e2 = e.clone()
    idx = torch.arange(0, cfg.num_tokens, 9)
    e2[idx] += torch.randn(len(idx), 32)
    outs = {}
    for nat in (True, False):
        set_native(vit, nat)
        mem = new_memory(vit)
        d = dense_infer(vit, e, mem)
        s, counts = sparse_infer(vit, e2, idx, mem, [0.0, 0.3, 0.3])
        outs[nat] = (d, s, counts, [m.kt.clone() for m in mem])
    assert torch.allclose(outs[True][0], outs[False][0], atol=1e-4)
    assert torch.allclose(outs[True][1], outs[False][1], atol=1e-4)
    assert outs[True][2] == outs[False][2] and outs[True][2][0] == len(idx)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(outs[True][3], outs[False][3]))


@needs_kernel
def test_engine_results_match_between_backends():
    """A streaming sparse engine: the same labels, captions and active tokens on both backends."""
    m, _ = tiny_model()
    runs = {}
    for nat in (True, False):
        set_native(m.vit, nat)
        eng = StreamingCaptioner(m, sparse=True, refresh_period=4)
        runs[nat] = [eng.process(moving_blob(f)) for f in range(8)]
    set_native(m.vit, True)
    for a, b in zip(runs[True], runs[False]):
        assert ((a.label, a.text, a.active_tokens, a.refreshed)
                == (b.label, b.text, b.active_tokens, b.refreshed))


@needs_kernel
@torch.no_grad()
def test_sparse_passes_renormalise_only_recomputed_tokens_and_stay_exact():
    """The one-call pass re-normalises only the recomputed tokens into the memory's vision tokens
    (``mem[-1].vis``): after any mix of sparse, dense and PyTorch passes and weight changes they
    equal the final norm of every token's last-layer output, as the PyTorch path computes it."""
    cfg = ModelConfig(dim=32, heads=2, depth=2)
    torch.manual_seed(3)
    vit = SparseViT(cfg).eval()
    mem, ref = new_memory(vit), new_memory(vit)
    g = torch.Generator().manual_seed(4)
    e = torch.randn(cfg.num_tokens, 32, generator=g)

    def step(native: bool, dense: bool = False):
        nonlocal e
        idx = torch.randperm(cfg.num_tokens, generator=g)[:9].sort().values
        e = e.clone()
        e[idx] += torch.randn(len(idx), 32, generator=g)
        outs = []
        for m, nat in ((mem, native), (ref, False)):
            set_native(vit, nat)
            outs.append(dense_infer(vit, e, m, inplace=True) if dense
                        else sparse_infer(vit, e, idx, m, [], inplace=True)[0])
        set_native(vit, True)
        assert outs[0] is mem[-1].vis and mem[-1].vis_ok
        assert torch.allclose(outs[0], vit.ln(mem[-1].out), atol=1e-5)
        assert torch.allclose(outs[0], outs[1], atol=1e-4)

    step(True, dense=True)
    for _ in range(3):
        step(True)
    step(False)                                    # the PyTorch path on the same memory
    step(True)
    vit.ln.weight.mul_(1.5)                        # the final norm changes: every token anew
    step(True)
    mem[-1].out = mem[-1].out.clone()              # a replaced memory tensor: the same
    step(True)


@needs_kernel
@torch.no_grad()
def test_passes_return_a_copy_unless_inplace():
    """By default a pass returns its own tensor; ``inplace`` returns the memory's, which the next
    pass over that memory updates in place (what the engines keep as ``memory``)."""
    cfg = ModelConfig(dim=32, heads=2, depth=2)
    torch.manual_seed(5)
    vit = SparseViT(cfg).eval()
    e = torch.randn(cfg.num_tokens, 32)
    for nat in (True, False):
        set_native(vit, nat)
        mem = new_memory(vit)
        first = dense_infer(vit, e, mem)
        kept = first.clone()
        again = sparse_infer(vit, e * 2, torch.tensor([1, 2, 3]), mem, [])[0]
        assert first is not mem[-1].vis and again is not mem[-1].vis
        assert torch.equal(first, kept) and not torch.equal(again, kept)
        shared = sparse_infer(vit, e * 3, torch.tensor([4, 5]), mem, [], inplace=True)[0]
        assert shared is mem[-1].vis
    set_native(vit, True)


@needs_kernel
@torch.no_grad()
def test_a_new_anc_budget_rebuilds_the_cached_pass():
    """An ANC branch's channel slice (set_budget) is part of the cached native plan: a new budget
    makes it stale, and the pass then matches the PyTorch path at the new budget."""
    cfg = ModelConfig(dim=32, heads=2, depth=2)
    torch.manual_seed(6)
    vit = BranchViT(cfg, depth=2, mlp_ratio=4, temperature=0.05).eval()
    e = torch.randn(cfg.num_tokens, 32)
    idx = torch.tensor([0, 9, 33])
    outs = {}
    for beta in (0.9, 0.3):
        vit.set_budget(beta)
        for nat in (True, False):
            set_native(vit, nat)
            mem = outs.setdefault(nat, new_memory(vit))
            dense_infer(vit, e, mem)
            outs[nat, beta] = sparse_infer(vit, e * 1.5, idx, mem, [])[0]
        set_native(vit, True)
        assert torch.allclose(outs[True, beta], outs[False, beta], atol=1e-4)
    assert not torch.allclose(outs[True, 0.9], outs[True, 0.3])


@needs_kernel
@torch.no_grad()
def test_whole_pass_sees_weight_and_memory_changes():
    """The cached per-ViT plan of the one-call pass is rebuilt when a weight changes in place or
    a layer memory is replaced."""
    cfg = ModelConfig(dim=32, heads=2, depth=2)
    torch.manual_seed(1)
    vit = SparseViT(cfg).eval()
    e = torch.randn(cfg.num_tokens, 32)
    idx = torch.tensor([0, 5, 17])

    def both():
        out = {}
        for nat in (True, False):
            set_native(vit, nat)
            mem = new_memory(vit)
            dense_infer(vit, e, mem)
            out[nat] = sparse_infer(vit, e * 1.5, idx, mem, [])[0]
        set_native(vit, True)
        return out

    a = both()
    assert torch.allclose(a[True], a[False], atol=1e-4)
    mem = new_memory(vit)
    dense_infer(vit, e, mem)
    before = sparse_infer(vit, e * 1.5, idx, mem, [])[0]
    vit.blocks[1].proj.weight.mul_(2.0)
    after = sparse_infer(vit, e * 1.5, idx, mem, [])[0]
    set_native(vit, False)
    want = sparse_infer(vit, e * 1.5, idx, mem, [])[0]
    set_native(vit, True)
    assert not torch.allclose(before, after) and torch.allclose(after, want, atol=1e-4)
    mem[1].kt = mem[1].kt.clone()                  # a replaced memory tensor: new pointers
    again = sparse_infer(vit, e * 1.5, idx, mem, [])[0]
    assert torch.allclose(again, want, atol=1e-4)


def test_shared_version_counter_keeps_the_model_and_sees_every_change():
    """share_version_counter: the same parameters (names, values, requires_grad) as views of one
    buffer with one version counter; an in-place change of any weight, a load_state_dict and an
    optimiser step all reach the cached plan of the one-call pass (its one-read check)."""
    cfg = ModelConfig(dim=32, heads=2, depth=2)
    torch.manual_seed(2)
    vit = SparseViT(cfg).eval()
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    old = list(vit.parameters())
    assert native_vit.share_version_counter(vit)
    assert list(vit.state_dict()) == list(sd)
    assert all(torch.equal(vit.state_dict()[k], v) for k, v in sd.items())
    assert all(a is not b and a.requires_grad == b.requires_grad
               for a, b in zip(vit.parameters(), old))
    shared = vit.__dict__["_native_shared"]
    assert "_native_shared" not in dict(vit.named_parameters())
    e = torch.randn(cfg.num_tokens, 32)
    idx = torch.tensor([1, 9, 30])

    with torch.no_grad():
        mem = new_memory(vit)
        dense_infer(vit, e, mem)

    def step(native=True):
        """The same sparse step on the same memory (recomputing the same tokens is idempotent)."""
        set_native(vit, native)
        with torch.no_grad():
            out = sparse_infer(vit, e * 1.5, idx, mem, [])[0]
        set_native(vit, True)
        return out

    before = step()
    v0 = shared._version
    with torch.no_grad():
        vit.blocks[0].mlp[2].bias.add_(torch.linspace(-1, 1, 32))  # far from the shared one
    assert shared._version > v0
    after = step()
    assert not torch.allclose(before, after) and torch.allclose(after, step(False), atol=1e-4)
    vit.load_state_dict(sd)                              # copies in place: seen too
    assert torch.allclose(step(), before, atol=1e-5)
    opt = torch.optim.SGD(vit.parameters(), lr=0.1)      # training still works on the views
    vit(e[None]).square().mean().backward()
    assert all(p.grad is not None for p in vit.blocks[1].parameters())
    opt.step()
    stepped = step()
    assert not torch.allclose(stepped, before) and torch.allclose(stepped, step(False), atol=1e-4)


def test_shared_version_counter_leaves_odd_models_alone():
    """Tied weights or non-float32 parameters: nothing is changed."""
    cfg = ModelConfig(dim=32, heads=2, depth=2)
    vit = SparseViT(cfg)
    vit.blocks[1].ln1.weight = vit.blocks[0].ln1.weight         # tied
    before = list(vit.parameters())
    assert not native_vit.share_version_counter(vit) and list(vit.parameters()) == before
    half = SparseViT(cfg).half()
    assert not native_vit.share_version_counter(half)
    assert "_native_shared" not in vit.__dict__ and "_native_shared" not in half.__dict__


def test_loaded_models_share_one_version_counter_per_encoder(tmp_path):
    m, _ = tiny_model()
    save_checkpoint(str(tmp_path / "m.pt"), m)
    loaded, _ = load_model(str(tmp_path / "m.pt"))
    vits = [x for x in loaded.modules() if isinstance(x, SparseViT)]
    assert vits and all("_native_shared" in v.__dict__ for v in vits)
    # the per-CPU backend choice is made at load, not on the first frame
    assert all("_native_choice" in v.__dict__ for v in vits)


# ---- the AVX-512 kernels, their dispatch, and the per-CPU backend choice ----------------------

_AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


@needs_kernel
def test_dispatch_picks_the_widest_kernels_this_cpu_runs():
    """AVX-512 where the CPU has AVX-512F/BW/VL/DQ (this project's Xeons), else AVX2; set_isa
    narrows it, never widens it past the CPU, and None restores the default."""
    widest = "avx512" if _AVX512 <= _cpu_flags() else "avx2"
    assert native_vit.isa() == widest
    try:
        assert native_vit.set_isa("avx2") == "avx2" == native_vit.isa()
        assert native_vit.set_isa("avx512") == widest
        with pytest.raises(ValueError):
            native_vit.set_isa("sse2")
    finally:
        assert native_vit.set_isa(None) == widest


@pytest.fixture(params=["avx2", "avx512"])
def isa(request):
    """Each kernel set in turn (the AVX-512 one skipped where the CPU lacks it)."""
    if native_vit.load() is None:
        pytest.skip(f"kernel not loaded: {native_vit.why()}")
    if native_vit.set_isa(request.param) != request.param:
        native_vit.set_isa(None)
        pytest.skip(f"this CPU does not run the {request.param} kernels")
    yield request.param
    native_vit.set_isa(None)


@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 16, 17, 25, 49, 64])
@pytest.mark.parametrize("half_exact", [False, True])
@torch.no_grad()
def test_each_kernel_set_matches_torch(isa, act, n, half_exact):
    """Every row-tile height (1..12 rows, balanced splits of n) and both weight precisions, on
    a 48-wide block (3 heads of 16; its qkv and proj outputs end in a 16-column tail after the
    32-column tiles), against the PyTorch sparse step; the token memory is updated the same way."""
    blk = _block(d=48, heads=3, ratio=2, act=act, half_exact=half_exact, seed=n)
    lm = _memory(blk, n=80, d=48)
    lm_t = _clone(lm)
    g = torch.Generator().manual_seed(100 + n)
    idx = torch.from_numpy(np.sort(np.random.default_rng(n).choice(80, n, replace=False)))
    x = torch.randn(n, 48, generator=g)
    want = _torch_sparse(blk, lm_t, x.clone(), idx)
    got = native_vit.run_layer(blk, lm, x, idx)
    assert got is not None and native_vit.isa() == isa
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4)
    for k in ("x", "kt", "v", "out"):
        assert torch.allclose(getattr(lm, k), getattr(lm_t, k), atol=2e-5, rtol=1e-4), k


@torch.no_grad()
def test_each_kernel_set_runs_whole_passes_like_torch(isa):
    """A dense pass (256 tokens: the float32 weights on AVX-512) and sparse passes (the float16
    copies) of a float16-exact ViT of the shipped width, against the PyTorch passes."""
    cfg = ModelConfig(dim=128, heads=4, depth=2, mlp_ratio=4)
    torch.manual_seed(7)
    vit = SparseViT(cfg).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(p.half().float())
    e = torch.randn(cfg.num_tokens, 128)
    outs = {}
    for nat in (True, False):
        set_native(vit, nat)
        mem = new_memory(vit)
        outs[nat] = [dense_infer(vit, e, mem)]
        for n in (1, 16, 40):
            idx = torch.randperm(cfg.num_tokens, generator=torch.Generator().manual_seed(n))[:n]
            outs[nat].append(sparse_infer(vit, e * (1 + n / 100), idx.sort().values, mem, [])[0])
    set_native(vit, None)
    for a, b in zip(outs[True], outs[False]):
        assert torch.allclose(a, b, atol=1e-4)


@needs_kernel
@torch.no_grad()
def test_backend_choice_is_measured_per_cpu_and_kept():
    """By default a ViT's passes run on the backend its calibration measured faster on this CPU,
    per pass kind, decided once per ViT shape; set_native forces one; without the kernel (or its
    AVX-512 set) the choice is the faster of what remains."""
    from edge_vlm.inference import vit as vit_mod
    cfg = ModelConfig(dim=32, heads=2, depth=2)
    torch.manual_seed(8)
    a, b = SparseViT(cfg).eval(), SparseViT(cfg).eval()
    choice = vit_mod.backend_choice(a)
    assert vit_mod.backend_choice(b) is choice           # the same shape: measured once
    t = choice.timings_ms
    assert set(t) == {"dense_native", "dense_torch", "sparse_native", "sparse_torch"}
    assert all(v > 0 for v in t.values())
    assert choice.dense == (t["dense_native"] <= t["dense_torch"])
    assert choice.sparse == (t["sparse_native"] <= t["sparse_torch"])
    assert choice.isa == native_vit.isa()
    assert vit_mod.native_mode(a) is None                 # the calibration left it as it was
    assert vit_mod.native_on(a) == choice.sparse
    assert vit_mod.native_on(a, dense=True) == choice.dense
    set_native(a, False)
    assert not vit_mod.native_on(a) and not vit_mod.native_on(a, dense=True)
    set_native(a, None)
    assert vit_mod.native_on(a) == choice.sparse
    assert choice.names() == {"dense": "native" if choice.dense else "torch",
                              "sparse": "native" if choice.sparse else "torch"}


@torch.no_grad()
def test_prefetch_changes_no_value(isa):
    """The next-layer prefetch (on by default) gives bit-identical passes and memories."""
    cfg = ModelConfig(dim=128, heads=4, depth=3, mlp_ratio=4)
    torch.manual_seed(9)
    vit = SparseViT(cfg).eval()
    for p in vit.parameters():
        p.copy_(p.half().float())
    set_native(vit, True)
    e = torch.randn(cfg.num_tokens, 128)
    runs = {}
    for on in (True, False):
        was = native_vit.set_prefetch(on)
        mem = new_memory(vit)
        outs = [dense_infer(vit, e, mem)]
        for n in (1, 16, 64, 65):
            idx = torch.randperm(cfg.num_tokens, generator=torch.Generator().manual_seed(n))[:n]
            outs.append(sparse_infer(vit, e * (1 + n / 50), idx.sort().values, mem, [])[0])
        runs[on] = outs + [t.clone() for lm in mem for t in (lm.x, lm.kt, lm.v, lm.out)]
        native_vit.set_prefetch(was)
    set_native(vit, None)
    assert native_vit.set_prefetch(None) is True          # the default, restored
    assert all(torch.equal(a, b) for a, b in zip(runs[True], runs[False]))
