"""The trust part of the evaluation report: Markdown sections of the trust metrics and of the
stream statistics, the reliability diagram (with ground truth) and the timeline of the
published outputs (whose title and axes say nothing about ground truth when there is none)."""
from __future__ import annotations

import numpy as np

from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES
from edge_vlm.evaluation.metrics import NO_GESTURE_NAME
from edge_vlm.evaluation.trust import ECE_BINS
from edge_vlm.report import fmt_value
from edge_vlm.sim.captions import SCENE_KINDS

#: the Markdown line of a source without ground truth
NO_GROUND_TRUTH = ("no ground truth: the source has no ground-truth segments, so accuracy, "
                   "caption scores and the trust metrics that need the truth are not computed")
#: title of the timeline plot (no mention of ground truth: it also serves unlabelled streams)
TIMELINE_TITLE = "Published gesture and scene over time"


def _f(v, digits: int = 4) -> str:
    return fmt_value(v, digits, fixed=True)


def label_name(label: int) -> str:
    """``"0 no_gesture"``, ``"2 right_hand_wave"``, ..."""
    k = int(label)
    name = GESTURE_CLASSES[k - 1] if 1 <= k <= len(GESTURE_CLASSES) else (
        NO_GESTURE_NAME if k == 0 else "unknown")
    return f"{k} {name}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def trust_markdown(result: dict) -> list[str]:
    """The "Trust of the published outputs" section."""
    t = result.get("trust") or {}
    lines = ["", "## Trust of the published outputs", "", "| metric | value |", "|---|---|",
             f"| caption_label_consistency (the caption names the published gesture, or none "
             f"for label 0; all frames) | {_f(t.get('caption_label_consistency'))} "
             f"({t.get('frames', 0)} frames) |"]
    if not t.get("ground_truth"):
        return lines + ["", NO_GROUND_TRUTH + "."]
    rows = [
        ("caption_class_accuracy (the caption names the true gesture; gesture frames)",
         t.get("caption_class_accuracy"), f"{t.get('gesture_frames', 0)} frames"),
        ("accuracy (published gesture = true gesture; gesture frames)", t.get("accuracy"),
         f"{t.get('gesture_frames', 0)} frames"),
        ("false_gesture_rate_non_gesture (one of gestures 1..10 published in a scene without "
         "gesture)", t.get("false_gesture_rate_non_gesture"),
         f"{t.get('non_gesture_frames', 0)} frames"),
        ("nothing_moves_rate_empty (caption is exactly \"nothing moves\" in empty scenes)",
         t.get("nothing_moves_rate_empty"), f"{t.get('nothing_frames', 0)} frames"),
        (f"ece (published confidence vs correctness, {t.get('ece_bins', ECE_BINS)} bins; "
         "gesture and non-gesture frames)", t.get("ece"),
         f"{t.get('calibration_frames', 0)} frames"),
        ("label_switches_per_s_in_gesture (published label changes inside gesture segments)",
         t.get("label_switches_per_s_in_gesture"),
         f"{t.get('label_switches_in_gesture', 0)} switches in "
         f"{_f(t.get('gesture_segment_s'), 2)} s"),
    ]
    lines += [f"| {k} | {_f(v)} ({n}) |" for k, v, n in rows]
    return lines


def _share_table(title: str, head: str, shares: dict | None, empty: str,
                 name=lambda k: k) -> list[str]:
    lines = ["", f"### {title}", ""]
    if not shares:
        return lines + [empty]
    lines += [f"| {head} | share of frames |", "|---|---|"]
    return lines + [f"| {_cell(name(k))} | {_f(v, 3)} |" for k, v in shares.items()]


