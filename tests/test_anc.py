"""ANC joined with STTF: function-preserving growth, sliced channel gates, budget routing,
FLOPs counter vs torch, checkpoint format."""
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import edge_vlm.inference.anc_engine as anc_engine
from edge_vlm.inference.anc_engine import AncStreamingCaptioner
from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.factory import apply_params, engine_from_params, load_model
from edge_vlm.inference.memory import LayerMemory, new_memory
from edge_vlm.inference.routing import choose_branches
from edge_vlm.inference.vit import dense_infer, dense_step, sparse_infer
from edge_vlm.model.anc import AncModel, budget_cap
from edge_vlm.model.checkpoint import save_checkpoint
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.sttf import CaptionModel, init_weights
from edge_vlm.model.flops import estimator_flops, vit_flops
from edge_vlm.model.tokenizer import Tokenizer


def tiny_pair(seed=0):
    torch.manual_seed(seed)
    tok = Tokenizer.build(["a person waves the right hand quickly",
                           "a tall person claps hands slowly"])
    m = CaptionModel(ModelConfig(dim=32, heads=2, depth=2, max_age=8, vocab=tok.vocab))
    init_weights(m)
    m.eval()
    return m, AncModel.grow_from(m).eval(), tok


def blob(f):
    h = np.zeros((4, 128, 128), dtype=np.float32)
    h[1, 40:56, 20 + 3 * f:30 + 3 * f] = 2
    h[0, 40:56, 30 + 3 * f:33 + 3 * f] = 1
    return h


def test_growth_is_function_preserving():
    """Small is the STTF encoder; Medium starts as Small (identity layers, zero extra channels)."""
    m, a, _ = tiny_pair()
    for level in (1, 2):
        s, e = StreamingCaptioner(m), AncStreamingCaptioner(a, force_level=level)
        for f in range(5):
            rs, ra = s.process(blob(f)), e.process(blob(f))
            assert torch.allclose(s.memory, e.memory, atol=1e-5)
            assert rs.label == ra.label and rs.text == ra.text
        assert ra.route.branch == ("small", "medium")[level - 1]


def test_sliced_gates_equal_hard_masked_channels_and_save_flops():
    _, a, _ = tiny_pair()
    blk = a.branches[2].blocks[0]
    torch.nn.init.normal_(blk.mlp[2].weight, std=0.1)
    x = torch.randn(7, a.cfg.dim)
    for beta in (0.3, 0.6, 1.0):
        keep = (blk.theta.detach() < beta).float()
        fc1, fc2 = blk.mlp[0], blk.mlp[2]
        ref = fc2(blk.act_fn(fc1(x)) * keep)
        n = blk.set_budget(beta)
        assert n == int(keep.sum()) and torch.allclose(blk.feed_forward(x), ref, atol=1e-5)
    kept = [AncStreamingCaptioner(a, compute_budget=b).kept[2] for b in (0.7, 0.8, 0.9, 1.0)]
    assert [sum(k) for k in kept] == sorted(sum(k) for k in kept) and sum(kept[0]) < sum(kept[-1])
    c = a.cfg
    with FlopCounterMode(display=False) as fc:
        blk.set_budget(0.5)
        dense_step(blk, torch.randn(c.num_tokens, c.dim),
                   LayerMemory(c.num_tokens, c.dim, c.heads))
    from dataclasses import replace
    want = vit_flops(replace(c, mlp_ratio=a.acfg.mlp_ratios[2]), [c.num_tokens], [blk.kept()])
    assert abs(fc.get_total_flops() - want) / want < 0.05


def test_budget_caps_the_route_and_changes_cost_at_runtime():
    _, a, _ = tiny_pair()
    assert [budget_cap(b) for b in (0.2, 0.34, 0.6, 0.67, 1.0)] == [0, 1, 1, 2, 2]
    eng = AncStreamingCaptioner(a, force_level=2)
    r_full = [eng.process(blob(f)) for f in range(3)][-1]
    eng.set_budget(0.3)
    r_switch = eng.process(blob(3))         # the first Tiny frame is dense (its memory is stale)
    r_low = eng.process(blob(4))
    assert r_full.route.branch == "medium" and r_low.route.branch == "tiny"
    assert r_switch.refreshed and not r_low.refreshed and not r_full.refreshed
    assert r_low.flops["encoder"] < r_full.flops["encoder"]
    assert r_low.route.params_active < r_full.route.params_active
    assert r_low.flops_dense == r_full.flops_dense      # the reference is always Medium-only dense


