"""Frame clock and the rule-based perception/router cores."""
import numpy as np
import pytest

from edge_vlm.events import make_events
from edge_vlm.stream.frames import FrameClock
from edge_vlm.cores.perception import PerceptionCore
from edge_vlm.cores.router import RouterCore
from edge_vlm.stream.histogram import event_histogram, patch_counts

P = 10_000_000  # 10 ms


def ev(ts, x=5, y=5):
    ts = np.asarray(ts, dtype=np.int64)
    return make_events(ts, np.full(len(ts), x), np.full(len(ts), y), np.ones(len(ts)))


def test_frame_clock_cuts_on_absolute_grid_and_is_chunking_invariant():
    ts = np.sort(np.random.default_rng(0).integers(5 * P, 12 * P, 500))
    whole = FrameClock(P)
    a = whole.push(ev(ts), 128, 128) + whole.flush()
    split = FrameClock(P)
    b = []
    for chunk in np.array_split(ts, 37):
        b += split.push(ev(chunk), 128, 128)
    b += split.flush()
    assert [f.index for f in a] == [f.index for f in b] == list(range(5, 12))
    for fa, fb in zip(a, b):
        assert fa.t_start == fa.index * P and fa.t_end == (fa.index + 1) * P
        assert np.array_equal(fa.events, fb.events)
        assert ((fa.events["t"] >= fa.t_start) & (fa.events["t"] < fa.t_end)).all()
    assert sum(len(f.events) for f in a) == 500


def test_frame_clock_counts_late_events_and_restarts_on_jumps():
    c = FrameClock(P, max_gap_frames=5)
    c.push(ev([10 * P, 11 * P]), 128, 128)
    c.push(ev([10 * P + 1]), 128, 128)          # older than the open frame 11
    assert c.late_events == 1
    out = c.push(ev([1000 * P]), 128, 128)       # forward jump: no 989 empty frames
    assert c.resets == 1 and len(out) == 1 and out[0].index == 11
    out = c.push(ev([3 * P]), 128, 128)          # backwards jump (bag loop)
    assert c.resets == 2 and out == []


def test_histogram_and_mask():
    e = make_events(np.arange(8) * 1000, [0, 1, 2, 3, 9, 9, 9, 9], [0] * 4 + [20] * 4,
                    [1, 0, 1, 0, 1, 1, 1, 1])
    h = event_histogram(e, 0, 8000, 128, 128)
    assert h.shape == (4, 128, 128) and h.sum() == 8
    assert h[1, 0, 0] == 1 and h[0, 0, 1] == 1 and h[3, 20, 9] == 4   # later half, ON -> channel 3
    pc = patch_counts(h, 8)
    assert pc[0, 0] == 4 and pc[2, 1] == 4
    core = PerceptionCore({"event_count_threshold": 4, "mask_method": "event_count"})
    res = core.process(FrameClock(8000).push(np.concatenate([e, ev([9000])]), 128, 128)[0])
    assert sorted(res.active_indices.tolist()) == [0, 2 * 16 + 1]
    assert res.mask_image.shape == (128, 128)
    assert res.mask_image[0, 0] == 255 and res.mask_image[100, 100] == 0
    assert np.all((res.scores > 0) & (res.scores <= 1))


def test_scaled_sensor_maps_to_model_grid():
    e = make_events([0, 1], [639, 0], [479, 0], [1, 1])
    h = event_histogram(e, 0, 10, 640, 480)
    assert h[1, 127, 127] == 1 and h[1, 0, 0] == 1


def test_router_levels_and_budget_cap():
    r = RouterCore({"low_density": 0.001, "high_density": 0.01, "router_method": "density"})
    busy_t = np.linspace(0, P - 1, 2000).astype(np.int64).tolist() + [P]
    busy = FrameClock(P).push(ev(busy_t), 128, 128)[0]
    out = r.process(busy)
    assert out.level == 2 and out.branches == ["medium"]
    assert abs(out.probabilities.sum() - 1) < 1e-5
    r.set_budget(0.3)
    assert r.process(busy).branches == ["tiny"]
    r.set_budget(0.6)
    assert r.process(busy).branches == ["small"]


