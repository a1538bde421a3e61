"""DVS128 Gesture dataset (IBM DvsGesture): classes, labels, split lists, trials.

The real download (folder ``DvsGesture``) holds, per trial,
``userXX_<lighting>.aedat`` (AEDAT 3.1 event recording) and
``userXX_<lighting>_labels.csv`` (gesture segments), plus the two split lists
``trials_to_train.txt`` / ``trials_to_test.txt``. Everything here reads those
files unchanged and writes files in the same format (used for test fixtures
and for exporting simulator output).

The recordings are AEDAT 3.1 files, read and written by
:mod:`edge_vlm.io.formats.aedat31` (layout and coordinate convention there:
(0, 0) is the upper-left corner, as in this project, and the DVS128 is 128x128).
Events use :data:`edge_vlm.events.EVENT_DTYPE` with ``t = us * 1000`` (ns).
Malformed input raises :class:`edge_vlm.events.EventDecodeError`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple, Sequence

import numpy as np

from edge_vlm.events import EventDecodeError
from edge_vlm.io.formats.aedat31 import PathLike, read_aedat31, write_aedat31

#: DvsGesture class names; label ``k`` (1..11) is ``GESTURE_CLASSES[k - 1]``.
GESTURE_CLASSES: tuple[str, ...] = (
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
)

NUM_CLASSES = len(GESTURE_CLASSES)


def check_label(label: int) -> int:
    """``label`` if it is a DvsGesture label (1..11), else ValueError."""
    if not 1 <= label <= NUM_CLASSES:
        raise ValueError(f"gesture label {label} outside 1..{NUM_CLASSES}")
    return label


def class_name(label: int) -> str:
    """Class name of a 1-based DvsGesture label."""
    return GESTURE_CLASSES[check_label(label) - 1]


def class_label(name: str) -> int:
    """1-based DvsGesture label of a class name."""
    try:
        return GESTURE_CLASSES.index(name) + 1
    except ValueError:
        raise ValueError(f"unknown gesture class {name!r}") from None


# --------------------------------------------------------------------------
# Labels CSV and split lists
# --------------------------------------------------------------------------

LABELS_HEADER = "class,startTime_usec,endTime_usec"


@dataclass(frozen=True)
class Segment:
    """One labelled gesture: DvsGesture label 1..11, time span [start_us, end_us)."""

    label: int
    start_us: int
    end_us: int

    @property
    def class_name(self) -> str:
        return class_name(self.label)

    @property
    def start_ns(self) -> int:
        return self.start_us * 1000

    @property
    def end_ns(self) -> int:
        return self.end_us * 1000


def read_labels_csv(path: PathLike) -> list[Segment]:
    """Read a DvsGesture ``*_labels.csv`` (header ``class,startTime_usec,endTime_usec``)."""
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
        lines = [ln.strip() for ln in f.read().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or lines[0].replace(" ", "") != LABELS_HEADER:
        raise EventDecodeError(f"{path}: expected header {LABELS_HEADER!r}")
    segments: list[Segment] = []
    for i, ln in enumerate(lines[1:], start=2):
        parts = [s.strip() for s in ln.split(",")]
        try:
            label, start, end = (int(s) for s in parts)
        except ValueError:
            raise EventDecodeError(f"{path}:{i}: expected 3 integers, got {ln!r}") from None
        if not 1 <= label <= NUM_CLASSES or start < 0 or end < start:
            raise EventDecodeError(f"{path}:{i}: invalid segment {ln!r}")
        segments.append(Segment(label, start, end))
    return segments


def write_labels_csv(path: PathLike, segments: Sequence[Segment]) -> None:
    """Write segments in the DvsGesture labels CSV format."""
    rows = [LABELS_HEADER]
    for s in segments:
        if not 1 <= s.label <= NUM_CLASSES or s.start_us < 0 or s.end_us < s.start_us:
            raise ValueError(f"invalid segment {s}")
        rows.append(f"{int(s.label)},{int(s.start_us)},{int(s.end_us)}")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(rows) + "\n")


def read_split_list(path: PathLike) -> list[str]:
    """Read ``trials_to_train.txt`` / ``trials_to_test.txt`` (one filename a line)."""
    with open(path, "r", encoding="utf-8") as f:
        return [ln.strip() for ln in f.read().splitlines() if ln.strip()]


def write_split_list(path: PathLike, names: Sequence[str]) -> None:
    """Write one aedat filename per line."""
    for n in names:
        if not n or "\n" in n or "\r" in n:
            raise ValueError(f"invalid trial name {n!r}")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(f"{n}\n" for n in names))


# --------------------------------------------------------------------------
# Dataset directory
# --------------------------------------------------------------------------

TRAIN_LIST = "trials_to_train.txt"
TEST_LIST = "trials_to_test.txt"
_TRIAL_RE = re.compile(r"^user(\d+)_(.+)\.aedat$")

Split = Literal["train", "test", "all"]


class TrialName(NamedTuple):
    """What a trial's file name says."""

    user: int
    lighting: str


def parse_trial_name(trial: PathLike) -> TrialName:
    """``(user id, lighting)`` from ``.../user01_fluorescent_led.aedat``."""
    m = _TRIAL_RE.match(os.path.basename(os.fspath(trial)))
    if m is None:
        raise ValueError(f"not a DvsGesture trial name: {os.fspath(trial)!r}")
    return TrialName(int(m.group(1)), m.group(2))


