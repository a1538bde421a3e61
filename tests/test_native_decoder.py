"""The caption decoder's teacher-forced pass through the encoder's block kernel
(inference/native_decoder.py, svit_layer_causal of _native/sparsevit.c): the same logits and KV
caches as MicroGPT.start to float rounding, the same greedy captions, PyTorch's path where the
kernel does not apply (whether the kernel is built at all: test_native_vit.py)."""
import numpy as np
import pytest
import torch

from edge_vlm.inference import native_decoder, native_vit
from edge_vlm.inference.factory import engine_from_params, load_model
from edge_vlm.inference.native_decoder import NativeKV, State, backend, decoder_start
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.decoding import decode_greedy
from edge_vlm.model.sttf import CaptionModel, init_weights
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.params import defaults

from test_model import moving_blob

needs_kernel = pytest.mark.skipif(native_vit.load() is None,
                                  reason=f"kernel not loaded: {native_vit.why()}")


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= tol


@needs_kernel
@pytest.mark.parametrize("layers", [None, 1])
def test_pass_equals_pytorch_on_the_shipped_decoder(layers):
    model, _ = load_model("")
    dec = model.decoder
    torch.manual_seed(0)
    vocab = dec.tok.weight.shape[0]
    with torch.no_grad():
        for t in (1, 2, 7, 16, dec.pos.shape[0] - dec.prefix_len):   # up to every position
            fused = torch.randn(1, dec.prefix_len, dec.pos.shape[1])
            first = torch.randint(0, vocab, (1, t))
            for all_logits in (False, True):
                want, wc = dec.start(fused, first, layers, all_logits)
                got, gc = decoder_start(dec, fused, first, layers, all_logits)
                assert _close(want, got, 1e-4), (t, all_logits, float((want - got).abs().max()))
                assert isinstance(gc, NativeKV) and gc.length == dec.prefix_len + t
                tc = gc.torch_caches()
                assert len(wc) == len(tc) == (layers or len(dec.blocks))
                for a, b in zip(wc, tc):
                    assert _close(a["k"], b["k"], 1e-4) and _close(a["v"], b["v"], 1e-4)
            if dec.prefix_len + t + 1 >= dec.pos.shape[0]:
                continue
            # the next single-token steps agree: PyTorch's on its caches, PyTorch's on the
            # native pass's caches, the kernel's on its own memories
            tc = gc.torch_caches()
            nxt = int(torch.argmax(got[0, -1]))
            for k in range(2):
                pos = dec.prefix_len + t + k
                s1 = dec.step(torch.tensor([[nxt]]), pos, wc)
                s2 = dec.step(torch.tensor([[nxt]]), pos, tc)
                s3 = gc.step(nxt, pos)
                assert _close(s1, s2, 1e-4) and _close(s1, s3, 1e-4), (t, k)
                nxt = int(torch.argmax(s1[0]))
            assert gc.length == dec.prefix_len + t + 2


@needs_kernel
def test_native_cache_trims_refuses_stale_use_and_falls_back(monkeypatch):
    """A cut cache steps on from the cut; another pass makes an older cache unusable (it would
    read that pass's keys); a step the kernel refuses continues on PyTorch's caches."""
    model, _ = load_model("")
    dec = model.decoder
    torch.manual_seed(3)
    fused = torch.randn(1, dec.prefix_len, dec.pos.shape[1])
    first = torch.randint(0, 50, (1, 8))
    p = dec.prefix_len
    with torch.no_grad():
        want, wc = dec.start(fused, first[:, :4], None, True)
        w = dec.step(first[:, 4:5], p + 4, wc)
        _, kv = decoder_start(dec, fused, first, None, True)
        kv.trim(p + 4)                           # the tokens after the 4th are dropped
        assert _close(kv.step(int(first[0, 4]), p + 4), w, 1e-4)
        with pytest.raises(ValueError):
            kv.step(0, p + 9)                    # not the cache's next position
        _, kv2 = decoder_start(dec, fused, first[:, :4], None, True)
        with pytest.raises(RuntimeError):
            kv.step(0, kv.length)                # another pass rewrote the memories
        monkeypatch.setattr(native_vit, "run_layer", lambda *a, **k: None)
        got = kv2.step(int(first[0, 4]), p + 4)  # the kernel refuses: PyTorch's step
        assert kv2.fallback is not None and _close(got, w, 1e-4)
        kv2.trim(p + 2)
        assert all(c["k"].shape[2] == p + 2 for c in kv2.fallback)


