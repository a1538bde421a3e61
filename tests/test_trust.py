"""Trust metrics and stream statistics on hand-built rows with known answers."""
import json

import numpy as np
import pytest

from edge_vlm.evaluation.metrics import confusion_matrix, gesture_accuracy
from edge_vlm.evaluation.trust import (AMBIGUOUS, ECE_BINS, TRUST_KEYS, TrustRow, calibration,
                                       caption_class, stream_statistics, trust_metrics)
from edge_vlm.evaluation.trust_report import stream_markdown, trust_markdown
from edge_vlm.sim.captions import (NOTHING_MOVES, SCENE_KINDS, canonical_caption,
                                   reference_captions, scene_caption)

MS = 1_000_000
P = 100 * MS                  # 100 ms frames
WAVE = "a person on the left waves the right hand quickly"       # names class 2
DRUMS = "a person in the center plays air drums slowly"          # names class 9
WALK = "a person walks from left to right quickly"              # names no gesture


def row(i, text, label, conf=0.9, seg=None, gt=None, scene=None, stream="s", kind=None,
        branch=None):
    return TrustRow(stream, i * P, (i + 1) * P, text, label, conf, seg, gt, scene, kind, branch)


def segments():
    """0: gesture 2 over frames 0..3 (0.4 s); 1: walk over 4..5; 2: nothing over 6..7."""
    return [{"label": 2, "scene": "gesture", "t_start_ns": 0, "t_end_ns": 4 * P},
            {"label": 0, "scene": "walk", "t_start_ns": 4 * P, "t_end_ns": 6 * P},
            {"label": 0, "scene": "nothing", "t_start_ns": 6 * P, "t_end_ns": 8 * P}]


def labelled_rows():
    return [
        row(0, WAVE, 2, 0.9, 0, 2, "gesture"),
        row(1, DRUMS, 9, 0.6, 0, 2, "gesture"),         # wrong label, consistent caption
        row(2, WAVE, 2, 0.9, 0, 2, "gesture"),
        row(3, DRUMS, 2, 0.9, 0, 2, "gesture"),         # right label, caption names 9
        row(4, WALK, 0, 0.8, 1, 0, "walk"),
        row(5, WAVE, 2, 0.7, 1, 0, "walk"),             # false specific gesture
        row(6, NOTHING_MOVES, 0, 0.95, 2, 0, "nothing"),
        row(7, "a person claps hands", 11, 0.5, 2, 0, "nothing"),   # label 11 is not "specific"
    ]


# --------------------------------------------------------------------------- caption grammar
def test_caption_class_reads_the_grammar():
    for label in range(1, 12):
        attrs = {"size": "tall", "position": "left", "speed": "fast", "lighting": "lab"}
        assert caption_class(canonical_caption(label, attrs)) == label
        for ref in reference_captions(label, attrs, seed=3):
            assert caption_class(ref) == label, ref
    # clockwise is not read inside counter-clockwise / anticlockwise
    assert caption_class("a person rotates the right arm counter-clockwise") == 5
    assert caption_class("someone circling their left arm anticlockwise") == 7
    for kind in SCENE_KINDS:
        if kind != "gesture":
            text = scene_caption(kind, {"direction": "up", "speed": "slow", "position": "right"})
            assert caption_class(text) == 0, text
    assert caption_class(NOTHING_MOVES) == 0 and caption_class("") == 0
    assert caption_class("  A Person  CLAPS hands ") == 1
    assert caption_class("a person claps hands and plays air guitar") == AMBIGUOUS