def test_learned_mask_and_router_cores(tmp_path):
    """Defaults: the checkpoint's change-mask net (untrained = the count rule) and ANC
    estimator."""
    import torch

    from edge_vlm.model.anc import AncModel
    from edge_vlm.model.checkpoint import CheckpointError, save_checkpoint
    from edge_vlm.model.config import ModelConfig
    from edge_vlm.model.sttf import CaptionModel
    from edge_vlm.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    vocab = Tokenizer.build(["a b"]).vocab
    sttf = CaptionModel(ModelConfig(dim=32, heads=2, depth=2, vocab=vocab))
    joint = AncModel.grow_from(sttf)
    with torch.no_grad():
        joint.estimator.fc.weight.zero_()
        joint.estimator.fc.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    ck, ck_sttf = str(tmp_path / "joint.pt"), str(tmp_path / "sttf.pt")
    save_checkpoint(ck, joint)
    save_checkpoint(ck_sttf, sttf)
    e = make_events(np.arange(8) * 1000, [0, 1, 2, 3, 9, 9, 9, 9], [0] * 4 + [20] * 4,
                    [1, 0, 1, 0, 1, 1, 1, 1])
    frame = FrameClock(8000).push(np.concatenate([e, ev([9000])]), 128, 128)[0]
    res = PerceptionCore({"checkpoint": ck}).process(frame)
    assert res.method == "learned" and res.threshold == 0.5
    assert sorted(res.active_indices.tolist()) == [0, 2 * 16 + 1]       # >= 3 events per patch
    r = RouterCore({"checkpoint": ck})
    out = r.process(frame)
    assert out.level == 2 and out.branches == ["medium"]
    assert 0 < out.est_flops < out.est_flops_dense
    r.set_budget(0.3)
    assert r.process(frame).branches == ["tiny"]
    with pytest.raises(CheckpointError, match="no ANC complexity estimator"):
        RouterCore({"checkpoint": ck_sttf})


def _tiny_joint():
    import torch

    from edge_vlm.model.anc import AncModel
    from edge_vlm.model.config import ModelConfig
    from edge_vlm.model.sttf import CaptionModel
    from edge_vlm.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    vocab = Tokenizer.build(["a b"]).vocab
    return AncModel.grow_from(CaptionModel(ModelConfig(dim=32, heads=2, depth=2, vocab=vocab)))


