"""The gesture head's motion state and motion net (edge_vlm.model.motion, train_gesture)."""
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES
from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint
from edge_vlm.model.flops import fusion_flops, motion_head_flops
from edge_vlm.model.motion import (AGE_SCALES, MIRROR_LABEL, MOTION_HISTORY, MotionState,
    motion_channels, motion_features, patch_channel_counts)
from edge_vlm.training.targets import IGNORE
from edge_vlm.training.train_gesture import GestureFitConfig, accuracy, fit_head, stream_recording

from test_model import moving_blob, tiny_model


def _mirror_name(name: str) -> str:
    out = name.replace("right", "@").replace("left", "right").replace("@", "left")
    if out.endswith("_counter_clockwise"):
        return out[: -len("_counter_clockwise")] + "_clockwise"
    if out.endswith("_clockwise"):
        return out[: -len("_clockwise")] + "_counter_clockwise"
    return out


def test_mirror_labels_swap_arms_and_rotation_sense():
    assert MIRROR_LABEL[0] == 0
    for lab in range(1, 12):
        assert MIRROR_LABEL[MIRROR_LABEL[lab]] == lab
        assert GESTURE_CLASSES[MIRROR_LABEL[lab] - 1] == _mirror_name(GESTURE_CLASSES[lab - 1])


def test_mirrored_arm_circle_turns_like_its_mirror_label_in_the_simulator():
    """The label map agrees with the simulator's kinematics: the hand of a mirrored right-arm
    circle turns (on screen) the same way as the hand of the mirror label's circle."""
    from edge_vlm.sim.gestures import gesture_angles, joints, make_subject, sample_params

    subj = make_subject(4)
    t = np.linspace(0.0, 1.0, 200)

    def turn(label, arm, mirror):
        p = sample_params(label, subj, np.random.default_rng(label))
        j = joints(subj, gesture_angles(p, t))[:, arm]          # (T, shoulder/elbow/hand, xy)
        rel = j[:, 2] - j[:, 0]
        if mirror:
            rel[:, 0] = -rel[:, 0]
        return np.sign(np.diff(np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))).mean())

    for label in (4, 5):        # right arm (image left, arm 0) -> left arm (arm 1)
        m = MIRROR_LABEL[label]
        assert turn(label, 0, True) == turn(m, 1, False) != 0
        assert turn(label, 0, False) != turn(m, 1, False)


def test_motion_state_maps():
    g, max_age = 16, 8
    st = MotionState(g)
    rng = np.random.default_rng(0)
    totals = []
    for f in range(15):
        hist = rng.integers(0, 3, (4, 128, 128)).astype(np.float32)
        counts = patch_channel_counts(hist, 8)
        assert np.array_equal(counts, hist.reshape(4, g, 8, g, 8).sum(axis=(2, 4)))
        totals.append(counts.sum(axis=0))
        age = rng.integers(0, max_age + 1, g * g)
        maps = st.update(age, counts, max_age)
    assert maps.shape == (motion_channels(tiny_model()[0].cfg), g, g)
    a = age.reshape(g, g).astype(np.float32)
    for i, s in enumerate(AGE_SCALES):
        np.testing.assert_allclose(maps[i], np.exp(-a / s), rtol=1e-6)
    np.testing.assert_array_equal(maps[len(AGE_SCALES)], (a < max_age).astype(np.float32))
    na = len(AGE_SCALES)
    np.testing.assert_allclose(maps[na + 1:na + 5], np.log1p(counts), rtol=1e-6)
    for i, k in enumerate(MOTION_HISTORY):
        np.testing.assert_allclose(maps[na + 5 + i], np.log1p(np.sum(totals[-k:], axis=0)),
                                   rtol=1e-5)
    st.reset()
    first = st.update(age, counts, max_age)
    # the history starts empty
    np.testing.assert_allclose(first[-1], np.log1p(counts.sum(axis=0)), rtol=1e-6)
    again = motion_features(age, counts, [totals[-1]] * len(MOTION_HISTORY), max_age)
    assert np.array_equal(again[:8], first[:8])