@needs_kernel
def test_each_thread_has_its_own_decoder_memories():
    import threading

    model, _ = load_model("")
    dec = model.decoder
    mine = native_decoder._memories(dec)
    other = []
    th = threading.Thread(target=lambda: other.append(native_decoder._memories(dec)))
    th.start()
    th.join()
    assert native_decoder._memories(dec) is mine and other[0] is not mine


@needs_kernel
def test_a_second_shorter_pass_is_not_disturbed_by_a_longer_one():
    """The kernel's memory keeps the longer pass's tokens past the shorter one's end: masked."""
    model, _ = load_model("")
    dec = model.decoder
    torch.manual_seed(1)
    fused = torch.randn(1, dec.prefix_len, dec.pos.shape[1])
    with torch.no_grad():
        decoder_start(dec, fused, torch.randint(0, 50, (1, 20)), None, True)
        first = torch.randint(0, 50, (1, 3))
        want, _ = dec.start(fused, first, None, True)
        got, _ = decoder_start(dec, fused, first, None, True)
    assert _close(want, got, 1e-4)


def test_falls_back_to_pytorch_bit_for_bit():
    torch.manual_seed(2)
    tok = Tokenizer.build(["a person waves", "nothing moves"])
    m = CaptionModel(ModelConfig(dim=32, heads=2, depth=1, dec_layers=2, max_age=8,
                                 vocab=tok.vocab))
    init_weights(m)
    dec = m.eval().decoder
    fused = torch.randn(2, dec.prefix_len, 32)                  # batch 2: PyTorch
    first = torch.randint(0, len(tok.vocab), (2, 4))
    with torch.no_grad():
        a, _ = dec.start(fused, first, None, True)
        b, _ = decoder_start(dec, fused, first, None, True)
    assert torch.equal(a, b)
    a, _ = dec.start(fused[:1], first[:1], None, True)       # autograd on: PyTorch
    b, _ = decoder_start(dec, fused[:1], first[:1], None, True)
    assert torch.equal(a, b) and b.requires_grad
    assert backend() == ("native" if native_vit.load() is not None else "torch")
    State.enabled = False                                     # switched off: PyTorch
    try:
        assert backend() == "torch"
        with torch.no_grad():
            a, _ = dec.start(fused[:1], first[:1], None, True)
            b, _ = decoder_start(dec, fused[:1], first[:1], None, True)
        assert torch.equal(a, b)
    finally:
        State.enabled = True


@needs_kernel
def test_greedy_captions_are_the_same_both_ways():
    model, meta = load_model("")
    params = defaults("vlm_captioner")
    eng = engine_from_params(model, params, meta)
    seen = []
    with torch.no_grad():
        for i in range(12):
            p = eng.perceive(moving_blob(i))
            seen.append(p.fused.clone())
        tok = eng.tok
        for fused in seen:
            a = decode_greedy(model, fused, tok.bos, tok.eos, 20)
            b = decode_greedy(model, fused, tok.bos, tok.eos, 20, start=decoder_start)
            assert a[0] == b[0] and abs(a[1] - b[1]) < 1e-4
            d = a[0][::-1]                  # a wrong draft: the speculative path, then steps
            c = decode_greedy(model, fused, tok.bos, tok.eos, 20, draft=d, start=decoder_start)
            assert c[0] == a[0] and abs(c[1] - a[1]) < 1e-4
    assert np.isfinite(a[1])


@needs_kernel
def test_a_blocks_key_value_only_rows():
    """kv_only: the first rows get their keys and values into the memory (as a whole pass
    would) and no output; the other rows' outputs are the whole pass's."""
    model, _ = load_model("")
    dec = model.decoder
    torch.manual_seed(5)
    s, p = 20, dec.prefix_len
    h = torch.randn(s, dec.pos.shape[1])
    idx = torch.arange(s)
    blk = dec.blocks[-1]
    with torch.no_grad():
        lm_all = native_decoder._memories(dec)[-1]
        full = native_vit.run_layer(blk, lm_all, h, idx, causal_from=p)
        kt, v = lm_all.kt[:, :, :s].clone(), lm_all.v[:, :s].clone()
        part = native_vit.run_layer(blk, lm_all, h, idx, causal_from=p, kv_only=p)
    assert torch.equal(part[:p], h[:p])
    assert _close(part[p:], full[p:], 1e-6)
    assert torch.equal(lm_all.kt[:, :, :s], kt) and torch.equal(lm_all.v[:, :s], v)