def test_router_runs_a_branch_and_costs_little():
    _, a, _ = tiny_pair()
    eng = AncStreamingCaptioner(a)
    for f in range(3):
        r = eng.process(blob(f))
        assert abs(sum(r.route.weights) - 1) < 1e-6 and r.route.branches
        assert abs(sum(r.route.probabilities) - 1) < 1e-5
    c = a.cfg
    with FlopCounterMode(display=False) as fc:
        a.route_logits(torch.rand(1, 4, 128, 128), torch.zeros(1, c.num_tokens),
                       torch.zeros(1, c.num_tokens))
    assert abs(fc.get_total_flops() - estimator_flops(c)) / estimator_flops(c) < 0.05


def test_anc_checkpoint_roundtrip_and_engine_factory(tmp_path):
    _, a, _ = tiny_pair()
    p = tmp_path / "anc.pt"
    save_checkpoint(str(p), a, extra={"model_id": "anc-test"})
    b, extra = load_model(str(p))
    assert isinstance(b, AncModel) and extra["model_id"] == "anc-test"
    eng = engine_from_params(b, {"compute_budget": 0.5, "refresh_period": 0}, extra)
    assert isinstance(eng, AncStreamingCaptioner) and eng.budget == 0.5
    r = eng.process(blob(0))
    assert r.route.budget == 0.5 and r.route.branch in ("tiny", "small")


def test_start_up_and_runtime_parameters_take_the_same_mapping():
    """engine_from_params is the engine's defaults plus apply_params: an engine built with the
    parameters and one that gets them at runtime end in the same state and give the same frames."""
    _, a, _ = tiny_pair()
    meta = {"layer_thresholds": [0.0, 0.1, 0.1, 0.1]}
    params = {"event_count_threshold": 5, "refresh_period": 7, "decoding": "beam", "beam_size": 2,
              "max_caption_tokens": 99, "caption_period": 0, "caption_reuse_threshold": 0.1,
              "mask_method": "event_count", "drift_bound": 0.5, "layer_threshold_scale": 2.0,
              "compute_budget": 0.5, "num_threads": torch.get_num_threads(), "use_rgb": "never"}
    built = engine_from_params(a, params, meta)
    changed = engine_from_params(a, {}, meta)
    assert changed.layer_thresholds == meta["layer_thresholds"]      # scale 1 by default
    apply_params(changed, params, meta)

    def state(e):
        return (e.k, e.refresh_period, e.decoding, e.beam_size, e.max_tokens, e.caption_period,
                e.caption_reuse, e.mask_method, e.drift_bound, e.layer_thresholds, e.budget)

    want = (5, 7, "beam", 2, a.cfg.max_len, 1, 0.1, "event_count", 0.5, [0.0, 0.2, 0.2, 0.2], 0.5)
    assert state(built) == state(changed) == want
    for f in range(3):
        r1, r2 = built.process(blob(f)), changed.process(blob(f))
        assert (r1.text, r1.label, r1.route, r1.active_tokens) == (r2.text, r2.label, r2.route,
                                                                  r2.active_tokens)


def test_routing_rule_caps_renormalises_and_falls_back_to_the_most_probable():
    p = np.array([0.2, 0.3, 0.5], dtype=np.float32)
    r = choose_branches(p, 1.0, 0.45)
    assert r.run == [2] and r.weights == [1.0] and r.probabilities is p
    r = choose_branches(p, 0.5, 0.5)                  # capped at Small: (0.4, 0.6) -> Small
    assert r.run == [1] and r.weights == [1.0]
    r = choose_branches(p, 1.0, 0.25)                 # two branches, weights renormalised
    assert r.run == [1, 2] and abs(r.weights[0] - 0.375) < 1e-6 and abs(sum(r.weights) - 1) < 1e-6
    r = choose_branches(np.array([0.34, 0.33, 0.33]), 1.0, 0.5)   # none above: the most probable
    assert r.run == [0] and r.weights == [1.0]


def test_training_forward_and_backward():
    _, a, tok = tiny_pair()
    a.train()
    b, t = 2, 3
    hist = torch.from_numpy(np.stack([np.stack([blob(f) for f in range(t)])] * b).astype(np.uint8))
    ids = torch.tensor([tok.encode("a person waves", a.cfg.max_len)] * b)
    out = a(hist, None, torch.zeros(b, dtype=torch.bool), torch.ones(b, t, dtype=torch.bool),
            ids[:, :-1],
            beta=torch.tensor([1.0, 0.4]))
    assert len(out["branches"]) == 3 and out["router"].shape == (b, 3)
    loss = (sum(o["gesture"].sum() + o["caption"].sum() for o in out["branches"])
            + out["router"].sum())
    loss.backward()
    assert a.estimator.fc.weight.grad is not None
    assert a.branches[2].blocks[0].theta.grad is not None
    assert a.mask_net.c1.weight.grad is None        # the STTF front end is kept (no gradient)