# --------------------------------------------------------------------------- trust metrics
def test_trust_metrics_known_answers():
    t = trust_metrics(labelled_rows(), segments())
    json.dumps(t, allow_nan=False)
    assert t["ground_truth"] is True
    # consistent: 0 (2/WAVE), 1 (9/DRUMS), 2, 4 (0/WALK), 5 (2/WAVE), 6 (0/nothing); not 3, 7
    assert t["caption_label_consistency"] == pytest.approx(6 / 8)
    # gesture frames 0..3 (truth 2): captions name 2, 9, 2, 9 / labels 2, 9, 2, 2
    assert t["caption_class_accuracy"] == pytest.approx(2 / 4)
    assert t["accuracy"] == pytest.approx(3 / 4)
    # non-gesture frames 4..7: labels 0, 2, 0, 11 -> one specific gesture
    assert t["false_gesture_rate_non_gesture"] == pytest.approx(1 / 4)
    # empty scene frames 6, 7: one says exactly "nothing moves"
    assert t["nothing_moves_rate_empty"] == pytest.approx(1 / 2)
    # switches inside the gesture segment: 2->9->2->2 = 2, over 0.4 s
    assert t["label_switches_in_gesture"] == 2
    assert t["gesture_segment_s"] == pytest.approx(0.4)
    assert t["label_switches_per_s_in_gesture"] == pytest.approx(5.0)
    assert (t["frames"], t["gesture_frames"], t["non_gesture_frames"], t["nothing_frames"],
            t["calibration_frames"]) == (8, 4, 4, 2, 8)
    # ECE by hand: correct = [1,0,1,1, 1,0,1,0]; conf 0.9 x3 (bin 13), 0.6 (9), 0.8 (12),
    # 0.7 (10), 0.95 (14), 0.5 (7)
    ece = (3 / 8) * abs(1.0 - 0.9) + (1 / 8) * 0.6 + (1 / 8) * abs(1 - 0.8) + (1 / 8) * 0.7 \
        + (1 / 8) * abs(1 - 0.95) + (1 / 8) * 0.5
    assert t["ece"] == pytest.approx(ece)
    rel = t["reliability"]
    assert rel["bins"] == ECE_BINS == 15 and len(rel["edges"]) == 16
    assert sum(rel["count"]) == 8 and rel["count"][13] == 3
    assert rel["accuracy"][13] == pytest.approx(1.0)
    assert rel["confidence"][13] == pytest.approx(0.9)
    assert rel["accuracy"][0] is None and rel["confidence"][0] is None


def test_trust_metrics_without_ground_truth_and_empty():
    rows = [row(0, WAVE, 2), row(1, DRUMS, 2), row(2, NOTHING_MOVES, 0)]
    t = trust_metrics(rows)
    assert t["ground_truth"] is False
    assert t["caption_label_consistency"] == pytest.approx(2 / 3)     # needs no ground truth
    for k in TRUST_KEYS:
        assert t[k] is None, k
    assert t["reliability"]["count"] == [0] * ECE_BINS
    e = trust_metrics([])
    assert e["frames"] == 0 and e["caption_label_consistency"] is None and e["ece"] is None
    json.dumps(e, allow_nan=False)
    assert "no ground truth" in "\n".join(trust_markdown({"trust": t}))


def test_trust_metrics_only_gestures():
    """A DvsGesture-like source: no scene segments -> the scene metrics are None."""
    rows = [row(i, WAVE, 2, 1.0, 0, 2, "gesture") for i in range(4)]
    t = trust_metrics(rows, segments()[:1])
    assert t["accuracy"] == 1.0 and t["caption_class_accuracy"] == 1.0
    assert t["false_gesture_rate_non_gesture"] is None and t["nothing_moves_rate_empty"] is None
    assert t["ece"] == pytest.approx(0.0) and t["label_switches_per_s_in_gesture"] == 0.0


def test_gesture_switch_rate_clips_to_replayed_part():
    """Only half of a 0.4 s segment replayed (max_frames): the rate is over 0.2 s."""
    rows = [row(0, WAVE, 2, seg=0, gt=2, scene="gesture"),
            row(1, DRUMS, 9, seg=0, gt=2, scene="gesture")]
    t = trust_metrics(rows, segments())
    assert t["gesture_segment_s"] == pytest.approx(0.2)
    assert t["label_switches_per_s_in_gesture"] == pytest.approx(5.0)


