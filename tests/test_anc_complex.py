"""The complex/quiet frames of `edge-vlm bench anc` and the budget sweep's monotonicity."""
import numpy as np

from edge_vlm.bench.anc_complex import (COMPLEX_KINDS, GROUPS, ComplexFrame, answer_right,
                                        budget_monotone, complex_figures, in_group)
from edge_vlm.bench.recordings import sim_frames
from edge_vlm.bench.recordings import test_recordings as bench_recordings
from edge_vlm.cores.graph import replay_params
from edge_vlm.inference.factory import load_model


def test_budget_monotone_is_strict_on_both_axes():
    up = [{"budget": b, "accuracy": a, "gflops": g}
          for b, a, g in ((0.25, 0.80, 0.1), (0.5, 0.85, 0.2), (1.0, 0.85, 0.4))]
    assert budget_monotone(up) is True
    assert budget_monotone(list(reversed(up))) is True          # sorted by budget first
    dip = [dict(r) for r in up]
    dip[2]["accuracy"] = 0.849                                  # any fall is a no
    assert budget_monotone(dip) is False
    cheaper = [dict(r) for r in up]
    cheaper[1]["gflops"] = 0.05
    assert budget_monotone(cheaper) is False
    assert budget_monotone([{"budget": 1.0, "accuracy": None, "gflops": 1}]) is None


class _Scene:
    def __init__(self, kind):
        self.kind = kind


class _Res:
    def __init__(self, label, kind):
        self.label, self.scene = label, _Scene(kind)


def test_a_scene_frame_is_right_only_with_no_gesture_and_its_kind():
    f = ComplexFrame(np.zeros(1), "complex", 0, "two_movers", 0)
    assert answer_right(_Res(0, "two_movers"), f)
    assert not answer_right(_Res(0, "walk"), f)
    assert not answer_right(_Res(3, "two_movers"), f)
    g = ComplexFrame(np.zeros(1), "complex", 5, None, 0)
    assert answer_right(_Res(5, "gesture"), g) and not answer_right(_Res(4, "gesture"), g)


def test_groups_split_each_set_into_gesture_clips_and_scene_segments():
    clip = ComplexFrame(np.zeros(1), "quiet", 3, None, 0)
    seg = ComplexFrame(np.zeros(1), "quiet", 0, "nothing", 0)
    assert [g for g in GROUPS if in_group(clip, g)] == ["quiet", "quiet_gesture"]
    assert [g for g in GROUPS if in_group(seg, g)] == ["quiet", "quiet_scene"]


def test_complex_figures_quick_on_the_shipped_model():
    params = replay_params(graph=None).captioner
    model, meta = load_model("")
    frames = [sim_frames(r, params) for r in bench_recordings(quick=True)]
    out = complex_figures(model, params, meta, frames, quick=True)
    assert out["complex_scene_kinds"] == list(COMPLEX_KINDS)
    assert out["frames"]["complex"] > 0 and out["frames"]["quiet"] > 0
    for k in ("tiny", "medium", "routed"):
        for g in ("complex", "quiet"):
            assert 0.0 <= out[f"accuracy_{k}_{g}"] <= 1.0
    for g in ("complex", "quiet"):
        assert abs(sum(out[f"branch_share_{g}"].values()) - 1.0) < 1e-9
        # each set is its gesture clips plus its scene segments, in frames and in accuracy
        halves = {h: out["frames"][f"{g}_{h}"] for h in ("gesture", "scene")}
        assert sum(halves.values()) == out["frames"][g]
        for k in ("tiny", "medium", "routed"):
            both = sum(n * out[f"accuracy_{k}_{g}_{h}"] for h, n in halves.items() if n)
            assert abs(both / out["frames"][g] - out[f"accuracy_{k}_{g}"]) < 1e-9
            assert all(out[f"accuracy_{k}_{g}_{h}"] is None for h, n in halves.items() if not n)
    assert out["anc_accuracy_gap_complex"] == (out["accuracy_medium_complex"]
                                               - out["accuracy_tiny_complex"])
