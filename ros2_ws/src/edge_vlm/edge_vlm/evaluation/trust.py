"""Trust metrics of the published outputs: can a robot believe what the captioner says?

Pure functions (numpy only) over per-frame :class:`TrustRow` s (one per captioned frame, in
replay order). With ground truth (``gt_label``: 1..11 gesture, 0 = a non-gesture scene;
``gt_scene``: its kind of :data:`edge_vlm.sim.captions.SCENE_KINDS`) :func:`trust_metrics`
measures whether the caption agrees with the label and the truth, false gestures on scenes
without one, "nothing moves" on empty scenes, calibration (ECE + reliability diagram) and label
flicker inside gestures. :func:`stream_statistics` needs no ground truth at all: what a team
can check on an unlabelled recording (label and scene distributions, flicker, ANC routing,
caption diversity and examples over time).

The caption is read with the grammar of :mod:`edge_vlm.sim.captions`: the verb and gerund
phrases of :data:`~edge_vlm.sim.captions.CLASS_PHRASES` name a gesture class; a caption that
names none ("nothing moves", "a person walks from left to right slowly", ...) names "no
gesture" (0).
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

from edge_vlm.sim.captions import CLASS_PHRASES, NOTHING_MOVES

__all__ = ["TrustRow", "Calibration", "ECE_BINS", "AMBIGUOUS", "caption_class", "segment_vote",
           "calibration", "trust_metrics", "stream_statistics", "TRUST_KEYS"]

#: equal-width confidence bins of the expected calibration error
ECE_BINS = 15
#: :func:`caption_class` of a caption that names several gesture classes
AMBIGUOUS = -1
#: the 10 specific gestures (11 = "another gesture" is not a false specific gesture)
SPECIFIC_GESTURES = frozenset(range(1, 11))
#: example captions kept by :func:`stream_statistics`
MAX_CAPTION_EXAMPLES = 20
#: the keys of :func:`trust_metrics` that need ground truth (None without it)
TRUST_KEYS = ("caption_class_accuracy", "accuracy", "false_gesture_rate_non_gesture",
              "nothing_moves_rate_empty", "ece", "label_switches_per_s_in_gesture")


class TrustRow(NamedTuple):
    """What the trust metrics read of one captioned frame."""

    stream: str
    t_start: int                 # frame window (ns)
    t_end: int
    text: str                    # published caption
    label: int                   # published gesture: 1..11, 0 = no gesture
    confidence: float            # published confidence of ``label``
    segment: int | None = None   # ground-truth segment holding the frame (global index)
    gt_label: int | None = None  # its label: 1..11 gesture, 0 non-gesture scene
    gt_scene: str | None = None  # its scene kind ("gesture", "nothing", "walk", ...)
    scene_kind: str | None = None    # scene kind the engine reported, if any
    branch: str | None = None        # ANC branch, if any


class Calibration(NamedTuple):
    """Expected calibration error and the reliability diagram's data."""

    ece: float | None
    reliability: dict


def _phrase_table() -> list[tuple[re.Pattern, int]]:
    """Every verb / gerund phrase of the grammar -> its class, longest first."""
    pairs = {}
    for label, (vp0, vps, gers) in CLASS_PHRASES.items():
        for phrase in (vp0, *vps, *gers):
            pairs[" ".join(phrase.lower().split())] = int(label)
    ordered = sorted(pairs.items(), key=lambda kv: -len(kv[0]))
    return [(re.compile(r"(?<![\w-])" + re.escape(p) + r"(?![\w-])"), lab) for p, lab in ordered]


_PHRASES = _phrase_table()


@lru_cache(maxsize=4096)
def caption_class(text: str) -> int:
    """The gesture class a caption names: 1..11, 0 when it names none (scene captions,
    "nothing moves", empty text), :data:`AMBIGUOUS` when it names several classes. Longer
    phrases win over the shorter ones they contain."""
    s = " " + " ".join(str(text).lower().split()) + " "
    found = set()
    for pat, label in _PHRASES:
        m = pat.search(s)
        while m is not None:
            found.add(label)
            s = s[:m.start()] + " " * (m.end() - m.start()) + s[m.end():]
            m = pat.search(s)
    if not found:
        return 0
    return found.pop() if len(found) == 1 else AMBIGUOUS


