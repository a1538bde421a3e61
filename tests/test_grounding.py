"""Grounded outputs (edge_vlm.inference.grounding): the publication rule, smoothing, the caption
constraint, and the engine publishing only what its heads found."""
import numpy as np
import torch

from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.grounding import (SHAKE_WINDOW_FRAMES, CaptionTrie, HeadProbs,
                                          SceneSmoother, decide, gesture_captions, scene_text,
                                          still_view)
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.decoding import decode_beam, decode_greedy
from edge_vlm.model.motion import HEADS
from edge_vlm.model.sttf import CaptionModel, init_weights
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.sim.captions import CLASS_PHRASES, NOTHING_MOVES, SCENE_KINDS, scene_caption

from test_model import moving_blob


def _probs(gesture, kind=None, direction=None, speed=None, position=None):
    def onehot(group, name, p=0.9):
        if name is None:
            return None
        names = HEADS[group]
        v = np.full(len(names), (1 - p) / (len(names) - 1))
        v[names.index(name)] = p
        return v
    g = np.full(12, 0.0)
    for k, v in gesture.items():
        g[k] = v
    return HeadProbs(g, onehot("kind", kind), onehot("direction", direction),
                     onehot("speed", speed), onehot("position", position))


def test_a_gesture_is_published_only_above_the_threshold_and_above_no_gesture():
    p = _probs({3: 0.6, 0: 0.3, 5: 0.1}, "gesture", "none", "fast", "left")
    r = decide(p, p, threshold=0.5)
    assert (r.gesture, r.kind, r.gesture_name) == (3, "gesture", "left_hand_wave")
    assert abs(r.gesture_confidence - 0.6) < 1e-9
    r = decide(p, p, threshold=0.7)             # below the threshold: no gesture
    assert r.gesture == 0 and r.gesture_name == "" and abs(r.gesture_confidence - 0.3) < 1e-9
    q = _probs({3: 0.45, 0: 0.55}, "gesture", "none", "fast", "left")
    assert decide(q, q, threshold=0.1).gesture == 0   # "no gesture" is more likely


def test_the_heads_must_agree_and_a_published_gesture_is_held():
    # the gesture head sees a wave, the scene head a walk: no gesture, the walk is published
    p = _probs({2: 0.9, 0: 0.1}, "walk", "left_to_right", "fast", "center")
    r = decide(p, p, threshold=0.4)
    assert (r.gesture, r.kind) == (0, "walk")
    # hysteresis: a published gesture stays while it keeps hold x threshold and hold x the best
    p = _probs({2: 0.25, 5: 0.3, 0: 0.45}, "gesture", "none", "fast", "center")
    assert decide(p, p, 0.4, current=2, hold=0.5).gesture == 2
    assert decide(p, p, 0.4, current=2, hold=0.0).gesture == 0
    assert decide(p, p, 0.4, current=0, hold=0.5).gesture == 0
    q = _probs({2: 0.1, 5: 0.9}, "gesture", "none", "fast", "center")
    assert decide(q, q, 0.4, current=2, hold=0.5).gesture == 5     # clearly beaten


def test_without_a_gesture_the_scene_head_decides_the_kind_and_a_possible_direction():
    p = _probs({0: 0.9, 2: 0.1}, "walk", "up", "slow", "right")
    r = decide(p, p, threshold=0.5)
    assert r.kind == "walk" and r.gesture == 0
    # a walk goes left or right: the direction head's best allowed answer is taken
    assert r.direction in ("left_to_right", "right_to_left")
    assert scene_text(r).startswith("a person walks from ")
    p = _probs({0: 0.9}, "nothing", "none", "slow", "center")
    assert scene_text(decide(p, p, 0.5)) == NOTHING_MOVES
    # the kind "gesture" is never published without a gesture label
    p = _probs({0: 0.8, 4: 0.2}, "gesture", "none", "slow", "center")
    assert decide(p, p, 0.5).kind != "gesture"


def test_the_camera_shakes_only_when_enough_patches_changed_lately():
    # the scene head says shaking (0.6), then nothing (0.4-ish): the ego-motion rule decides
    p = _probs({0: 0.9}, "camera_shake", "none", "slow", "center")
    shake = SCENE_KINDS.index("camera_shake")
    p = p._replace(kind=np.where(np.arange(len(SCENE_KINDS)) == shake, 0.6,
                                 np.where(np.arange(len(SCENE_KINDS)) == 0, 0.3, 0.1 / 7)))
    assert decide(p, p, 0.5).kind == "camera_shake"                     # no count: no rule
    assert decide(p, p, 0.5, recent_patches=5, shake_min=0).kind == "camera_shake"   # off
    assert decide(p, p, 0.5, recent_patches=10, shake_min=10).kind == "camera_shake"
    r = decide(p, p, 0.5, recent_patches=9, shake_min=10)
    assert (r.kind, scene_text(r)) == ("nothing", NOTHING_MOVES)
    # renormalised without the shake (and without 'gesture', as always)
    assert abs(r.kind_confidence - 0.3 / (0.3 + 6 * 0.1 / 7)) < 1e-9
    assert still_view(p.kind, 9, 10)[shake] == 0.0 and p.kind[shake] == 0.6   # a copy
    assert still_view(None, 0, 10) is None
    # the rule removes the shake before the heads must agree: a gesture can be published
    q = _probs({4: 0.8, 0: 0.2}, "camera_shake")
    q = q._replace(kind=np.where(np.arange(len(SCENE_KINDS)) == shake, 0.6, 0.4 / 8))
    q.kind[SCENE_KINDS.index("gesture")] = 0.3
    assert decide(q, q, 0.5).gesture == 0
    assert decide(q, q, 0.5, recent_patches=2, shake_min=10).gesture == 4