def _hists(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = np.zeros((4, 128, 128), dtype=np.float32)
        y, x = rng.integers(0, 128, 2)
        h[:, max(0, y - 12):y + 12, max(0, x - 12):x + 12] = rng.poisson(1.0, (4, 1, 1))
        out.append(h)
    return out


def _counting(model, monkeypatch):
    calls = []
    real = model.route_logits

    def route_logits(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(model, "route_logits", route_logits)
    return calls


def _same(r, q):
    assert (r.text, r.label, r.confidence, r.active_tokens, r.layer_tokens, r.caption_fresh) == \
        (q.text, q.label, q.confidence, q.active_tokens, q.layer_tokens, q.caption_fresh)
    assert r.route.branches == q.route.branches and r.route.weights == q.route.weights


def test_forced_level_skips_the_estimator_with_the_same_outputs(monkeypatch):
    """force_level: the complexity estimator does not run (its logits decide nothing); the
    frame's outputs are those of the engine that still ran it (the pre-change behaviour)."""
    from edge_vlm.inference.anc_engine import AncStreamingCaptioner
    from edge_vlm.inference.routing import Routing

    joint = _tiny_joint()
    fast = AncStreamingCaptioner(joint, force_level=2)
    ref = AncStreamingCaptioner(joint, force_level=2)

    def estimating_route(hist, change):       # the old rule: estimate, then force the level
        ref.model.route_logits(torch.from_numpy(hist)[None], torch.from_numpy(change)[None],
                               torch.zeros(1, change.size, dtype=torch.long))
        ref.route_estimated = True
        return Routing(np.full(3, 1 / 3), [2], [1.0])

    import torch
    monkeypatch.setattr(ref, "route", estimating_route)
    calls = _counting(joint, monkeypatch)
    for h in _hists(6):
        before = len(calls)
        r, q = fast.process(h), ref.process(h)
        assert len(calls) == before + 1          # the reference's call only
        _same(r, q)
        assert r.route.level == 2 and r.route.probabilities == [0.0, 0.0, 1.0]
        assert r.flops["router"] == 0.0 < q.flops["router"]
        assert {k: v for k, v in r.flops.items() if k != "router"} == \
            {k: v for k, v in q.flops.items() if k != "router"}
    fast.set_budget(0.3)                         # the budget still caps a forced level
    r = fast.process(_hists(1, 9)[0])
    assert r.route.branch == "tiny" and r.route.probabilities == [1.0, 0.0, 0.0]


def test_external_route_with_probabilities_skips_the_estimator(monkeypatch):
    from edge_vlm.inference.anc_engine import AncStreamingCaptioner, RouteOverride

    joint = _tiny_joint()
    a, b = AncStreamingCaptioner(joint), AncStreamingCaptioner(joint)
    calls = _counting(joint, monkeypatch)
    for i, h in enumerate(_hists(5)):
        a.route_override = RouteOverride(["small"], [1.0], 1.0, [0.2, 0.7, 0.1])
        b.route_override = RouteOverride(["small"], [1.0], 1.0)        # no probabilities
        before = len(calls)
        r = a.process(h)
        assert len(calls) == before and a.route_external and not a.route_estimated
        q = b.process(h)
        assert len(calls) == before + 1 and b.route_external and b.route_estimated
        _same(r, q)
        assert r.route.probabilities == pytest.approx([0.2, 0.7, 0.1]) and r.route.level == 1
        assert r.flops["router"] == 0.0 < q.flops["router"]
    # the scheduler keeps anc_router's probabilities with its decision (the node passes them)
    from edge_vlm.cores.schedule import CaptionScheduler

    sched = CaptionScheduler({}, 256, P)
    sched.add_route(P, ["small"], [1.0], 0.5, [0.2, 0.7, 0.1])
    sched.add_route(2 * P, ["tiny"])
    assert sched.routes[P] == RouteOverride(["small"], [1.0], 0.5, [0.2, 0.7, 0.1])
    assert sched.routes[2 * P].probabilities is None
    # malformed probabilities: the estimator runs, the (usable) decision is still followed
    a.route_override = RouteOverride(["small"], [1.0], 1.0, [0.5, float("nan"), 0.5])
    before = len(calls)
    r = a.process(_hists(1, 3)[0])
    assert len(calls) == before + 1 and a.route_external and r.route.branches == ["small"]
    # an unusable decision with probabilities: routed locally by the estimator
    a.route_override = RouteOverride(["huge"], [1.0], 1.0, [0.2, 0.7, 0.1])
    a.process(_hists(1, 4)[0])
    assert len(calls) == before + 2 and not a.route_external


def test_perception_and_router_share_one_mask_net_pass(tmp_path, monkeypatch):
    """One process, one frame: the change-mask net runs once for sttf_perception and
    anc_router (single-process graph), with the outputs of separate passes."""
    import torch

    from edge_vlm.cores import perception
    from edge_vlm.inference.frame_tensors import hist_tensor
    from edge_vlm.model.checkpoint import save_checkpoint

    from edge_vlm.inference.factory import shared_model

    ck = str(tmp_path / "joint.pt")
    save_checkpoint(ck, _tiny_joint())
    held, _ = shared_model(ck)     # as the captioner core holds it in the single-process graph
    pc, rc = PerceptionCore({"checkpoint": ck}), RouterCore({"checkpoint": ck})
    assert rc.model is held
    net = pc.mask_net
    assert rc.model.mask_net is net
    calls = []
    real_forward = net.forward
    real_logits = perception.mask_net_logits       # the net's pass (native or PyTorch)

    def logits(n, x, log_hist):
        calls.append(1)
        return real_logits(n, x, log_hist)

    monkeypatch.setattr(perception, "mask_net_logits", logits)
    rng = np.random.default_rng(1)
    for k in range(4):
        ts = np.sort(rng.integers(k * P, (k + 1) * P, 3000))
        e = make_events(ts, rng.integers(0, 40, 3000), rng.integers(0, 40, 3000),
                        rng.integers(0, 2, 3000))
        frame = FrameClock(P).push(np.concatenate([e, ev([(k + 1) * P])]), 128, 128)[0]
        before = len(calls)
        m, r = pc.process(frame), rc.process(frame)
        assert len(calls) == before + 1
        with torch.no_grad():
            want = real_forward(hist_tensor(frame.hist if frame.hist is not None else
                                            perception.frame_histogram(frame, pc.params))[None])[0]
        assert sorted(m.active_indices.tolist()) == np.flatnonzero(
            torch.sigmoid(want).numpy() > 0.5).tolist()
        # the native conv nets agree with PyTorch to rounding (tests/test_native_convs.py)
        np.testing.assert_allclose(perception.mask_logits(net, perception.frame_histogram(
            frame, pc.params)).numpy(), want.numpy(), rtol=0, atol=1e-4)
        assert r.branches
    # another histogram (or another net) is never served the last result
    other = np.zeros((4, 128, 128), dtype=np.float32)
    before = len(calls)
    perception.mask_logits(net, other)
    assert len(calls) == before + 1


def test_caption_trie_completion_guesses_a_sequence():
    from edge_vlm.inference.grounding import CaptionTrie

    t = CaptionTrie([[5, 6, 7], [5, 8, 7], [5, 8, 9, 4]], eos=2)
    assert t.complete([], []) == [5]                      # unique, then a branch without hint
    assert t.complete([], [8, 9]) == [5, 8, 9, 4]         # the hint picks each branch
    assert t.complete([5], [3, 6]) == [6, 7]              # a hint token that fits is found
    assert t.complete([5, 8], [7]) == [7]                 # ends at EOS (not included)
    assert t.complete([1], [5]) == []                     # not a prefix of any sequence


def test_constrained_speculative_redraft_equals_plain_greedy():
    """The caption constraint's completion as a new draft after a disagreement: the same ids
    (and score up to float noise) as plain constrained greedy decoding, fewer single-token
    steps when the guess is right (one word of the last caption changed)."""
    import torch

    from edge_vlm.inference.grounding import CaptionTrie, gesture_captions
    from edge_vlm.model.config import ModelConfig
    from edge_vlm.model.decoding import decode_greedy
    from edge_vlm.model.sttf import CaptionModel, init_weights
    from edge_vlm.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    texts = [c for k in range(1, 12) for c in gesture_captions(k)]
    tok = Tokenizer.build(texts)
    m = CaptionModel(ModelConfig(dim=32, heads=2, depth=2, max_age=8, vocab=tok.vocab)).eval()
    init_weights(m)
    fewer = 0
    for label in (1, 4, 9):
        seqs = [tok.encode(t, m.cfg.max_len)[1:] for t in gesture_captions(label)]
        seqs = [q[:q.index(tok.eos)] for q in seqs]
        trie = CaptionTrie(seqs, tok.eos)
        for trial in range(6):
            fused = torch.randn(1, m.cfg.fusion_queries, m.cfg.dim) * (1 + trial)
            ref, ref_score = decode_greedy(m, fused, tok.bos, tok.eos, 24, allowed=trie.allowed)
            other = [q for q in seqs if q != ref]
            for d in [ref, other[trial], other[-trial - 1][::-1], ref[:3], []]:
                plain, spec = {}, {}
                ids0, _ = decode_greedy(m, fused, tok.bos, tok.eos, 24, draft=d, stats=plain,
                                        allowed=trie.allowed)
                ids, score = decode_greedy(m, fused, tok.bos, tok.eos, 24, draft=d, stats=spec,
                                           allowed=trie.allowed,
                                           redraft=lambda out, d=d: trie.complete(out,
                                                                                  d[len(out):]))
                assert ids == ids0 == ref and abs(score - ref_score) < 1e-4, (d, ids, ref)
                if d:
                    assert 1 <= len(spec["passes"]) <= 3 and spec["first"] == spec["passes"][0]
                    assert spec["steps"] <= plain["steps"]
                    fewer += spec["steps"] < plain["steps"]
    assert fewer > 0
