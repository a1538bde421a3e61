"""The router stage that scores the ANC levels by their gesture heads (issue 19, part 3;
``edge-vlm train --model router --heads``)."""
import json

import numpy as np
import pytest
import torch

import edge_vlm.training.router_heads as rh
from edge_vlm.cli import main
from edge_vlm.model.anc import LEVELS
from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint
from edge_vlm.model.motion import HEADS, motion_channels
from edge_vlm.sim.captions import SCENE_KINDS
from edge_vlm.training.config import RouterFitConfig
from edge_vlm.training.targets import IGNORE

from test_anc import blob, tiny_pair


def _answers(head, label: int, kind: str) -> None:
    """``head`` (with the scene groups) answers gesture ``label`` and scene ``kind``."""
    with torch.no_grad():
        last = head.net[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[label] = 20.0
        last.bias[len(HEADS["gesture"]) + SCENE_KINDS.index(kind)] = 20.0


def _model():
    _, a, _ = tiny_pair()
    a.cfg.scene_head = True
    a.add_motion_head()
    a.add_level_head(0, 8)
    _answers(a.motion, 3, "gesture")              # Small and Medium: gesture 3
    _answers(a.level_motion["tiny"], 0, "nothing")  # Tiny: "nothing moves", always
    return a.eval()


def _frames(cfg, n: int, seed: int) -> dict:
    """Half gesture-3 frames (events in the frame), half empty frames ('nothing')."""
    gen = torch.Generator().manual_seed(seed)
    gesture = torch.arange(n) % 2 == 0
    hist = torch.zeros(n, cfg.event_channels, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    hist[gesture, :, 40:80, 40:80] = torch.randint(1, 6, (int(gesture.sum()), cfg.event_channels,
                                                          40, 40), generator=gen,
                                                   dtype=torch.uint8)
    kind = torch.where(gesture, SCENE_KINDS.index("gesture"), SCENE_KINDS.index("nothing"))
    ignore = torch.full((n,), IGNORE)
    return {"hist": hist, "change": gesture.float() * 0.2, "recent": gesture.float() * 0.3,
            "motion": torch.rand(n, motion_channels(cfg), cfg.grid, cfg.grid, generator=gen),
            "vision": torch.zeros(n, cfg.num_classes),
            "targets": {"gesture": torch.where(gesture, 3, 0), "kind": kind,
                        "direction": ignore, "speed": ignore, "position": ignore}}


def test_level_losses_score_each_level_by_the_head_that_answers_for_it():
    a = _model()
    f = _frames(a.cfg, 8, 0)
    loss = rh.level_losses(a, f, batch=3)
    assert loss.shape == (8, len(LEVELS))
    gesture = f["targets"]["gesture"] > 0
    assert (loss[gesture, 0] > 10).all() and (loss[gesture, 1:] < 0.01).all()
    assert (loss[~gesture, 0] < 0.01).all() and (loss[~gesture, 1:] > 10).all()
    torch.testing.assert_close(loss[:, 1], loss[:, 2])          # one shared head


def test_level_costs_count_branch_and_head():
    a = _model()
    costs = rh.level_costs(a)
    assert costs[-1] == 1.0 and costs[0] < costs[1] < costs[2]
    wide = a.add_level_head(0, a.cfg.motion_width)
    assert wide.width == a.cfg.motion_width and rh.level_costs(a)[0] > costs[0]


def test_fit_routes_a_frame_to_the_cheapest_level_whose_head_knows(tmp_path, monkeypatch):
    """Gesture frames go where the head sees the gesture (not Tiny), empty frames to Tiny."""
    a = _model()
    ck = tmp_path / "in.pt"
    save_checkpoint(str(ck), a)
    calls = []

    def fake_collect(tc, subjects, progress):
        calls.append(list(subjects))
        return _frames(a.cfg, 96, len(calls))

    monkeypatch.setattr(rh, "collect_streamed", fake_collect)
    # validation recordings streamed through the engine: a moving blob performing gesture 3
    monkeypatch.setattr(rh, "val_recordings", lambda tc, subjects: [
        rh.ValRecording(np.stack([blob(f) for f in range(8)]), np.full(8, 3))])
    tc = RouterFitConfig(init=str(ck), out=str(tmp_path / "r" / "c.pt"), heads=True, epochs=40,
                         batch=32, lr=1e-2)
    rh.fit_router_heads(tc, progress=False)
    assert len(calls) == 2 and set(calls[0]).isdisjoint(calls[1])     # train, then validation
    m, meta = load_checkpoint(tc.out)
    after = meta["router_fit"]["after"]["val"]["route_share_by_motion"]
    assert after["gesture"][0] < 0.1 and after["nothing"][0] > 0.9, after
    summary = json.load(open(tmp_path / "r" / "router_fit.json"))
    assert summary["config"]["heads"] and summary["frames"] == {"train": 96, "val": 96}
    assert [s["cost_weight"] for s in summary["sweep"]] == list(tc.cost_weights)
    # the weight kept is choose_weight's over the recorded sweep
    assert summary["cost_weight"] == rh.choose_weight(summary["sweep"],
                                                      tc.accuracy_tolerance)["cost_weight"]
    assert all(s["val_head_accuracy_medium"] == 0.5 for s in summary["sweep"])
    # the published answers of the streamed validation recording: Medium's head says 3
    assert all(s["val_accuracy_medium"] == 1.0 for s in summary["sweep"])
    assert all(0.0 <= s["val_accuracy_routed"] <= 1.0 for s in summary["sweep"])
    f = _frames(a.cfg, 4, 9)
    with torch.no_grad():
        route = m.estimator(f["hist"].float(), f["change"], f["recent"]).argmax(-1)
    assert route.tolist()[1::2] == [0, 0] and 0 not in route.tolist()[0::2]


def test_fit_needs_a_joint_checkpoint_with_heads(tmp_path):
    m, a, _ = tiny_pair()
    for model in (m, a):                      # STTF only; joint without a motion head
        save_checkpoint(str(tmp_path / "c.pt"), model)
        with pytest.raises(ValueError, match="gesture heads"):
            rh.fit_router_heads(RouterFitConfig(init=str(tmp_path / "c.pt"), heads=True),
                                progress=False)


def test_cli_passes_heads_and_cost_weight(capture_fit):
    seen = capture_fit(rh, "fit_router_heads")
    assert main(["train", "--model", "router", "--heads", "--cost-weight", "0.1",
                 "--no-progress"]) == 0
    assert seen["cfg"].heads and seen["cfg"].cost_weights == (0.1,)
    assert main(["train", "--model", "router", "--heads", "--no-progress"]) == 0
    assert seen["cfg"].cost_weights == RouterFitConfig().cost_weights
    assert np.isclose(RouterFitConfig().cost_weight, 0.3)


def test_the_largest_cost_weight_that_keeps_the_answers_is_chosen():
    def fit(w, routed, medium=0.9):
        return {"cost_weight": w, "val_accuracy_routed": routed, "val_accuracy_medium": medium}
    fits = [fit(0.3, 0.80), fit(0.1, 0.896), fit(0.05, 0.899), fit(0.03, 0.91)]
    assert rh.choose_weight(fits, 0.005)["cost_weight"] == 0.1
    assert rh.choose_weight(fits, 0.0)["cost_weight"] == 0.03
    assert rh.choose_weight([fit(0.3, 0.5), fit(0.1, 0.7)], 0.005)["cost_weight"] == 0.1


def test_a_streamed_recording_keeps_what_the_engine_computed(tmp_path):
    """``collect_streamed``'s worker on a real simulated recording: every ``stream_every``-th
    frame, the estimator's inputs as the engine's (uint8 counts, fractions in [0, 1]), the
    motion state and vision logits, and the frame's targets."""
    a = _model()
    ck = tmp_path / "c.pt"
    save_checkpoint(str(ck), a)
    rh._init(str(ck), 1)
    tc = RouterFitConfig(init=str(ck), clip_s=0.6, gap_s=0.2, stream_every=5)
    out = rh._stream(rh.RouterJob(4, "lab", 7, False, tc))
    n = len(out["hist"])
    assert n > 3 and len(out["change"]) == len(out["recent"]) == len(out["motion"]) == n
    assert out["hist"][0].dtype == torch.uint8
    assert out["hist"][0].shape == (a.cfg.event_channels, a.cfg.image_size, a.cfg.image_size)
    assert all(0.0 <= x <= 1.0 for x in out["change"] + out["recent"])
    assert out["motion"][0].shape == (motion_channels(a.cfg), a.cfg.grid, a.cfg.grid)
    assert all(len(v) == n for v in out["targets"].values())
    assert (out["targets"]["gesture"] > 0).any() and (out["targets"]["gesture"] == 0).any()