def test_masked_training_step_equals_the_sparse_inference_step():
    """Train with masks (fixed shapes), infer with a gather: the same numbers."""
    _, a, _ = tiny_pair()
    br = a.branches[2]
    for blk in br.blocks:
        torch.nn.init.normal_(blk.proj.weight, std=0.1)
        torch.nn.init.normal_(blk.mlp[2].weight, std=0.1)
    e_prev = torch.randn(a.cfg.num_tokens, a.cfg.dim)
    e = e_prev.clone()
    idx = torch.tensor([3, 50, 100])
    e[idx] += torch.randn(3, a.cfg.dim)
    with torch.no_grad():
        mem = new_memory(br)
        dense_infer(br, e_prev, mem)
        out, _ = sparse_infer(br, e, idx, mem, [])
        m = torch.zeros(1, a.cfg.num_tokens)
        m[0, idx] = 1
        ref = br.masked_forward(e_prev[None], e[None], m)[0]
    assert torch.allclose(out, ref, atol=1e-5)


def test_training_forward_with_masks_runs():
    _, a, tok = tiny_pair()
    b, t = 2, 4
    hist = torch.from_numpy(np.stack([np.stack([blob(f) for f in range(t)])] * b).astype(np.uint8))
    ids = torch.tensor([tok.encode("a person waves", a.cfg.max_len)] * b)
    out = a(hist, None, torch.zeros(b, dtype=torch.bool), torch.ones(b, t, dtype=torch.bool),
            ids[:, :-1],
            beta=torch.ones(b), sparse_from=2)
    sum(o["gesture"].sum() for o in out["branches"]).backward()
    assert a.branches[1].blocks[0].qkv.weight.grad is not None


def test_complexity_levels_split_hand_speed_at_the_simulators_low_motion_bound():
    from edge_vlm.model.anc import COMPLEXITY_SPEEDS, complexity_level
    from edge_vlm.sim.gestures import LOW_MOTION_HAND_SPEED

    assert COMPLEXITY_SPEEDS[0] == LOW_MOTION_HAND_SPEED
    assert complexity_level([0.0, 44.9, 45.0, 99.9, 100.0, 300.0]).tolist() == [0, 0, 1, 1, 2, 2]


def test_conditional_decoder_pathway_picks_depth_and_beam_width(monkeypatch):
    """Tiny decodes greedily with one decoder block, Medium with the node's beam width and all
    its blocks; the FLOPs counter charges what ran."""
    import edge_vlm.inference.engine as E
    from edge_vlm.model.flops import decoder_flops

    _, a, _ = tiny_pair()
    calls = []
    beam, greedy = E.decode_beam, E.decode_greedy

    def spy_beam(model, fused, bos, eos, max_len, width, layers, **kw):
        calls.append(("beam", width, layers))
        ids, score = beam(model, fused, bos, eos, max_len, width, layers, **kw)
        calls[-1] += (len(ids),)
        return ids, score

    def spy_greedy(model, fused, bos, eos, max_len, layers, **kw):
        calls.append(("greedy", 1, layers))
        ids, score = greedy(model, fused, bos, eos, max_len, layers, **kw)
        calls[-1] += (len(ids),)
        return ids, score

    monkeypatch.setattr(E, "decode_beam", spy_beam)
    monkeypatch.setattr(E, "decode_greedy", spy_greedy)
    dl = a.acfg.decoder_layers
    for lv, want in ((0, ("greedy", 1, dl[0])), (2, ("beam", 3, dl[2]))):
        calls.clear()
        r = AncStreamingCaptioner(a, force_level=lv, decoding="beam", beam_size=3).process(blob(0))
        assert len(calls) == 1 and calls[0][:3] == want, calls
        assert r.route.branch == ("tiny", "small", "medium")[lv]
        assert r.flops["decoder"] == decoder_flops(a.cfg, calls[0][3] + 1, want[1], want[2])