def labels_path(trial: PathLike) -> Path:
    """``userXX_<lighting>_labels.csv`` next to ``userXX_<lighting>.aedat``."""
    p = Path(trial)
    return p.with_name(p.name[: -len(".aedat")] + "_labels.csv") if p.name.endswith(
        ".aedat") else p.with_name(p.name + "_labels.csv")


def slice_segment(events: np.ndarray, seg: Segment) -> np.ndarray:
    """Events with ``seg.start_ns <= t < seg.end_ns`` (``events`` sorted by t)."""
    lo, hi = np.searchsorted(events["t"], [seg.start_ns, seg.end_ns], side="left")
    return events[lo:hi]


class Trial(NamedTuple):
    """One recording of the data set."""

    events: np.ndarray            # EVENT_DTYPE, sorted by time
    segments: list[Segment]


class Sample(NamedTuple):
    """One labelled gesture of the data set."""

    trial: str                    # the trial's aedat path
    segment: Segment
    events: np.ndarray            # its events in [start, end)


class Dvs128Dataset:
    """A DvsGesture directory: ``*.aedat``, ``*_labels.csv`` and the split lists."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"DvsGesture directory not found: {self.root}")

    def _path(self, trial: PathLike) -> Path:
        p = Path(trial)
        return p if p.is_absolute() or p.parent != Path(".") else self.root / p

    def trials(self, split: Split = "all") -> list[str]:
        """Aedat paths of a split, in list order ('all' = train then test, or
        every ``*.aedat`` in the directory when no split lists exist). A missing
        list file for 'train'/'test' raises FileNotFoundError."""
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        lists = {"train": [TRAIN_LIST], "test": [TEST_LIST], "all": [TRAIN_LIST, TEST_LIST]}[split]
        present = [name for name in lists if (self.root / name).is_file()]
        if split == "all" and not present:
            return sorted(str(p) for p in self.root.glob("*.aedat"))
        names: list[str] = []
        for name in lists:
            names.extend(read_split_list(self.root / name))
        return [str(self.root / n) for n in dict.fromkeys(names)]

    def segments(self, trial: PathLike) -> list[Segment]:
        """Labelled segments of a trial (path or bare aedat filename)."""
        return read_labels_csv(labels_path(self._path(trial)))

    def load(self, trial: PathLike) -> Trial:
        """Events (sorted by time, stable) and segments of one trial."""
        events, info = read_aedat31(self._path(trial))
        if not info["monotonic"]:
            events = events[np.argsort(events["t"], kind="stable")]
        return Trial(events, self.segments(trial))

    def iter_samples(self, split: Split = "all") -> Iterator[Sample]:
        """Yield the labelled segments of a split, trial by trial."""
        for trial in self.trials(split):
            events, segments = self.load(trial)
            for seg in segments:
                yield Sample(trial, seg, slice_segment(events, seg))


def _trial_filename(name: str) -> str:
    return name if name.endswith(".aedat") else name + ".aedat"


def write_trial(root: PathLike, name: str, events: np.ndarray,
                segments: Sequence[Segment], **aedat_kwargs: Any) -> Path:
    """Write ``<root>/<name>.aedat`` and its ``_labels.csv``; returns the aedat path."""
    path = Path(root) / _trial_filename(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_aedat31(path, events, **aedat_kwargs)
    write_labels_csv(labels_path(path), segments)
    return path


def write_splits(root: PathLike, train_names: Sequence[str], test_names: Sequence[str]) -> None:
    """Write ``trials_to_train.txt`` and ``trials_to_test.txt`` under ``root``."""
    write_split_list(Path(root) / TRAIN_LIST, [_trial_filename(n) for n in train_names])
    write_split_list(Path(root) / TEST_LIST, [_trial_filename(n) for n in test_names])


def gesture_ground_truth(trial: PathLike, segments: Sequence[Segment],
                         references: Callable[[int], list[str]]) -> list[dict[str, Any]]:
    """Ground-truth objects (docs/design.md: clip_id, label, class_name, t_start_ns, t_end_ns,
    attributes, references, caption) of the labelled segments of a trial; ``references(label)``
    gives each segment's reference captions (the first one is its caption)."""
    name = Path(trial).name
    stem = name[:-len(".aedat")] if name.endswith(".aedat") else name
    try:
        user, lighting = parse_trial_name(trial)
    except ValueError:
        user, lighting = None, None
    out = []
    for i, seg in enumerate(segments):
        refs = references(seg.label)
        out.append({"clip_id": f"{stem}_{i:02d}", "label": int(seg.label),
                    "class_name": seg.class_name,
                    "t_start_ns": int(seg.start_ns), "t_end_ns": int(seg.end_ns),
                    "attributes": {"source": "DvsGesture", "subject": user, "lighting": lighting},
                    "references": refs, "caption": refs[0]})
    return out


__all__ = [
    "GESTURE_CLASSES", "NUM_CLASSES",
    "check_label", "class_name", "class_label", "Segment", "read_labels_csv", "write_labels_csv",
    "read_split_list", "write_split_list", "TrialName", "parse_trial_name", "labels_path",
    "slice_segment", "Trial", "Sample", "Dvs128Dataset", "write_trial", "write_splits",
    "gesture_ground_truth",
]
