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