def test_router_fit_learns_complexity_levels_and_does_not_collapse():
    """fit_estimator on synthetic frames whose event count grows with the complexity level, while
    the branch losses alone would favour Medium everywhere: the fitted router follows the levels
    (the complexity term), so it uses all three branches."""
    from edge_vlm.training.train_anc import branch_costs
    from edge_vlm.training.train_router import RouterFitConfig, fit_estimator, routing_report

    _, a, _ = tiny_pair()
    g = torch.Generator().manual_seed(0)
    n = 240
    level = torch.arange(n) % 3
    hist = torch.zeros(n, 4, 128, 128, dtype=torch.uint8)
    for i in range(n):
        w = 8 + 24 * int(level[i])                      # faster motion: a wider band of events
        x0 = int(torch.randint(0, 128 - w, (1,), generator=g))
        hist[i, 0, 40:60, x0:x0 + w] = 2
    loss = torch.tensor([0.3, 0.2, 0.0]).repeat(n, 1)   # Medium always a little better
    data = {"hist": hist, "change": level.float() / 10, "recent": level.float() / 5, "loss": loss,
            "level": level, "motion": ["low" if lv == 0 else "high" for lv in level.tolist()]}
    tc = RouterFitConfig(epochs=60, batch=64, lr=1e-2)
    fit_estimator(a, data, None, branch_costs(a), tc, np.random.default_rng(0))
    rep = routing_report(a, data)
    assert rep["level_agreement"] > 0.9, rep
    assert min(rep["route_share"]) > 0.2, rep
    assert not any(p.requires_grad for p in a.parameters())


def test_switching_back_to_a_branch_catches_up_sparsely():
    """A branch that skipped frames recomputes only the tokens changed meanwhile (the union),
    not the whole memory; one that never ran starts dense."""
    _, a, _ = tiny_pair()
    eng = AncStreamingCaptioner(a, force_level=2)
    ref = AncStreamingCaptioner(a, force_level=2)          # runs Medium on every frame
    for f in range(3):
        eng.process(blob(f))
        ref.process(blob(f))
    eng.set_budget(0.3)                                      # Tiny for two frames
    first_tiny = eng.process(blob(3))
    eng.process(blob(4))
    eng.set_budget(1.0)
    back = eng.process(blob(5))
    seen = [ref.process(blob(f)) for f in (3, 4, 5)]
    assert first_tiny.refreshed and first_tiny.route.branch == "tiny"
    assert back.route.branch == "medium" and not back.refreshed
    n_back = back.route.branch_tokens["medium"][0]
    assert (max(r.active_tokens for r in seen) <= n_back <= sum(r.active_tokens for r in seen)
            < a.cfg.num_tokens)


def test_router_wall_time_is_its_own_stage():
    """The ANC router runs inside the encoder stage; its time is reported apart (latency_ms
    "router"), so the encoder time is the ViT's alone, in the same stage order as the FLOPs."""
    m, a, _ = tiny_pair()
    ra = AncStreamingCaptioner(a).process(blob(0))
    rs = StreamingCaptioner(m).process(blob(0))
    assert list(ra.latency_ms) == ["mask", "memory", "router", "encoder", "fusion", "decoder",
                                   "total"]
    assert "router" not in rs.latency_ms
    for r in (ra, rs):
        parts = [v for k, v in r.latency_ms.items() if k != "total"]
        assert all(v >= 0.0 for v in parts)
        assert abs(sum(parts) - r.latency_ms["total"]) < 1e-6


def test_encoder_wall_time_is_the_branch_vits(monkeypatch):
    """The ANC encoder stage counts the branch ViT calls only; the routing bookkeeping around
    them (pending tokens, route record, parameter count) goes to the router stage."""
    import time

    m, a, _ = tiny_pair()
    eng = AncStreamingCaptioner(a, force_level=2)
    eng.process(blob(0))
    slow_vit, slow_route = 0.03, 0.02
    vit_infer, route = anc_engine.sparse_infer, AncStreamingCaptioner.active_parameters

    def slow_sparse_infer(*args, **kw):
        time.sleep(slow_vit)
        return vit_infer(*args, **kw)

    def active_parameters(self, *args, **kw):
        time.sleep(slow_route)
        return route(self, *args, **kw)

    monkeypatch.setattr(anc_engine, "sparse_infer", slow_sparse_infer)
    monkeypatch.setattr(AncStreamingCaptioner, "active_parameters", active_parameters)
    r = eng.process(blob(1))
    assert not r.refreshed
    assert slow_vit * 1e3 <= r.latency_ms["encoder"] < (slow_vit + slow_route) * 1e3
    assert r.latency_ms["router"] >= slow_route * 1e3
