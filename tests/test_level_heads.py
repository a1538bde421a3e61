"""ANC levels with their own gesture heads (issue 19, part 3): the engine answers with the head
of the level that ran the frame and counts that head's FLOPs and parameters, a checkpoint keeps
the heads, and ``edge-vlm train --model gesture --level`` fits one level's head only."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import edge_vlm.training.train_gesture as tg
from edge_vlm.cli import main
from edge_vlm.inference.anc_engine import AncStreamingCaptioner
from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint
from edge_vlm.model.flops import fusion_flops, motion_head_flops
from edge_vlm.model.motion import MotionHead, motion_channels
from edge_vlm.training.config import GestureFitConfig

from test_anc import blob, tiny_pair
from test_model import tiny_model
from test_motion import _synthetic_frames


def _answers(head: MotionHead, label: int) -> None:
    """Make ``head`` answer gesture ``label`` (1-based) whatever it reads (no scene head)."""
    with torch.no_grad():
        last = head.net[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[label - 1] = 50.0


def _joint_with_heads():
    _, a, _ = tiny_pair()
    a.add_motion_head()
    tiny = a.add_level_head(0, 8)
    return a, tiny


def test_each_level_answers_with_its_own_head_and_counts_it():
    a, tiny = _joint_with_heads()
    assert a.acfg.motion_widths == [8, 0, 0] and tiny.width == 8
    assert tiny.net[0].out_channels == 8 and a.motion.net[0].out_channels == a.cfg.motion_width
    assert a.motion_for(0) is tiny and a.motion_for(1) is a.motion and a.motion_for(2) is a.motion
    _answers(a.motion, 7)
    _answers(tiny, 3)
    for level, want, width in ((0, 3, 8), (1, 7, None), (2, 7, None)):
        eng = AncStreamingCaptioner(a, force_level=level, sparse=False)
        for f in range(3):
            r = eng.process(blob(f))
        assert r.label == want, level
        # the dense engine recomputes every fusion row: the whole fusion with that head
        assert r.flops["fusion"] == fusion_flops(a.cfg, None, width)
    assert motion_head_flops(a.cfg, 8) < motion_head_flops(a.cfg)
    dec = a.acfg.decoder_layers[0]
    n_tiny = sum(p.numel() for p in tiny.parameters())
    n_shared = sum(p.numel() for p in a.motion.parameters())
    assert n_tiny < n_shared
    assert (eng.active_parameters([0], dec, 0) - eng.active_parameters([0], dec, 2)
            == n_tiny - n_shared)


def test_a_level_without_its_own_head_reads_the_shared_one_as_before():
    """A checkpoint without level heads (the default ``motion_widths``) publishes what the
    shared head says at every level."""
    _, a, _ = tiny_pair()
    a.add_motion_head()
    assert a.acfg.motion_widths == [0, 0, 0] and len(a.level_motion) == 0
    _answers(a.motion, 5)
    for level in (0, 1, 2):
        eng = AncStreamingCaptioner(a, force_level=level)
        labels = [eng.process(blob(f)).label for f in range(3)]
        assert labels[-1] == 5


@pytest.mark.parametrize("width", [8, 16, 32])
def test_motion_head_flops_match_torch_at_each_width(width):
    m, _ = tiny_model()
    m.cfg.motion_head = m.cfg.scene_head = True     # the scene groups widen the last layer
    head = MotionHead(m.cfg, width).eval()
    state = torch.rand(1, motion_channels(m.cfg), m.cfg.grid, m.cfg.grid)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        head(state)
    assert fc.get_total_flops() == motion_head_flops(m.cfg, width)


def test_checkpoint_keeps_the_level_heads(tmp_path):
    a, _ = _joint_with_heads()
    a.add_level_head(1, 16)
    save_checkpoint(str(tmp_path / "c.pt"), a)
    b, _ = load_checkpoint(str(tmp_path / "c.pt"))
    assert b.acfg.motion_widths == [8, 16, 0]
    assert b.motion_for(0).width == 8 and b.motion_for(1).width == 16
    assert b.motion_for(2) is b.motion
    for name in ("tiny", "small"):
        for (k, v), w in zip(a.level_motion[name].state_dict().items(),
                             b.level_motion[name].state_dict().values()):
            torch.testing.assert_close(w, v.half().float(), msg=k)     # stored in fp16


def test_fit_of_one_level_writes_that_head_only_and_reuses_the_cache(tmp_path, monkeypatch):
    _, a, _ = tiny_pair()
    a.add_motion_head()
    ck = tmp_path / "in.pt"
    save_checkpoint(str(ck), a)
    shared = {k: v.clone() for k, v in load_checkpoint(str(ck))[0].motion.state_dict().items()}
    calls = []

    def fake_collect(tc, subjects, mirror, anc, progress):
        calls.append(anc)
        return _synthetic_frames(a.cfg, 64, len(calls))

    monkeypatch.setattr(tg, "collect", fake_collect)
    common = dict(cache=str(tmp_path / "frames.pt"), epochs=2, batch=16, scenes=False)
    tc = GestureFitConfig(init=str(ck), out=str(tmp_path / "t" / "c.pt"), level="tiny",
                          motion_width=8, **common)
    fit = tg.fit_gesture(tc, progress=False)
    assert calls == [True, True] and not fit["streamed_frames_from_cache"]
    m, meta = load_checkpoint(tc.out)
    assert m.acfg.motion_widths == [8, 0, 0] and m.motion_for(0).width == 8
    assert m.cfg.motion_width == a.cfg.motion_width               # the shared head's, unchanged
    for k, v in m.motion.state_dict().items():
        torch.testing.assert_close(v, shared[k], msg=k)
    assert meta["gesture_fit_tiny"]["val"]["frames"] == 64 and "gesture_fit" not in meta
    summary = json.load(open(tmp_path / "t" / "gesture_fit_tiny.json"))
    assert summary["config"]["level"] == "tiny" and len(summary["history"]) == 2
    # the next level's fit on that output: the streamed frames do not depend on the heads
    tc2 = GestureFitConfig(init=tc.out, out=str(tmp_path / "s" / "c.pt"), level="small",
                           motion_width=16, **common)
    assert tg.fit_gesture(tc2, progress=False)["streamed_frames_from_cache"]
    assert len(calls) == 2
    m2, _ = load_checkpoint(tc2.out)
    assert m2.acfg.motion_widths == [8, 16, 0]


def test_fit_of_a_level_needs_a_joint_checkpoint(tmp_path):
    m, _ = tiny_model()
    with pytest.raises(ValueError, match="joint STTF\\+ANC"):
        tg.new_head(m, GestureFitConfig(level="tiny", motion_width=8))


def test_cli_passes_the_level(capture_fit):
    seen = capture_fit(tg, "fit_gesture")
    assert main(["train", "--model", "gesture", "--init", "a.pt", "--level", "small",
                 "--motion-width", "16", "--no-progress"]) == 0
    assert (seen["cfg"].level, seen["cfg"].motion_width) == ("small", 16)
    assert main(["train", "--model", "gesture", "--init", "a.pt", "--no-progress"]) == 0
    assert seen["cfg"].level == ""


def test_loading_level_heads_draws_no_random_numbers(tmp_path):
    """A fit seeded before it loads its checkpoint makes the same head whether or not the
    checkpoint has level heads (``make train-heads`` on a checkpoint with them reproduces the
    shared head)."""
    _, a, _ = tiny_pair()
    a.add_motion_head()
    save_checkpoint(str(tmp_path / "plain.pt"), a)
    a.add_level_head(0, 8)
    save_checkpoint(str(tmp_path / "levels.pt"), a)
    draws = []
    for name in ("plain.pt", "levels.pt"):
        torch.manual_seed(0)
        load_checkpoint(str(tmp_path / name))
        draws.append(torch.rand(4))
    torch.testing.assert_close(draws[0], draws[1])