def test_engine_gesture_comes_from_the_motion_head_with_the_streams_state():
    m, _ = tiny_model()
    m.add_motion_head()
    assert m.cfg.motion_head
    eng = StreamingCaptioner(m, sparse=True)
    seen = []
    orig = m.motion.forward

    def spy(state, vision=None, trunk=None):
        seen.append(state.clone())
        return orig(state, vision, trunk=trunk)

    m.motion.forward = spy
    for f in range(5):
        eng.process(moving_blob(f))
    ref = MotionState(m.cfg.grid)
    eng2 = StreamingCaptioner(m, sparse=False)
    for f in range(5):
        eng2.perceive(moving_blob(f))
        want = ref.update(eng2.age, patch_channel_counts(moving_blob(f), 8), m.cfg.max_age)
    np.testing.assert_allclose(seen[4][0].numpy(), want, rtol=1e-6)
    # a head that always answers class 7 (1-based) decides the published label
    del m.motion.forward
    with torch.no_grad():
        last = m.motion.net[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[6] = 50.0
    assert eng.process(moving_blob(5)).label == 7


def test_flops_with_motion_head_match_torch():
    m, _ = tiny_model()
    m.add_motion_head()
    c = m.cfg
    assert motion_head_flops(c) > 0
    bucket = torch.zeros(1, c.num_tokens, dtype=torch.long)
    state = torch.rand(1, motion_channels(c), c.grid, c.grid)
    with FlopCounterMode(display=False) as fc:
        fused, z = m.fuse(torch.rand(1, c.num_tokens, c.dim), bucket, torch.zeros(1, c.num_tokens))
        m.gesture_logits(fused, z, bucket, state)
    assert abs(fc.get_total_flops() - fusion_flops(c)) / fusion_flops(c) < 0.05


def test_checkpoint_roundtrip_keeps_the_motion_head(tmp_path):
    m, _ = tiny_model()
    m.add_motion_head()
    with torch.no_grad():
        m.motion.vision_weight.fill_(0.25)
    p = tmp_path / "c.pt"
    save_checkpoint(str(p), m, half=False)
    m2, _ = load_checkpoint(str(p))
    assert m2.cfg.motion_head and m2.motion is not None
    for (k, v), (k2, v2) in zip(m.motion.state_dict().items(), m2.motion.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_stream_recording_keeps_every_frame_and_its_segments():
    m, _ = tiny_model()
    m.add_motion_head()
    hist = np.stack([moving_blob(f % 10) for f in range(12)])
    labels = np.array([0, 2, 2, 2, 0, 0, 5, 5, 3, 3, 3, 0])
    kind = np.where(labels > 0, 1, 0)
    targets = {"gesture": labels, "kind": kind, "direction": np.zeros(12, np.int64),
               "speed": np.full(12, IGNORE), "position": np.full(12, IGNORE)}
    out = stream_recording(m, {}, {}, hist, targets)
    assert out["motion"].shape == (12, motion_channels(m.cfg), m.cfg.grid, m.cfg.grid)
    assert out["vision"].shape == (12, 11)
    assert out["targets"]["gesture"].tolist() == labels.tolist()
    assert out["clip"].tolist() == [0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5]


def _synthetic_frames(cfg, n, seed=0):
    """Motion states whose class (1..3) is the row band holding the motion; 4 frames per clip."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(1, 4, (n,), generator=gen)
    motion = 0.1 * torch.rand(n, motion_channels(cfg), cfg.grid, cfg.grid, generator=gen)
    for i, lab in enumerate(label.tolist()):
        motion[i, :, 4 * lab - 2:4 * lab + 2, 3:7] += 1.0
    targets = {"gesture": label, "kind": torch.ones(n, dtype=torch.long),
               "direction": torch.zeros(n, dtype=torch.long),
               "speed": torch.full((n,), IGNORE), "position": torch.full((n,), IGNORE)}
    return {"motion": motion, "vision": torch.zeros(n, cfg.num_classes), "targets": targets,
            "clip": np.arange(n) // 4}


def test_fit_head_learns_where_the_motion_is():
    """The fitted head separates synthetic motion states, and the clip vote counts clips."""
    m, _ = tiny_model()
    m.add_motion_head()
    train, val = _synthetic_frames(m.cfg, 256, 0), _synthetic_frames(m.cfg, 64, 1)
    history, best = fit_head(m.motion, train, val, GestureFitConfig(epochs=8, batch=32, lr=3e-3))
    m.motion.load_state_dict(best)
    acc = accuracy(m.motion, val)
    assert acc["accuracy"] > 0.9 and acc["clips"] == 16, acc
    assert max(h["val_accuracy"] for h in history) == acc["accuracy"]


def test_fit_gesture_writes_the_head_and_reuses_its_cache(tmp_path, monkeypatch):
    import json

    import edge_vlm.training.train_gesture as tg

    m, _ = tiny_model()
    ck = tmp_path / "in.pt"
    save_checkpoint(str(ck), m)
    calls = []

    def fake_collect(tc, subjects, mirror, anc, progress):
        calls.append((tuple(subjects), mirror))
        return _synthetic_frames(m.cfg, 64, len(calls))

    monkeypatch.setattr(tg, "collect", fake_collect)
    tc = GestureFitConfig(init=str(ck), out=str(tmp_path / "out" / "c.pt"),
                          cache=str(tmp_path / "frames.pt"),
                          epochs=2, batch=16, motion_width=8)
    first = tg.fit_gesture(tc, progress=False)
    assert [mirror for _, mirror in calls] == [True, False] and len(calls[0][0]) == 14
    tg.fit_gesture(tc, progress=False)
    assert len(calls) == 2                                   # the second run read the cache
    m2, meta = load_checkpoint(tc.out)
    assert m2.cfg.motion_head and m2.cfg.motion_width == 8 and m2.motion.net[0].out_channels == 8
    assert meta["gesture_fit"]["val"]["frames"] == 64
    summary = json.load(open(tmp_path / "out" / "gesture_fit.json"))
    assert summary["best_epoch"] == first["best_epoch"] and len(summary["history"]) == 2
    assert summary["streamed_frames_from_cache"] and not first["streamed_frames_from_cache"]


def test_cli_train_passes_the_fit_stages_their_options(capture_fit):
    import edge_vlm.training.train_gesture as tg
    import edge_vlm.training.train_router as tr
    from edge_vlm.cli import main

    seen = {"gesture": capture_fit(tg, "fit_gesture"), "router": capture_fit(tr, "fit_router")}
    assert main(["train", "--model", "gesture", "--init", "a.pt", "--cache", "f.pt",
                 "--motion-width", "16",
                 "--epochs", "3", "--shift", "1", "--no-progress"]) == 0
    assert main(["train", "--model", "router", "--init", "b.pt", "--balance-weight", "0.2"]) == 0
    g, progress = seen["gesture"]["cfg"], seen["gesture"]["progress"]
    assert (g.init, g.cache, g.motion_width, g.epochs, g.shift, g.out, progress) == (
        "a.pt", "f.pt", 16, 3, 1, GestureFitConfig().out, False)
    assert g.batch == GestureFitConfig().batch
    r, progress = seen["router"]["cfg"], seen["router"]["progress"]
    assert (r.init, r.balance_weight, r.out, progress) == ("b.pt", 0.2,
                                                           "data/train_router/captioner.pt", True)
    assert r.epochs == type(r)().epochs


def test_engine_takes_read_only_frames_without_warning():
    """The binner hands out read-only histograms; the motion state must not wrap them in torch as
    is."""
    import warnings

    m, _ = tiny_model()
    m.add_motion_head()
    eng = StreamingCaptioner(m)
    h = moving_blob(0)
    h.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eng.process(h)
    np.testing.assert_array_equal(patch_channel_counts(torch.from_numpy(moving_blob(0)), 8),
                                  patch_channel_counts(moving_blob(0), 8))


def test_shift_states_translates_and_fills_with_zeros():
    from edge_vlm.training.train_gesture import shift_states

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5) + 1
    assert shift_states(x, 0, 0) is x
    y = shift_states(x, 1, -2)
    assert y.shape == x.shape
    assert torch.equal(y[..., 1:, :3], x[..., :4, 2:])           # moved down 1, left 2
    assert (y[..., 0, :] == 0).all() and (y[..., :, 3:] == 0).all()
    assert torch.equal(shift_states(shift_states(x, 2, 1), -2, -1)[..., :3, :4], x[..., :3, :4])