def segment_vote(labels: Sequence[int], confidences: Sequence[float] | None = None) -> int:
    """THE per-sample decision of a segment (the DVS128 Gesture paper's per-sample accuracy):
    the gesture published on most of its frames; frames that published "no gesture" (0)
    abstain, so a segment is 0 only when no frame published a gesture. Ties go to the larger
    summed confidence, then to the lower label."""
    votes: Counter = Counter(int(x) for x in labels if int(x) > 0)
    if not votes:
        return 0
    conf: Counter = Counter()
    for lab, c in zip(labels, confidences if confidences is not None else [0.0] * len(labels)):
        conf[int(lab)] += float(c)
    best = max(votes.values())
    return max((lab for lab, v in votes.items() if v == best), key=lambda lab: (conf[lab], -lab))


def _share(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def calibration(confidence: Sequence[float], correct: Sequence[bool],
                bins: int = ECE_BINS) -> Calibration:
    """ECE over ``bins`` equal-width confidence bins of [0, 1] (the last bin includes 1):
    sum over bins of (bin frames / all frames) * |accuracy - mean confidence|. The reliability
    data: ``edges``, per bin ``confidence`` (mean), ``accuracy`` (None for an empty bin) and
    ``count``. No frames: ECE None."""
    c = np.clip(np.asarray(confidence, dtype=np.float64).reshape(-1), 0.0, 1.0)
    ok = np.asarray(correct, dtype=np.float64).reshape(-1)
    if c.shape != ok.shape:
        raise ValueError(f"{c.size} confidences but {ok.size} correctness flags")
    idx = np.minimum((c * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=c, minlength=bins)
    acc_sum = np.bincount(idx, weights=ok, minlength=bins)
    has = count > 0
    mean_conf = np.where(has, conf_sum / np.maximum(count, 1), np.nan)
    mean_acc = np.where(has, acc_sum / np.maximum(count, 1), np.nan)
    ece = (float(np.sum(count[has] / c.size * np.abs(mean_acc[has] - mean_conf[has])))
           if c.size else None)
    rel = {"bins": int(bins), "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
           "confidence": [float(v) if h else None for v, h in zip(mean_conf, has)],
           "accuracy": [float(v) if h else None for v, h in zip(mean_acc, has)],
           "count": count.astype(int).tolist(), "frames": int(c.size)}
    return Calibration(ece, rel)


def _switches(rows: Sequence[TrustRow]) -> int:
    """Changes of the published label between consecutive rows."""
    return sum(1 for a, b in zip(rows, rows[1:]) if a.label != b.label)


def _by(rows: Sequence[TrustRow], key) -> dict:
    """Rows grouped by ``key(row)`` (first-seen order), each group sorted by ``t_end``."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return {k: sorted(v, key=lambda r: r.t_end) for k, v in groups.items()}


def _held_switches(rows: Sequence[TrustRow]) -> int:
    """Label changes while a gesture is held: between the first frame of the segment that
    publishes a gesture (the onset from "no gesture" is not flicker) and the last one that does
    (the offset back to "no gesture" as the arm returns to rest is not flicker either)."""
    labels = [r.label for r in rows]
    shown = [i for i, lab in enumerate(labels) if lab > 0]
    if not shown:
        return 0
    held = labels[shown[0]:shown[-1] + 1]
    return sum(1 for a, b in zip(held, held[1:]) if a != b)


def _gesture_switch_rate(gesture: Sequence[TrustRow], segments: Sequence[dict]) -> dict:
    """Label switches while a gesture is held (:func:`_held_switches`) inside each ground-truth
    gesture segment per second of those segments (each segment's duration clipped to the part
    the replay covered: from its start, or its first frame's start if later, to its end, or its
    last frame's end if earlier); ``label_switches_per_s_in_gesture_all`` counts every change,
    onset and offset included."""
    switches, every, seconds = 0, 0, 0.0
    for seg_id, fr in _by(gesture, lambda r: r.segment).items():
        switches += _held_switches(fr)
        every += _switches(fr)
        if seg_id is not None and 0 <= seg_id < len(segments):
            seg = segments[seg_id]
            lo = max(int(seg["t_start_ns"]), fr[0].t_start)
            hi = min(int(seg["t_end_ns"]), fr[-1].t_end)
        else:
            lo, hi = fr[0].t_start, fr[-1].t_end
        seconds += max(0, hi - lo) / 1e9
    return {"label_switches_per_s_in_gesture": (switches / seconds) if seconds > 0 else None,
            "label_switches_per_s_in_gesture_all": (every / seconds) if seconds > 0 else None,
            "label_switches_in_gesture": switches, "gesture_segment_s": seconds}


def trust_metrics(rows: Sequence[TrustRow], segments: Sequence[dict] = ()) -> dict:
    """The trust metrics of ``rows`` (``segments``: the ground-truth segments indexed by
    ``TrustRow.segment``, for their durations). ``caption_label_consistency`` needs no ground
    truth; the keys of :data:`TRUST_KEYS` are None without it (or without the frames they
    need); ``ground_truth``: whether any frame lies in a ground-truth segment.
    ``calibration_frames``: frames of gesture and non-gesture segments (correct = published
    label == truth, 0 on non-gesture scenes)."""
    rows = list(rows)
    gesture = [r for r in rows if r.gt_label is not None and r.gt_label >= 1]
    non_gesture = [r for r in rows if r.gt_label == 0]
    empty = [r for r in rows if r.gt_label == 0 and r.gt_scene == "nothing"]
    judged = gesture + non_gesture
    named = [caption_class(r.text) for r in rows]
    cal = calibration([r.confidence for r in judged], [r.label == r.gt_label for r in judged])
    out = {
        "ground_truth": bool(judged),
        "caption_label_consistency": _share([n == r.label for n, r in zip(named, rows)]),
        "caption_class_accuracy": _share([caption_class(r.text) == r.gt_label for r in gesture]),
        "accuracy": _share([r.label == r.gt_label for r in gesture]),
        "false_gesture_rate_non_gesture": _share([r.label in SPECIFIC_GESTURES
                                                  for r in non_gesture]),
        "nothing_moves_rate_empty": _share([" ".join(r.text.split()) == NOTHING_MOVES
                                            for r in empty]),
        "ece": cal.ece,
        "reliability": cal.reliability,
        **_gesture_switch_rate(gesture, segments),
        "frames": len(rows), "gesture_frames": len(gesture),
        "non_gesture_frames": len(non_gesture), "nothing_frames": len(empty),
        "calibration_frames": len(judged),
        "ece_bins": ECE_BINS,
    }
    return out


def _distribution(values: Sequence) -> dict:
    """Share of each value (sorted by value as text)."""
    n = len(values)
    counts = Counter(values)
    return {str(k): counts[k] / n for k in sorted(counts, key=str)} if n else {}


def _caption_examples(rows: Sequence[TrustRow], firsts: dict[str, int]) -> list[dict]:
    """The caption at each change of caption (a stream's first frame included), capped."""
    out: list[dict] = []
    prev: tuple[str, str] | None = None
    for r in rows:
        if (r.stream, r.text) != prev:
            out.append({"stream": r.stream, "t_s": (r.t_end - firsts[r.stream]) / 1e9,
                        "label": r.label, "text": r.text})
            prev = (r.stream, r.text)
            if len(out) >= MAX_CAPTION_EXAMPLES:
                break
    return out


def stream_statistics(rows: Sequence[TrustRow], num_labels: int = 12) -> dict:
    """What the outputs of a recording look like, without ground truth.

    ``label_distribution``: share of frames per published label (every label
    ``0..num_labels-1`` listed, 0 = no gesture); ``label_switches_per_s``: label changes
    between consecutive frames of a stream per second of the streams (first frame start to last
    frame end); ``scene_kind_distribution`` / ``branch_shares``: share per reported scene kind /
    ANC branch over the frames that report one (None when none does); ``top_caption`` and
    ``top_caption_share``; ``caption_examples``: the caption at each change of caption with its
    time since the stream's first frame (``t_s``), at most :data:`MAX_CAPTION_EXAMPLES`."""
    rows = list(rows)
    n = len(rows)
    streams = _by(rows, lambda r: r.stream)
    seconds = sum(max(0, fr[-1].t_end - fr[0].t_start) for fr in streams.values()) / 1e9
    switches = sum(_switches(fr) for fr in streams.values())
    labels = Counter(r.label for r in rows)
    dist = {str(k): (labels[k] / n if n else 0.0)
            for k in sorted(set(range(num_labels)) | set(labels))}
    kinds = [r.scene_kind for r in rows if r.scene_kind]
    branches = [r.branch for r in rows if r.branch]
    top = Counter(r.text for r in rows).most_common(1)
    firsts = {s: fr[0].t_start for s, fr in streams.items()}
    return {
        "duration_s": seconds,
        "label_distribution": dist,
        "label_switches": switches,
        "label_switches_per_s": (switches / seconds) if seconds > 0 else None,
        "scene_kind_distribution": _distribution(kinds) if kinds else None,
        "branch_shares": _distribution(branches) if branches else None,
        "distinct_captions": len({r.text for r in rows}),
        "top_caption": top[0][0] if top else None,
        "top_caption_share": (top[0][1] / n) if top else None,
        "caption_examples": _caption_examples(rows, firsts),
    }
