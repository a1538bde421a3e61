"""`edge-vlm finetune CKPT --data DIR` (edge_vlm.training.finetune): a team's labelled recordings
(a tiny DvsGesture-layout folder written from simulated recordings: 3 users, 2 classes, 1 s
segments) adapt a tiny checkpoint's gesture + scene head."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from edge_vlm.cli import build_parser, main
from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint
from edge_vlm.model.motion import HEADS
from edge_vlm.sim import simulate_recording
from edge_vlm.sim.export import write_dvs128
from edge_vlm.training.data import FrameSet
from edge_vlm.training.finetune import finetune, pad_batches, split_data, team_targets
from edge_vlm.training.targets import IGNORE
from edge_vlm.training.train_gesture import MotionFrames

from test_anc import tiny_pair
from test_model import tiny_model

USERS = (1, 2, 3)
#: the input head's temperatures (gesture, kind, direction, speed, position)
TEMPS = [1.0, 1.75, 1.25, 0.875, 1.5]


@pytest.fixture(scope="module")
def team_dir(tmp_path_factory):
    """A DvsGesture-layout folder: 3 recordings of gestures 1 and 2 (no split lists needed)."""
    root = tmp_path_factory.mktemp("team")
    recs = [simulate_recording(u, "lab", seed=u, labels=(1, 2), clip_duration_s=1.0, gap_s=0.2,
                               with_frames=False) for u in USERS]
    write_dvs128(str(root), recs)
    return root


def _checkpoint(path, scene_head: bool = True) -> str:
    m, _ = tiny_model(scene_head=scene_head, motion_width=8)
    m.add_motion_head()
    if scene_head:
        m.motion.temperature.copy_(torch.tensor(TEMPS))
    save_checkpoint(str(path), m)
    return str(path)


def test_finetune_cli_adapts_the_head_and_scores_it_on_held_out_recordings(tmp_path, team_dir,
                                                                          capsys):
    ck = _checkpoint(tmp_path / "in.pt")
    out = tmp_path / "ft" / "captioner.pt"
    assert main(["finetune", ck, "--data", str(team_dir), "--out", str(out), "--epochs", "2",
                 "--threads", "1", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.load(open(tmp_path / "ft" / "finetune.json"))
    assert printed["checkpoint"] == str(out) and len(summary["history"]) == 2
    # whole recordings held out: one of three (val share 0.25), disjoint from the training ones
    train, val = set(summary["train_recordings"]), set(summary["val_recordings"])
    assert summary["split"] == "recording" and len(val) == 1 and not train & val
    assert train | val == {f"user{u:02d}_lab.aedat" for u in USERS}
    assert summary["train_classes"] == [1, 2] and summary["rehearsal_frames"] > 0
    assert summary["train_frames"] == 2 * 2 * summary["val_frames"] + summary["rehearsal_frames"]
    for side in ("before", "after"):                 # the same held-out frames, both heads
        assert summary[side]["frames"] == summary["val_frames"] > 0
        assert 0.0 <= summary[side]["accuracy"] <= 1.0
        assert summary[side]["gesture_frames"] > 0 and "kind_accuracy" in summary[side]
    assert summary["improved"] == (summary["after"]["accuracy"] > summary["before"]["accuracy"])
    # the written checkpoint loads, its head changed, the encoder did not
    m_in, _ = load_checkpoint(ck)
    m_out, meta = load_checkpoint(str(out))
    assert meta["finetune"]["best_epoch"] in (1, 2) and summary["head_changed"]
    head_in, head_out = m_in.motion.state_dict(), m_out.motion.state_dict()
    assert any(not torch.equal(head_in[k], head_out[k]) for k in head_in if k != "temperature")
    enc_in, enc_out = m_in.state_dict(), m_out.state_dict()
    assert all(torch.equal(v, enc_out[k]) for k, v in enc_in.items() if not k.startswith("motion"))
    # the gesture temperature is refitted (no gesture + 2 classes); the groups with one class
    # (kind, direction) or none (speed, position) on validation keep the checkpoint's
    assert summary["recalibrated"] == ["gesture"]
    t_out = m_out.motion.temperature.tolist()
    assert np.allclose(t_out[1:], TEMPS[1:], atol=1e-2)


def test_a_head_without_scene_groups_is_fitted_on_the_labelled_frames_only(tmp_path, team_dir):
    ck = _checkpoint(tmp_path / "in11.pt", scene_head=False)
    s = finetune(ck, str(team_dir), str(tmp_path / "o.pt"), epochs=1, mirror=False, threads=1)
    assert s["recalibrated"] == [] and s["temperatures"] == {}
    assert s["before"]["frames"] == s["before"]["gesture_frames"] > 0       # no "no gesture"
    assert s["rehearsal_frames"] == 0 and s["train_frames"] < 3 * s["val_frames"]
    assert "kind_accuracy" not in s["after"]


def _frameset(rec_index, segment) -> FrameSet:
    n = len(rec_index)
    return FrameSet(np.zeros((n, 4, 2, 2), np.uint8), None, (np.asarray(segment) >= 0) * 1,
                    [""] * n, [[]] * n, [""] * n, np.asarray(rec_index), np.arange(n),
                    np.arange(n) + 1, None, np.asarray(segment))


def test_split_by_recording_is_seeded_and_a_single_recording_is_split_in_time():
    fs = _frameset([0] * 3 + [1] * 3 + [2] * 3 + [3] * 3, [0, 0, -1, 1, 1, -1, 2, 2, 2, 3, 3, 3])
    names = ["a", "b", "c", "d"]
    s = split_data(fs, names, 0.25, seed=0)
    assert s == split_data(fs, names, 0.25, seed=0) and s.by == "recording"
    assert len(s.val) == 1 and len(s.train) == 3
    assert {p.name for p in s.train} | {p.name for p in s.val} == set(names)
    assert {split_data(fs, names, 0.25, seed=k).val[0].name for k in range(12)} != {"a"}
    assert len(split_data(fs, names, 0.9, seed=0).train) == 1          # one always trains
    # one recording, 4 segments: the last one held out, cut at its first frame
    one = _frameset([0] * 10, [-1, 0, 0, -1, 1, 1, 2, 2, -1, 3])
    t = split_data(one, ["solo"], 0.25, seed=0)
    assert t.by == "time" and [(p.start, p.stop) for p in t.train + t.val] == [(0, 9), (9, 10)]
    with pytest.raises(ValueError, match="at least 2 labelled segments"):
        split_data(_frameset([0] * 3, [-1, 0, 0]), ["solo"], 0.25, seed=0)
    with pytest.raises(ValueError, match="val-share"):
        split_data(fs, names, 1.0, seed=0)


def test_team_targets_and_full_batches():
    t = team_targets(np.array([0, 3, 3, 0]))
    assert t["gesture"].tolist() == [0, 3, 3, 0]
    assert t["kind"].tolist() == [IGNORE] + [HEADS["kind"].index("gesture")] * 2 + [IGNORE]
    assert t["direction"][1] == HEADS["direction"].index("none") and t["direction"][0] == IGNORE
    assert (t["speed"] == IGNORE).all() and (t["position"] == IGNORE).all()
    n = 21
    g = torch.tensor([0] * 15 + [2] * 6)
    data = MotionFrames(motion=torch.zeros(n, 1, 2, 2), vision=torch.zeros(n, 11),
                        targets={"gesture": g}, clip=np.arange(n))
    p = pad_batches(data, 8, seed=0)
    assert len(p["clip"]) == 24 and (p["targets"]["gesture"][n:] == 2).all()
    assert pad_batches(data, 32, seed=0) is data                   # one batch: nothing to pad


def test_cli_errors_are_one_line_and_defaults_match_the_function(tmp_path, team_dir, capsys):
    assert main(["finetune", "", "--data", str(tmp_path / "missing"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-vlm finetune: error:") and "\n" not in err
    ck = _checkpoint(tmp_path / "in.pt")
    assert main(["finetune", ck, "--data", str(team_dir), "--val-share", "1.5",
                 "--out", str(tmp_path / "x.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "val-share" in err and "\n" not in err and not (tmp_path / "x.pt").exists()
    assert main(["finetune", str(tmp_path / "no.pt"), "--data", str(team_dir),
                 "--no-progress"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    args = build_parser().parse_args(["finetune", "shipped", "--data", "d"])
    defaults = {k: p.default for k, p in inspect.signature(finetune).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert (args.epochs, args.lr, args.val_share, args.seed, not args.no_mirror,
            not args.no_rehearse, args.threads) == tuple(
        defaults[k] for k in ("epochs", "lr", "val_share", "seed", "mirror", "rehearse",
                              "threads"))


def test_an_anc_levels_own_head_is_adapted_too(tmp_path, team_dir):
    """A joint checkpoint's Tiny head (the head that answers Tiny's frames) is fine-tuned on the
    same frames as the shared head, with its own record; the shared head is adapted as before."""
    _, a, _ = tiny_pair()
    a.cfg.scene_head = True
    a.add_motion_head()
    a.add_level_head(0, 8)
    ck = tmp_path / "joint.pt"
    save_checkpoint(str(ck), a)
    before, _ = load_checkpoint(str(ck))
    s = finetune(str(ck), str(team_dir), str(tmp_path / "o.pt"), epochs=1, mirror=False,
                 threads=1)
    assert list(s["levels"]) == ["tiny"] and s["levels"]["tiny"]["width"] == 8
    rec = s["levels"]["tiny"]
    assert rec["before"]["frames"] == rec["after"]["frames"] == s["val_frames"] > 0
    assert rec["best_epoch"] == 1 and "gesture" in rec["temperatures"]
    out, meta = load_checkpoint(str(tmp_path / "o.pt"))
    assert meta["finetune"]["levels"]["tiny"]["width"] == 8
    for old, new in ((before.level_motion["tiny"], out.level_motion["tiny"]),
                     (before.motion, out.motion)):
        assert any(not torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())