def test_calibration_edges():
    cal = calibration([0.0, 1.0, 1.0, 0.5], [False, True, True, True])
    assert cal.reliability["count"][0] == 1 and cal.reliability["count"][-1] == 2
    assert cal.ece == pytest.approx(0.25 * 0.5)          # only the 0.5 bin is off (1 vs 0.5)
    assert calibration([], []).ece is None
    with pytest.raises(ValueError):
        calibration([0.5], [True, False])


# --------------------------------------------------------------------------- stream statistics
def test_stream_statistics_known_answers():
    rows = [row(0, WAVE, 2, kind="gesture", branch="medium"),
            row(1, WAVE, 2, kind="gesture", branch="medium"),
            row(2, NOTHING_MOVES, 0, kind="nothing", branch="low"),
            row(3, WAVE, 2, kind="gesture", branch="medium"),
            row(0, DRUMS, 9, stream="b"), row(1, DRUMS, 9, stream="b")]
    s = stream_statistics(rows)
    json.dumps(s, allow_nan=False)
    assert set(s["label_distribution"]) == {str(k) for k in range(12)}
    assert s["label_distribution"]["2"] == pytest.approx(3 / 6)
    assert s["label_distribution"]["0"] == pytest.approx(1 / 6)
    assert s["label_distribution"]["5"] == 0.0
    # stream s: 2,2,0,2 -> 2 switches over 0.4 s; stream b: none over 0.2 s (not across streams)
    assert s["label_switches"] == 2 and s["duration_s"] == pytest.approx(0.6)
    assert s["label_switches_per_s"] == pytest.approx(2 / 0.6)
    assert s["scene_kind_distribution"] == {"gesture": pytest.approx(3 / 4),
                                            "nothing": pytest.approx(1 / 4)}
    assert s["branch_shares"] == {"low": pytest.approx(0.25), "medium": pytest.approx(0.75)}
    assert s["top_caption"] == WAVE and s["top_caption_share"] == pytest.approx(3 / 6)
    assert s["distinct_captions"] == 3
    ex = s["caption_examples"]
    assert [(e["stream"], e["text"]) for e in ex] == [("s", WAVE), ("s", NOTHING_MOVES),
                                                      ("s", WAVE), ("b", DRUMS)]
    assert [e["t_s"] for e in ex] == pytest.approx([0.1, 0.3, 0.4, 0.1])
    md = "\n".join(stream_markdown({"stream": s}))
    assert "2 right_hand_wave" in md and "nothing moves" in md and "medium" in md


def test_stream_statistics_edge_cases():
    s = stream_statistics([])
    assert s["label_switches_per_s"] is None and s["top_caption"] is None
    assert s["scene_kind_distribution"] is None and s["branch_shares"] is None
    assert s["caption_examples"] == [] and set(s["label_distribution"].values()) == {0.0}
    # no scene/branch reported (engine before the scene head); examples are capped at 20
    rows = [row(i, f"caption {i % 2}", i % 2) for i in range(50)]
    s = stream_statistics(rows)
    assert s["scene_kind_distribution"] is None and s["branch_shares"] is None
    assert len(s["caption_examples"]) == 20
    assert s["label_switches"] == 49 and s["top_caption_share"] == pytest.approx(0.5)


def test_no_gesture_label_in_accuracy_and_confusion():
    assert gesture_accuracy([2, 2], [0, 2])["accuracy"] == 0.5
    cm = confusion_matrix([0, 0, 2], [0, 3, 2], no_gesture=True)
    assert cm["labels"] == list(range(12)) and cm["class_names"][0] == "no_gesture"
    counts = np.asarray(cm["counts"])
    assert counts.shape == (12, 12) and counts[0, 0] == 1 and counts[0, 3] == 1
    assert counts[2, 2] == 1


def test_segment_vote_lets_no_gesture_frames_abstain():
    from edge_vlm.evaluation.trust import segment_vote

    assert segment_vote([0, 0, 0, 3, 3, 2]) == 3        # the gesture published most often
    assert segment_vote([0, 0]) == 0                    # no frame published a gesture
    assert segment_vote([2, 3], [0.2, 0.9]) == 3        # a tie: the larger summed confidence
    assert segment_vote([3, 2]) == 2                    # ... then the lower label