def test_engine_counts_the_patches_changed_in_the_rule_window():
    m, _ = _grammar_model(max_age=2 * SHAKE_WINDOW_FRAMES)
    m.cfg.scene_head = True
    m.add_motion_head()
    eng = StreamingCaptioner(m, sparse=True, gesture_threshold=0.5, shake_min_patches=10,
                             mask_method="event_count")
    last = m.motion.net[-1]
    with torch.no_grad():             # the scene head always says "the camera shakes"
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = 30.0
        last.bias[12 + SCENE_KINDS.index("camera_shake")] = 30.0
        last.bias[12 + SCENE_KINDS.index("nothing")] = 20.0
    assert eng.shake_min == 10
    still = np.zeros_like(moving_blob(0))
    shaken = np.full_like(still, 2.0)           # events in every patch: the whole view moved
    kinds = []
    for i in range(SHAKE_WINDOW_FRAMES + 3):
        r = eng.process(shaken if i < 2 else still)
        kinds.append((int((eng.age < SHAKE_WINDOW_FRAMES).sum()), r.scene.kind))
    # while the whole view's changes are inside the window the head is believed, then not
    assert [n for n, _ in kinds] == [256] * (SHAKE_WINDOW_FRAMES + 1) + [0, 0], kinds
    assert [k for _, k in kinds] == ["camera_shake"] * (SHAKE_WINDOW_FRAMES + 1) + ["nothing"] * 2
    eng.set_param("shake_min_patches", 0)
    assert eng.process(still).scene.kind == "camera_shake"


def test_smoother_is_an_exponential_moving_average_and_resets():
    sm = SceneSmoother(4.0)
    a, b = _probs({1: 1.0}), _probs({2: 1.0})
    assert sm.update(a).gesture[1] == 1.0
    out = sm.update(b)
    assert abs(out.gesture[1] - 0.75) < 1e-12 and abs(out.gesture[2] - 0.25) < 1e-12
    sm.reset()
    assert sm.update(b).gesture[2] == 1.0
    assert SceneSmoother(1.0).update(b).gesture[2] == 1.0


def test_caption_trie_allows_only_continuations():
    t = CaptionTrie([[5, 6, 7], [5, 8]], eos=2)
    assert sorted(t.allowed([])) == [5]
    assert sorted(t.allowed([5])) == [6, 8]
    assert t.allowed([5, 8]) == [2] and t.allowed([9]) == []


def _grammar_model(seed=0, max_age=8):
    torch.manual_seed(seed)
    texts = [c for k in CLASS_PHRASES for c in gesture_captions(k)]
    texts += [scene_caption(k, {"direction": "left_to_right", "speed": "fast",
                                "position": "left"}) for k in SCENE_KINDS if k != "gesture"]
    tok = Tokenizer.build(texts)
    m = CaptionModel(ModelConfig(dim=32, heads=2, depth=2, max_age=max_age, vocab=tok.vocab))
    init_weights(m)
    return m.eval(), tok


def test_constrained_decoding_writes_a_canonical_caption_of_the_class_every_class():
    m, tok = _grammar_model()
    fused = torch.randn(1, m.cfg.fusion_queries, m.cfg.dim)
    for label in CLASS_PHRASES:
        allowed_texts = {tok.decode(tok.encode(t, 24)) for t in gesture_captions(label)}
        seqs = [tok.encode(t, m.cfg.max_len)[1:] for t in gesture_captions(label)]
        trie = CaptionTrie([q[:q.index(tok.eos)] for q in seqs], tok.eos)
        ids, _ = decode_greedy(m, fused, tok.bos, tok.eos, 24, allowed=trie.allowed)
        assert tok.decode(ids) in allowed_texts
        ids, _ = decode_beam(m, fused, tok.bos, tok.eos, 24, 3, allowed=trie.allowed)
        assert tok.decode(ids) in allowed_texts
        # the speculative draft (last frame's text of another class) gives the same result
        ids2, _ = decode_greedy(m, fused, tok.bos, tok.eos, 24, draft=ids[::-1],
                                allowed=trie.allowed)
        ids3, _ = decode_greedy(m, fused, tok.bos, tok.eos, 24, allowed=trie.allowed)
        assert ids2 == ids3


def test_engine_caption_names_exactly_the_published_gesture_or_the_scene():
    m, tok = _grammar_model()
    m.cfg.scene_head = True
    m.add_motion_head()
    eng = StreamingCaptioner(m, sparse=True, gesture_threshold=0.5)
    last = m.motion.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[1] = 30.0          # gesture 1: hand clapping, the class never generated before
        last.bias[12 + SCENE_KINDS.index("gesture")] = 30.0
    r = eng.process(moving_blob(0))
    assert r.label == 1 and r.scene.kind == "gesture" and "claps hands" in r.text
    assert r.text in gesture_captions(1) and r.flops["decoder"] > 0
    with torch.no_grad():            # now "no gesture" and the scene "nothing"
        last.bias.zero_()
        last.bias[0] = 30.0
        last.bias[12 + SCENE_KINDS.index("nothing")] = 30.0
    eng.reset()
    r = eng.process(moving_blob(1))
    assert (r.label, r.gesture_name, r.text, r.scene.kind) == (0, "", NOTHING_MOVES, "nothing")
    assert r.flops["decoder"] == 0.0 and r.confidence > 0.99
    eng.set_param("gesture_threshold", 1.0)
    assert eng.threshold == 1.0
