"""Real labelled data for training (edge_vlm.training.real_data) and `edge-vlm train --data`:
a tiny DvsGesture folder written from simulated recordings (4 users, 3 classes, 0.6 s
segments), cut into frames like the simulated path, and a labelled ROS 2 bag."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from edge_vlm.cli import main
from edge_vlm.datasets.dvs128_gesture import Dvs128Dataset, parse_trial_name, write_splits
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.sim import simulate_recording
from edge_vlm.sim.captions import class_references
from edge_vlm.sim.export import write_dvs128
from edge_vlm.training.data import histograms_on_grid, inside_segment, recording_frames
from edge_vlm.training.real_data import (dvs128_framesets, dvs128_split, labelled_dir_framesets,
                                         recordings_framesets, trial_recording)
from edge_vlm.training.train import vote_accuracy

P = 33_333_333
LABELS = (1, 2, 3)
#: (user, lighting) of the trials; users 1-3 are the official train split, user 4 the test one
TRIALS = [(1, "lab"), (1, "natural"), (2, "lab"), (3, "lab"), (4, "lab")]


def _recording(user: int, lighting: str):
    return simulate_recording(user, lighting, seed=user, labels=LABELS, clip_duration_s=0.6,
                              gap_s=0.2, with_frames=False)


@pytest.fixture(scope="module")
def dvs(tmp_path_factory):
    """A DvsGesture folder and the simulated recordings it was written from."""
    root = tmp_path_factory.mktemp("DvsGesture")
    recs = {t: _recording(*t) for t in TRIALS}
    write_dvs128(str(root), list(recs.values()))
    names = [f"user{u:02d}_{light}.aedat" for u, light in TRIALS]
    write_splits(root, names[:-1], names[-1:])
    return root, recs


def _segments(root, trials):
    ds = Dvs128Dataset(root)
    return [s for t in trials for s in ds.segments(t)]


def test_split_holds_out_users_of_the_train_trials(dvs):
    root, _ = dvs
    split = dvs128_split(root, val_users=1, seed=0)
    assert split == dvs128_split(root, val_users=1, seed=0)           # deterministic
    users = lambda ts: {parse_trial_name(t).user for t in ts}  # noqa: E731
    assert len(split.val_users) == 1 and users(split.val) == set(split.val_users)
    assert users(split.train) & users(split.val) == set()
    assert users(split.train) | users(split.val) == {1, 2, 3}
    assert [os.path.basename(t) for t in split.test] == ["user04_lab.aedat"]
    assert sorted(split.train + split.val) == sorted(Dvs128Dataset(root).trials("train"))
    with pytest.raises(ValueError, match="val-users"):
        dvs128_split(root, val_users=3, seed=0)                       # no train user left


def test_frames_match_the_simulated_path(dvs):
    """The test trial's frames: labels and histograms as the simulated recording's frames on the
    same absolute grid; captions are the class-level references; one id per segment."""
    root, recs = dvs
    fs = dvs128_framesets(root, "test", P)
    sim = recording_frames(recs[(4, "lab")], P, 0)
    common, i_real, i_sim = np.intersect1d(fs.frame_index, sim.frame_index, return_indices=True)
    assert len(common) == len(fs.frame_index)          # real frames lie on the simulated grid
    assert np.array_equal(fs.labels[i_real], sim.labels[i_sim])
    events = Dvs128Dataset(root).load("user04_lab.aedat").events
    k0, k1 = int(fs.frame_index[0]), int(fs.frame_index[-1]) + 1
    assert np.array_equal(fs.hist, histograms_on_grid(events, k0, k1, P))
    assert fs.hist.sum() > 0 and fs.rgb is None
    segs = _segments(root, ["user04_lab.aedat"])
    assert len(np.unique(fs.segment[fs.segment >= 0])) == len(segs) == len(LABELS)
    for i, seg in enumerate(segs):
        inside = inside_segment(fs.t_end, seg.start_ns, seg.end_ns)
        assert len(inside) >= 15 and set(fs.labels[inside]) == {seg.label}
        assert set(fs.segment[inside]) == {i}
        assert fs.captions[inside[0]] == class_references(seg.label)[0]
        assert fs.references[inside[0]] == class_references(seg.label)
    outside = fs.segment < 0
    assert (fs.labels[outside] == 0).all() and all(fs.captions[i] == "" for i in
                                                  np.flatnonzero(outside))


def test_train_and_val_framesets_respect_the_split(dvs):
    root, _ = dvs
    split = dvs128_split(root, val_users=1, seed=0)
    for name, trials in (("train", split.train), ("val", split.val)):
        fs = dvs128_framesets(root, name, P, val_users=1, seed=0)
        assert len(np.unique(fs.rec_index)) == len(trials)
        want = sum(len(inside_segment(fs.t_end[fs.rec_index == r], s.start_ns, s.end_ns))
                   for r, t in enumerate(trials) for s in _segments(root, [t]))
        assert int((fs.labels > 0).sum()) == want
        assert len(np.unique(fs.segment[fs.segment >= 0])) == len(_segments(root, trials))


def test_memory_mapped_frames_equal_in_memory(dvs, tmp_path):
    root, _ = dvs
    ds = Dvs128Dataset(root)
    recs = [trial_recording(ds, t) for t in ds.trials("test")]
    a = recordings_framesets(recs, P)
    b = recordings_framesets(recs, P, frames_path=str(tmp_path / "f" / "test.npy"))
    assert isinstance(b.hist, np.memmap) and np.array_equal(a.hist, b.hist)
    assert np.array_equal(a.labels, b.labels)


def test_vote_accuracy_is_per_segment_majority():
    seg = np.array([0, 0, 0, 1, 1, -1])
    truth = np.array([2, 2, 2, 5, 5, 0])
    pred = np.array([2, 2, 7, 5, 1, 3])
    got = vote_accuracy(seg, truth, pred)
    assert got.segments == 2 and got.accuracy == 0.5     # segment 1 ties 1 vs 5: lower wins


def test_team_folder_with_a_labelled_bag(dvs, tmp_path):
    """A team's folder: one aedat trial + labels (no split lists) and one ROS 2 bag labelled by
    its ground-truth topic (a non-gesture segment stays context)."""
    root, recs = dvs
    team = tmp_path / "team"
    team.mkdir()
    for f in ("user02_lab.aedat", "user02_lab_labels.csv"):
        shutil.copy(root / f, team / f)
    rec = recs[(3, "lab")]
    gt = [{**c.ground_truth(), "caption": c.caption} for c in rec.clips]
    gt.append({"label": 0, "t_start_ns": rec.clips[0].t_start_ns - 100_000_000,
               "t_end_ns": rec.clips[0].t_start_ns})
    write_bag(team / "bag1", events=rec.events, ground_truth=gt)
    fs = labelled_dir_framesets(team, P)
    assert len(np.unique(fs.rec_index)) == 2
    bag = fs.rec_index == 1
    sim = recording_frames(rec, P, 0)
    common, i_real, i_sim = np.intersect1d(fs.frame_index[bag], sim.frame_index,
                                           return_indices=True)
    assert len(common) > 30 and np.array_equal(fs.labels[bag][i_real], sim.labels[i_sim])
    assert np.array_equal(fs.hist[bag][i_real], sim.hist[i_sim])     # same events, same grid
    for clip in rec.clips:
        inside = np.flatnonzero(bag)[inside_segment(fs.t_end[bag], clip.t_start_ns,
                                                    clip.t_end_ns)]
        assert set(fs.labels[inside]) == {clip.label}
        assert fs.captions[inside[0]] == clip.caption                # the bag's own caption
    assert len(np.unique(fs.segment[fs.segment >= 0])) == 2 * len(LABELS)


def test_cli_train_data_end_to_end(dvs, tmp_path, capsys):
    root, _ = dvs
    out = tmp_path / "run" / "captioner.pt"
    rc = main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--steps", "2",
               "--batch", "4", "--dim", "32", "--depth", "1", "--window", "4", "--threads", "1",
               "--val-users", "1", "--frames-dir", str(tmp_path / "frames"), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    printed = json.loads(text[text.index("{\n"):])          # after the one-line epoch records
    summary = json.loads((out.parent / "train_summary.json").read_text())
    assert printed["test_segments"] == summary["test_segments"] == len(LABELS)  # every sample
    for key in ("test_accuracy_frames", "test_accuracy_samples"):
        assert 0.0 <= summary[key] <= 1.0 and printed[key] == summary[key]
    test_frames = int((dvs128_framesets(root, "test", P).labels > 0).sum())
    assert summary["test_events_only"]["frames"] == test_frames > 0      # all labelled frames
    assert summary["train_trials"] + summary["val_trials"] == 4 and summary["test_trials"] == 1
    assert len(summary["val_users"]) == 1 and summary["best_epoch"] == 1
    assert out.is_file() and (out.parent / "confusion_test.png").is_file()
    assert (tmp_path / "frames" / "dvs128_train.npy").is_file()


@pytest.mark.parametrize("make", ["missing", "no_lists", "sttf_only"])
def test_cli_train_data_bad_input_is_one_line(dvs, tmp_path, capsys, make):
    root, _ = dvs
    args = ["train", "--data", str(tmp_path / "nope")]
    if make == "no_lists":
        shutil.copy(root / "user01_lab.aedat", tmp_path / "user01_lab.aedat")
        args = ["train", "--data", str(tmp_path)]
    elif make == "sttf_only":
        args = ["train", "--data", str(root), "--model", "anc"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-vlm train: error:") and "\n" not in err
