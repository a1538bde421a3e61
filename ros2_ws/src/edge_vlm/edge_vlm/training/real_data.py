"""Training data from real labelled recordings, cut exactly like the simulated ones
(:mod:`edge_vlm.training.data`: the same absolute frame grid, histograms and per-frame labels).

* the DVS128 Gesture download (folder ``DvsGesture``): :func:`dvs128_framesets` reads the
  official split lists; the validation trials (early stopping) are those of a few USERS held out
  of ``trials_to_train.txt`` (:func:`dvs128_split`, deterministic from the seed), never test
  trials;
* a team's own recordings: :func:`labelled_dir_framesets` reads a folder of AEDAT 3.1 trials
  with their labels CSV (the DvsGesture layout, split lists optional) and ROS 2 bags whose
  ``/edge_vlm/ground_truth`` topic (JSON segments: label, t_start_ns, t_end_ns) labels them.

Real segments have no attributes: a frame's caption is the first of the class-level references
(:func:`edge_vlm.sim.captions.class_references`), unless a bag's segment carries its own caption
and references. Segments whose label is not a gesture (1..11) are left as context (label 0).

Memory: a whole DvsGesture trial (~11 gestures of ~6 s) is ~2,000 frames of 64 KiB. Only the
frames from ``context`` frames before a recording's first segment to the end of its last are
kept, recordings are read one at a time, and ``frames_dir`` keeps the histograms of a large set
in a memory-mapped file instead of RAM (estimate for the official train split at 30 fps: ~1,000
segments of ~6 s, some 200,000 frames, over 10 GB).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from edge_vlm.datasets.dvs128_gesture import NUM_CLASSES, Dvs128Dataset, parse_trial_name
from edge_vlm.events import concat_events
from edge_vlm.evaluation.sources import bag_stream
from edge_vlm.io import bag_reader
from edge_vlm.sim import split_subjects
from edge_vlm.sim.captions import class_references
from edge_vlm.stream.histogram import EVENT_CHANNELS, scale_coords
from edge_vlm.training.config import TrainConfig
from edge_vlm.training.data import FrameSet, histograms_on_grid, inside_segment

#: frames kept before a recording's first segment: the temporal window of the model
DEFAULT_CONTEXT = TrainConfig().window - 1
#: the model grid (DVS128 resolution; other sensors are scaled onto it)
GRID = 128
SPLITS = ("train", "val", "test")


class LabelledSegment(NamedTuple):
    """One labelled span of a real recording and the captions its frames are trained on."""
    label: int                  # DvsGesture label 1..11
    t_start_ns: int
    t_end_ns: int               # exclusive
    references: list[str]       # the first one is the caption


class RealRecording(NamedTuple):
    """A labelled real recording; its events are read only when it is cut into frames."""
    name: str
    segments: list[LabelledSegment]
    events: Callable[[], np.ndarray]   # EVENT_DTYPE sorted by time, on the 128x128 grid


class RealSplit(NamedTuple):
    """The aedat paths of each split of a DvsGesture folder and the held-out validation users."""
    train: list[str]
    val: list[str]
    test: list[str]
    val_users: list[int]


def class_segment(label: int, t_start_ns: int, t_end_ns: int) -> LabelledSegment:
    """A real segment without attributes: class-level references."""
    return LabelledSegment(int(label), int(t_start_ns), int(t_end_ns),
                           class_references(int(label)))


def trial_recording(ds: Dvs128Dataset, trial: str) -> RealRecording:
    """One DvsGesture trial (aedat + labels CSV)."""
    segs = [class_segment(s.label, s.start_ns, s.end_ns) for s in ds.segments(trial)]
    return RealRecording(os.path.basename(trial), segs, lambda: ds.load(trial).events)


def _bag_segment(seg: dict) -> LabelledSegment | None:
    label = int(seg["label"])
    if not 1 <= label <= NUM_CLASSES:
        return None
    refs = [str(r) for r in seg.get("references") or []]
    caption = seg.get("caption") or (refs[0] if refs else "")
    if not caption:
        return class_segment(label, seg["t_start_ns"], seg["t_end_ns"])
    refs = [caption] + [r for r in refs if r != caption]
    return LabelledSegment(label, int(seg["t_start_ns"]), int(seg["t_end_ns"]), refs)


def _bag_events(path: Path, topic: str) -> np.ndarray:
    """All events of an EventPacket topic, sorted, on the model grid."""
    stream = bag_reader.event_stream(path, topic)
    ev = concat_events(list(stream.chunks))
    if len(ev) and np.any(np.diff(ev["t"]) < 0):
        ev = ev[np.argsort(ev["t"], kind="stable")]
    if len(ev) and (stream.width, stream.height) != (GRID, GRID):
        ev = ev.copy()
        x, y = scale_coords(ev["x"], ev["y"], stream.width, stream.height, GRID, GRID)
        ev["x"], ev["y"] = x, y
    return ev


def bag_recording(path: str | os.PathLike) -> RealRecording:
    """A ROS 2 bag labelled by its ground-truth topic (as ``edge-vlm eval`` reads it)."""
    stream = bag_stream(Path(path), {}, want_images=False)
    segs = [s for s in (_bag_segment(g) for g in stream.segments) if s is not None]
    topic = stream.info["events_topic"]
    return RealRecording(Path(path).name, segs, lambda: _bag_events(Path(path), topic))


class _Span(NamedTuple):
    """The frames k0..k1-1 of a recording that are kept."""
    k0: int
    k1: int


def _span(rec: RealRecording, period: int, context: int) -> _Span:
    first = min(s.t_start_ns for s in rec.segments) // period
    last = max(s.t_end_ns for s in rec.segments) // period
    return _Span(max(0, int(first) - context), int(last) + 1)


def _hist_array(n: int, frames_path: str | None) -> np.ndarray:
    shape = (n, EVENT_CHANNELS, GRID, GRID)
    if not frames_path:
        return np.zeros(shape, dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(frames_path)), exist_ok=True)
    return np.lib.format.open_memmap(frames_path, mode="w+", dtype=np.uint8, shape=shape)


def recordings_framesets(recs: list[RealRecording], period_ns: int, *,
                         context: int = DEFAULT_CONTEXT,
                         frames_path: str | None = None) -> FrameSet:
    """Cut labelled recordings into frames (one at a time). Each frame's label, caption and
    references come from the segment it ends in (:func:`~edge_vlm.training.data.inside_segment`;
    0 and no caption outside: temporal context); ``segment`` numbers the segments. Recordings
    without a segment are skipped. ``frames_path``: ``.npy`` file holding the histograms
    (memory-mapped) instead of RAM."""
    recs = [r for r in recs if r.segments]
    if not recs:
        raise ValueError("no labelled segment in the recordings")
    period = int(period_ns)
    spans = [_span(r, period, context) for r in recs]
    n = sum(s.k1 - s.k0 for s in spans)
    hist = _hist_array(n, frames_path)
    ks = np.concatenate([np.arange(s.k0, s.k1, dtype=np.int64) for s in spans])
    rec_index = np.concatenate([np.full(s.k1 - s.k0, i, dtype=np.int64)
                                for i, s in enumerate(spans)])
    t_end = (ks + 1) * period
    labels = np.zeros(n, dtype=np.int64)
    segment = np.full(n, -1, dtype=np.int64)
    caps: list[str] = [""] * n
    refs: list[list[str]] = [[] for _ in range(n)]
    off, seg_id = 0, 0
    for rec, sp in zip(recs, spans):
        m = sp.k1 - sp.k0
        ev = rec.events()
        if len(ev):
            hist[off:off + m] = histograms_on_grid(ev, sp.k0, sp.k1, period, size=GRID)
        for seg in rec.segments:
            inside = off + inside_segment(t_end[off:off + m], seg.t_start_ns, seg.t_end_ns)
            labels[inside], segment[inside] = seg.label, seg_id
            seg_id += 1
            for i in inside:
                caps[i], refs[i] = seg.references[0], seg.references
        off += m
    if isinstance(hist, np.memmap):
        hist.flush()
    return FrameSet(hist, None, labels, caps, refs, [""] * n, rec_index, ks, t_end,
                    None, segment)


# --------------------------------------------------------------------------- DvsGesture folder
def check_dvs128_root(root: str | os.PathLike) -> Path:
    """``root`` if it is a DvsGesture folder with both split lists, else a ValueError that says
    what is missing (FileNotFoundError when it does not exist)."""
    p = Path(root)
    if not p.is_dir():
        raise FileNotFoundError(f"DvsGesture folder not found: {str(root)!r}")
    missing = [name for name in ("trials_to_train.txt", "trials_to_test.txt")
               if not (p / name).is_file()]
    if missing:
        raise ValueError(f"{str(root)!r} is not a DvsGesture folder (no {', '.join(missing)})")
    return p


def dvs128_split(root: str | os.PathLike, val_users: int, seed: int) -> RealSplit:
    """Official train / test trials; ``val_users`` users of the train trials (picked with
    :func:`edge_vlm.sim.split_subjects` and ``seed``) become the validation trials."""
    p = check_dvs128_root(root)
    ds = Dvs128Dataset(p)
    train, test = ds.trials("train"), ds.trials("test")
    if not train or not test:
        raise ValueError(f"{str(root)!r}: empty trial list (train {len(train)}, test {len(test)})")
    users = sorted({parse_trial_name(t).user for t in train})
    if not 0 <= val_users < len(users):
        raise ValueError(f"--val-users {val_users}: the train trials have {len(users)} users "
                         "(at least one must stay for training)")
    _, held = split_subjects(len(users), val_users, seed)
    val_set = {users[i - 1] for i in held}
    val = [t for t in train if parse_trial_name(t).user in val_set]
    return RealSplit([t for t in train if t not in val], val, test, sorted(val_set))


def dvs128_framesets(root: str | os.PathLike, split: str, period_ns: int, *, val_users: int = 0,
                     seed: int = 0, context: int = DEFAULT_CONTEXT,
                     frames_path: str | None = None) -> FrameSet:
    """The frames of one split of a DvsGesture folder: ``train`` (the official train trials
    without the ``val_users`` validation users), ``val`` (those users' trials) or ``test``
    (``trials_to_test.txt``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    trials = getattr(dvs128_split(root, val_users, seed), split)
    if not trials:
        raise ValueError(f"no {split} trials in {str(root)!r}")
    ds = Dvs128Dataset(root)
    return recordings_framesets([trial_recording(ds, t) for t in trials], period_ns,
                                context=context, frames_path=frames_path)


# --------------------------------------------------------------------------- a team's folder
def _is_bag_dir(p: Path) -> bool:
    return (p / "metadata.yaml").is_file()


def labelled_recordings(folder: str | os.PathLike) -> list[RealRecording]:
    """The labelled recordings of a folder: its AEDAT 3.1 trials with labels CSV (the listed
    trials when split lists exist, else every ``*.aedat``), and its ROS 2 bags (the folder
    itself, bag sub-folders, loose ``.db3`` / ``.mcap`` files)."""
    p = Path(folder)
    if not p.is_dir():
        raise FileNotFoundError(f"folder not found: {str(folder)!r}")
    if _is_bag_dir(p):
        return [bag_recording(p)]
    ds = Dvs128Dataset(p)
    recs = [trial_recording(ds, t) for t in ds.trials("all")]
    bags = sorted(q for q in p.iterdir()
                  if (q.is_dir() and _is_bag_dir(q))
                  or (q.is_file() and q.suffix in (".db3", ".mcap")))
    recs += [bag_recording(b) for b in bags]
    if not recs:
        raise ValueError(f"{str(folder)!r} holds no aedat trial and no ROS 2 bag")
    return recs


def labelled_dir_framesets(folder: str | os.PathLike, period_ns: int, *,
                           context: int = DEFAULT_CONTEXT,
                           frames_path: str | None = None) -> FrameSet:
    """Frames of every labelled recording of a team's folder (:func:`labelled_recordings`)."""
    return recordings_framesets(labelled_recordings(folder), period_ns, context=context,
                                frames_path=frames_path)


__all__ = ["DEFAULT_CONTEXT", "LabelledSegment", "RealRecording", "RealSplit", "class_segment",
           "trial_recording", "bag_recording", "recordings_framesets", "check_dvs128_root",
           "dvs128_split", "dvs128_framesets", "labelled_recordings", "labelled_dir_framesets"]
