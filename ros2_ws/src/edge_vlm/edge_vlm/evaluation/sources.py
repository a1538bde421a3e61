"""What an offline evaluation replays: a ROS 2 bag or a DvsGesture folder, as the stream of
EventPackets and images a node would receive, in arrival order, with the ground truth.

Bags: the EventPacket topic of the graph's ``inputs.events`` (else ``/event_camera/events``,
else the first one), images of ``inputs.image`` when wanted, ground-truth segments from
``/edge_vlm/ground_truth`` (JSON per segment; a malformed one is skipped, as the recorder
does). DvsGesture folders (``*.aedat``, ``*_labels.csv``, split lists): the ``test`` split when
``trials_to_test.txt`` exists, else every trial; each trial is its own stream, fed as ``mono``
EventPackets of :data:`DVS128_PACKET_NS` on the absolute time grid (the bag writer's packets,
empty ones included). The labels CSV has no captions: the references are the class-level
paraphrases of :func:`edge_vlm.sim.captions.class_references`, so caption scores on DvsGesture
measure the gesture phrase only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from edge_vlm.cores.images import RawImage, raw_image_of
from edge_vlm.datasets.dvs128_gesture import TEST_LIST, Dvs128Dataset, gesture_ground_truth
from edge_vlm.io import bag_reader
from edge_vlm.io.codecs.mono import encode_mono
from edge_vlm.io.packets import packet_grid
from edge_vlm.sim.captions import class_references
from edge_vlm.topics import TOPICS

EVENTS_TOPIC = "/" + TOPICS["events"].name
IMAGE_TOPIC = "/" + TOPICS["image"].name
GT_TOPIC = "/" + TOPICS["ground_truth"].name
IMAGE_TYPES = (TOPICS["image"].msgtype, TOPICS["image_compressed"].msgtype)
#: packet length used to feed DvsGesture trials (the bag writer's default)
DVS128_PACKET_NS = 2_000_000


@dataclass
class SourcePacket:
    """An EventPacket as a node receives it."""

    stamp: int            # arrival (bag time, ns)
    encoding: str
    width: int
    height: int
    time_base: int
    seq: int
    payload: bytes
    bigendian: bool = False


@dataclass
class Stream:
    """One recording: its ground truth and its packets and images in arrival order."""

    name: str
    segments: list[dict]                          # ground-truth objects, sorted by t_start_ns
    items: Iterator[Union[SourcePacket, RawImage]]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Source:
    kind: str                                     # "bag" | "dvs128"
    path: Path


def detect_source(source: str | os.PathLike) -> Source:
    """The kind of an evaluation source.

    A rosbag2 folder (metadata.yaml or one .db3/.mcap) or storage file is a bag; a folder with
    ``*.aedat`` or split lists is a DvsGesture folder; a folder holding ``bag/`` or
    ``DvsGesture/`` (``edge-vlm synth`` output) resolves to the bag (it carries caption
    references), else to ``DvsGesture``.
    """
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"evaluation source not found: {str(source)!r}")
    if p.is_file():
        if p.suffix in (".db3", ".mcap") or p.name == "metadata.yaml":
            return Source("bag", p.parent if p.name == "metadata.yaml" else p)
        raise ValueError("not an evaluation source (bag folder/.db3/.mcap or DvsGesture folder): "
                         f"{str(p)!r}")
    if (p / "metadata.yaml").is_file() or any(f.suffix in (".db3", ".mcap") for f in p.iterdir()):
        return Source("bag", p)
    if any(p.glob("*.aedat")) or (p / "trials_to_test.txt").is_file() \
            or (p / "trials_to_train.txt").is_file():
        return Source("dvs128", p)
    if (p / "bag" / "metadata.yaml").is_file():
        return Source("bag", p / "bag")
    if (p / "DvsGesture").is_dir():
        return Source("dvs128", p / "DvsGesture")
    raise ValueError(f"{str(p)!r} is neither a ROS 2 bag nor a DvsGesture folder")


def _pick(want: str, default: str, present: list[str]) -> str | None:
    if want in present:
        return want
    return default if default in present else None


def _bag_segments(path: Path, ts, gt_topic: str) -> list[dict]:
    segments = []
    for _, msgtype, _, raw in bag_reader.iter_messages(path, [gt_topic]):
        try:
            seg = json.loads(ts.deserialize_cdr(raw, msgtype).data)
            segments.append({**seg, "label": int(seg["label"]),
                             "t_start_ns": int(seg["t_start_ns"]),
                             "t_end_ns": int(seg["t_end_ns"])})
        except Exception:    # a malformed ground-truth message is skipped, as the recorder does
            continue
    return sorted(segments, key=lambda s: (s["t_start_ns"], s["t_end_ns"]))


def _bag_item(ts, conn, t_ns: int, raw, ev_topic: str) -> SourcePacket | RawImage | None:
    """One bag message as a node receives it (an undecodable EventPacket is still a packet: the
    intake rejects it; an undecodable image is dropped)."""
    try:
        msg = ts.deserialize_cdr(bytes(raw), conn.msgtype)
    except Exception:
        return SourcePacket(int(t_ns), "<undecodable>", 0, 0, 0, -1,
                            b"") if conn.topic == ev_topic else None
    if conn.topic == ev_topic:
        return SourcePacket(int(t_ns), str(msg.encoding), int(msg.width), int(msg.height),
                            int(msg.time_base), int(msg.seq), np.asarray(msg.events).tobytes(),
                            bool(msg.is_bigendian))
    return raw_image_of(msg)


def _bag_items(path: Path, ts, topics: list[str],
               ev_topic: str) -> Iterator[SourcePacket | RawImage]:
    reader = bag_reader.open_reader(path)
    try:
        wanted = [c for c in reader.connections if c.topic in topics]
        for c in wanted:
            bag_reader.ensure_type(ts, c)
        for conn, t_ns, raw in reader.messages(connections=wanted):
            item = _bag_item(ts, conn, t_ns, raw, ev_topic)
            if item is not None:
                yield item
    finally:
        reader.close()


def bag_stream(path: Path, inputs: dict, want_images: bool) -> Stream:
    """The bag at ``path`` as one stream (``inputs``: the graph's input topics)."""
    ts = bag_reader.typestore()
    reader = bag_reader.open_reader(path)
    try:
        conns = list(reader.connections)
        duration = int(getattr(reader, "duration", 0) or 0)
    finally:
        reader.close()
    ev_topics = sorted({c.topic for c in conns if c.msgtype == bag_reader.EVENT_PACKET_TYPE})
    if not ev_topics:
        raise bag_reader.BagError(f"no {bag_reader.EVENT_PACKET_TYPE} topic in {str(path)!r}")
    ev_topic = _pick(inputs.get("events", EVENTS_TOPIC), EVENTS_TOPIC, ev_topics) or ev_topics[0]
    img_topics = sorted({c.topic for c in conns if c.msgtype in IMAGE_TYPES})
    want_img = inputs.get("image") or IMAGE_TOPIC   # else its compressed stream (image_transport)
    img_topic = (_pick(want_img, IMAGE_TOPIC, img_topics)
                 or _pick(want_img + "/compressed", IMAGE_TOPIC + "/compressed", img_topics))
    gt_topic = inputs.get("ground_truth", GT_TOPIC)
    segments = _bag_segments(path, ts, gt_topic) if any(c.topic == gt_topic for c in conns) else []
    topics = [ev_topic] + ([img_topic] if want_images and img_topic else [])
    info = {"events_topic": ev_topic, "image_topic": img_topic, "ground_truth_topic": gt_topic,
            "packets": sum(int(getattr(c, "msgcount",
                                       0) or 0) for c in conns if c.topic == ev_topic),
            "duration_ns": duration}
    return Stream(str(path), segments, _bag_items(path, ts, topics, ev_topic), info)


def _trial_packets(ds: Dvs128Dataset, trial: str) -> Iterator[SourcePacket]:
    """A trial's events as the mono EventPackets the bag writer would write."""
    events, _ = ds.load(trial)
    if len(events) == 0:
        return
    P = DVS128_PACKET_NS
    starts, bounds = packet_grid(events["t"], P)
    for seq, start in enumerate(starts.tolist()):
        chunk = events[bounds[seq]:bounds[seq + 1]]
        yield SourcePacket(start + P, "mono", 128, 128, start, seq,
                           encode_mono(chunk, start) if len(chunk) else b"")


def dvs128_streams(root: Path) -> tuple[list[Stream], dict]:
    """One stream per trial of the DvsGesture folder ``root``, and the split used."""
    ds = Dvs128Dataset(root)
    split = "test" if (root / TEST_LIST).is_file() else "all"
    trials = ds.trials(split)
    if not trials:
        raise ValueError(f"no trials in DvsGesture folder {str(root)!r} (split {split!r})")
    streams = []
    for trial in trials:
        segs = gesture_ground_truth(trial, ds.segments(trial), class_references)
        segs.sort(key=lambda s: (s["t_start_ns"], s["t_end_ns"]))
        streams.append(Stream(os.path.basename(trial), segs, _trial_packets(ds, trial)))
    return streams, {"split": split, "trials": [os.path.basename(t) for t in trials]}