def stream_markdown(result: dict) -> list[str]:
    """The "Stream statistics" section (needs no ground truth)."""
    s = result.get("stream") or {}
    if "label_distribution" not in s:
        return []
    share = s.get("top_caption_share")
    lines = ["", "## Stream statistics (no ground truth needed)", "", "| statistic | value |",
             "|---|---|",
             "| duration (s, first frame start to last frame end) | "
             f"{_f(s.get('duration_s'), 2)} |",
             f"| label switches per second | {_f(s.get('label_switches_per_s'), 3)} "
             f"({s.get('label_switches', 0)} switches) |",
             f"| distinct captions | {s.get('distinct_captions', 0)} |",
             f"| top caption (share of frames) | \"{_cell(s.get('top_caption') or '')}\" "
             f"({_f(share, 3)}) |"]
    lines += _share_table("Published gesture labels", "label", s.get("label_distribution"),
                          "no frames.", label_name)
    lines += _share_table("Reported scene kinds", "scene kind", s.get("scene_kind_distribution"),
                          "the engine reported no scene kind.")
    lines += _share_table("ANC branches", "branch", s.get("branch_shares"),
                          "no frame reported an ANC branch.")
    ex = s.get("caption_examples") or []
    multi = len({e["stream"] for e in ex}) > 1
    lines += ["", f"### Caption examples (at each change of caption, first {len(ex)})", ""]
    if not ex:
        return lines + ["no frames."]
    lines += ["| stream | t (s) | label | caption |" if multi else "| t (s) | label | caption |",
              "|---|---|---|---|" if multi else "|---|---|---|"]
    for e in ex:
        cells = ([_cell(e["stream"])] if multi else []) + [
            _f(e["t_s"], 2), label_name(e["label"]), f"\"{_cell(e['text'])}\""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def plot_reliability(trust: dict, path: str) -> None:
    """Reliability diagram: share correct per confidence bin vs the diagonal, frames per bin."""
    rel = trust["reliability"]
    bins = int(rel["bins"])
    edges = np.asarray(rel["edges"], dtype=float)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / bins
    acc = [a if a is not None else 0.0 for a in rel["accuracy"]]
    fig = _figure((6.5, 6.5))
    ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers, acc, width=width * 0.9, color="tab:blue", label="share correct")
    conf = [(c, x) for c, x in zip(rel["confidence"], centers) if c is not None]
    ax.plot([x for _, x in conf], [c for c, _ in conf], "o", color="tab:orange", ms=4,
            label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="0.4", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of frames whose published label is correct")
    ax.set_title(f"Reliability of the published confidence (ECE {_f(trust.get('ece'), 3)}, "
                 f"{rel.get('frames', sum(rel['count']))} frames)")
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(centers, rel["count"], width=width * 0.9, color="0.5")
    axc.set_xlabel("published confidence")
    axc.set_ylabel("frames")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _x_axis(records: list[dict]) -> tuple[np.ndarray, str]:
    if len({r["stream"] for r in records}) == 1:
        t0 = records[0]["t_end"]
        return (np.asarray([(r["t_end"] - t0) / 1e9 for r in records]),
                "sensor time since the first frame (s)")
    return np.arange(len(records), dtype=float), "processed frame (all streams)"


def _shade_segments(ax, x: np.ndarray, records: list[dict]) -> None:
    seg_of = [r.get("segment") for r in records]
    start, labelled = None, False
    for i, s in enumerate(seg_of + [None]):
        if start is not None and (s is None or s != seg_of[start]):
            ax.axvspan(x[start], x[i - 1], color="0.88", lw=0, zorder=0,
                       label=None if labelled else "ground-truth segment")
            start, labelled = None, True
        if s is not None and start is None:
            start = i


def timeline_figure(records: list[dict], ground_truth: bool):
    """The published label (top, with the caption changes) and the reported scene kind
    (bottom) per frame. Ground-truth segments are shaded only when ``ground_truth``."""
    fig = _figure((10, 5.2))
    ax, axs = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax.set_title(TIMELINE_TITLE)
    n_labels = len(GESTURE_CLASSES) + 1
    ax.set_yticks(range(n_labels), [label_name(k) for k in range(n_labels)], fontsize=6)
    ax.set_ylim(-0.5, n_labels + 0.2)
    ax.set_ylabel("published gesture")
    axs.set_yticks(range(len(SCENE_KINDS)), list(SCENE_KINDS), fontsize=6)
    axs.set_ylim(-0.5, len(SCENE_KINDS) - 0.5)
    axs.set_ylabel("reported scene")
    if not records:
        axs.set_xlabel("processed frame")
        ax.text(0.5, 0.5, "no frames", transform=ax.transAxes, ha="center")
        return fig
    x, xlabel = _x_axis(records)
    if ground_truth:
        _shade_segments(ax, x, records)
    ax.step(x, [r["label"] for r in records], where="post", lw=1.0, label="published gesture")
    texts = [r["text"] for r in records]
    changes = [x[i] for i in range(len(texts)) if i == 0 or texts[i] != texts[i - 1]]
    ax.plot(changes, [n_labels - 0.3] * len(changes), "v", ms=4, color="tab:red",
            label=f"caption changes ({len(changes)})")
    ax.legend(loc="upper right", fontsize=7)
    kinds = [(xi, (r.get("scene") or {}).get("kind")) for xi, r in zip(x, records)]
    pts = [(xi, SCENE_KINDS.index(k)) for xi, k in kinds if k in SCENE_KINDS]
    if pts:
        axs.plot([p[0] for p in pts], [p[1] for p in pts], ".", ms=3, color="tab:green")
    else:
        axs.text(0.5, 0.5, "the engine reported no scene kind", transform=axs.transAxes,
                 ha="center", va="center")
    axs.set_xlabel(xlabel)
    fig.tight_layout()
    return fig


def plot_timeline(records: list[dict], ground_truth: bool, path: str) -> None:
    timeline_figure(records, ground_truth).savefig(path, dpi=110)
