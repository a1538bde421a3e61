"""Offline evaluation: run the node graph's exact per-frame logic over a bag or a DvsGesture folder.

:func:`evaluate` replays a source packet by packet through the same cores the
ROS nodes run (``edge_vlm.pipeline``), without rclpy:

* events are decoded per EventPacket with one stateful decoder per encoding
  (packets the nodes would reject -- bad size, decode error, coordinates
  outside the sensor -- are dropped and counted), sorted if needed, and fed to
  a :class:`~edge_vlm.pipeline.FrameClock` with the nodes' frame period; an
  empty ``mono`` packet whose ``time_base`` lies past the open frame closes it
  and the end of the stream flushes it, as the nodes' idle flush does;
* every closed frame goes through :class:`~edge_vlm.pipeline.PerceptionCore`
  (sttf_perception's change mask) and then
  ``CaptionerCore.process(frame, rgb, change_indices=mask.active_indices)``
  (vlm_captioner with ``mask_source = topic`` uses the perception node's mask;
  with ``local`` it computes its own: ``change_indices=None``);
* RGB (``/camera/image_raw``, rgb8/bgr8/mono8) is used when present and
  ``use_rgb`` allows it: the latest of the last 30 images whose stamp lies
  within one frame period of the frame end (``|stamp - t_end| < P``), resized
  nearest-neighbour to the model grid. Images are delivered in bag order, so a
  frame sees the images the node would have received when the frame closed;
  with ``use_rgb = always`` the frame waits (in bag time) until a matching
  image arrives or none can arrive any more.

Node parameters are the spec defaults, updated by ``config/graph.yaml`` (when
found) and then by ``overrides`` (same rules as ``edge_vlm_run -p``).

DvsGesture folders (``*.aedat``, ``*_labels.csv``, split lists): the ``test``
split when ``trials_to_test.txt`` exists, else every trial. Each trial is a
separate recording: clock and token memory restart with it, and its events
are fed in 2 ms packets on the absolute time grid (the bag writer's packet
size, empty packets included). The labels CSV has no captions, so the
references are class-level paraphrases ("a person waves the right hand", ...)
built from the simulator's caption grammar: caption scores on DvsGesture
measure the gesture phrase only.

Scoring: a frame is scored when its end ``t_end`` lies in ``(t_start_ns,
t_end_ns]`` of a ground-truth segment. Gesture accuracy is reported per frame
and per segment (majority vote of the segment's frames; ties go to the label
with the larger summed confidence). Caption metrics score ONE caption per
segment: the caption of the segment's last scored frame (the one that has
seen the most of the gesture, which is also what a listener of
``/edge_vlm/caption`` holds when the segment ends) against the segment's
references, over the corpus of segments (BLEU-1..4, METEOR, ROUGE-L,
CIDEr-D; see :mod:`edge_vlm.metrics`).
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES
from edge_vlm.events import EVENT_DTYPE
from edge_vlm.evaluation.metrics import (caption_metrics, confusion_matrix, gesture_accuracy,
    json_safe, percentiles)
from edge_vlm.cores.captioner import CaptionerCore
from edge_vlm.stream.frames import FrameClock, period_ns
from edge_vlm.cores.perception import PerceptionCore
from edge_vlm.paths import repo_root
from edge_vlm.cores.graph import replay_params
from edge_vlm.sim.captions import class_references

__all__ = ["evaluate", "write_report", "node_params", "detect_source", "markdown_report",
           "LATENCY_STAGES", "DVS128_PACKET_NS"]

EVENTS_TOPIC = "/event_camera/events"
IMAGE_TOPIC = "/camera/image_raw"
GT_TOPIC = "/edge_vlm/ground_truth"
IMAGE_TYPES = ("sensor_msgs/msg/Image",)
#: packet length used to feed DvsGesture trials (the bag writer's default)
DVS128_PACKET_NS = 2_000_000
#: images the captioner node keeps (its deque maxlen)
IMAGE_QUEUE = 30
#: per-frame latency stages (ms): ``decode`` (EventPacket decoding attributed to the
#: frame, as the captioner node does), ``perception`` (PerceptionCore.process), the
#: captioner model stages ``mask``/``encoder``/``fusion``/``decoder`` and their sum
#: ``captioner``, and ``total`` = decode + perception + captioner (serial, one process)
LATENCY_STAGES = ("decode", "perception", "mask", "memory", "encoder", "fusion", "decoder", "captioner", "total")
_NODES = ("sttf_perception", "vlm_captioner")
_ROOT = repo_root()


# ----------------------------------------------------------------------------- parameters
def node_params(overrides: dict | None = None, checkpoint: str = "", graph: str | None = None
                ) -> tuple[dict, dict, dict]:
    """Resolved parameters of sttf_perception and vlm_captioner, and the graph's input topics
    (:func:`edge_vlm.cores.graph.replay_params`)."""
    r = replay_params(overrides, checkpoint, graph)
    return r.perception, r.captioner, r.inputs


# ----------------------------------------------------------------------------- sources
@dataclass
class _Packet:
    stamp: int            # bag time (ns)
    encoding: str
    width: int
    height: int
    time_base: int
    payload: Any = None   # raw bytes to decode (bags)
    events: Any = None    # already decoded events (DvsGesture)


@dataclass
class _Image:
    stamp: int            # header stamp (ns)
    height: int
    width: int
    encoding: str
    step: int
    data: Any


@dataclass
class _Stream:
    name: str
    segments: list        # ground-truth dicts, sorted by t_start_ns
    items: Iterator       # _Packet / _Image in arrival order
    info: dict = field(default_factory=dict)


def detect_source(source: str | os.PathLike) -> tuple[str, Path]:
    """``("bag" | "dvs128", path)`` of an evaluation source.

    A rosbag2 folder (metadata.yaml or one .db3/.mcap) or storage file is a bag;
    a folder with ``*.aedat`` or split lists is a DvsGesture folder; a folder
    holding ``bag/`` or ``DvsGesture/`` (``edge-vlm synth`` output) resolves to
    the bag (it carries caption references), else to ``DvsGesture``.
    """
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"evaluation source not found: {str(source)!r}")
    if p.is_file():
        if p.suffix in (".db3", ".mcap") or p.name == "metadata.yaml":
            return "bag", (p.parent if p.name == "metadata.yaml" else p)
        raise ValueError(f"not an evaluation source (bag folder/.db3/.mcap or DvsGesture folder): {str(p)!r}")
    if (p / "metadata.yaml").is_file() or any(f.suffix in (".db3", ".mcap") for f in p.iterdir()):
        return "bag", p
    if any(p.glob("*.aedat")) or (p / "trials_to_test.txt").is_file() or (p / "trials_to_train.txt").is_file():
        return "dvs128", p
    if (p / "bag" / "metadata.yaml").is_file():
        return "bag", p / "bag"
    if (p / "DvsGesture").is_dir():
        return "dvs128", p / "DvsGesture"
    raise ValueError(f"{str(p)!r} is neither a ROS 2 bag nor a DvsGesture folder")


def _bag_stream(path: Path, inputs: dict, want_images: bool) -> _Stream:
    from edge_vlm.io import bag_reader as bagmod

    ts = bagmod.typestore()
    reader = bagmod.open_reader(path)
    try:
        conns = list(reader.connections)
        duration = int(getattr(reader, "duration", 0) or 0)
    finally:
        reader.close()
    ev_topics = sorted({c.topic for c in conns if c.msgtype == bagmod.EVENT_PACKET_TYPE})
    if not ev_topics:
        raise bagmod.BagError(f"no {bagmod.EVENT_PACKET_TYPE} topic in {str(path)!r}")
    want = inputs.get("events", EVENTS_TOPIC)
    ev_topic = want if want in ev_topics else (EVENTS_TOPIC if EVENTS_TOPIC in ev_topics else ev_topics[0])
    img_want = inputs.get("image", IMAGE_TOPIC)
    img_topics = sorted({c.topic for c in conns if c.msgtype in IMAGE_TYPES})
    img_topic = img_want if img_want in img_topics else (IMAGE_TOPIC if IMAGE_TOPIC in img_topics else None)
    gt_topic = inputs.get("ground_truth", GT_TOPIC)
    n_packets = sum(int(getattr(c, "msgcount", 0) or 0) for c in conns if c.topic == ev_topic)

    segments = []
    if any(c.topic == gt_topic for c in conns):
        for _, msgtype, _, raw in bagmod.iter_messages(path, [gt_topic]):
            try:
                seg = json.loads(ts.deserialize_cdr(raw, msgtype).data)
                segments.append({**seg, "label": int(seg["label"]), "t_start_ns": int(seg["t_start_ns"]),
                                 "t_end_ns": int(seg["t_end_ns"])})
            except Exception:    # a malformed ground-truth message is skipped, as the recorder does
                continue
    segments.sort(key=lambda s: (s["t_start_ns"], s["t_end_ns"]))

    def items() -> Iterator:
        reader = bagmod.open_reader(path)
        try:
            wanted = [c for c in reader.connections
                      if c.topic == ev_topic or (want_images and img_topic and c.topic == img_topic)]
            ensure = getattr(bagmod, "_ensure_type", None)
            for c in wanted:
                if ensure is not None:
                    ensure(ts, c)
            for conn, t_ns, raw in reader.messages(connections=wanted):
                try:
                    msg = ts.deserialize_cdr(bytes(raw), conn.msgtype)
                except Exception:   # malformed message: a rejected packet / an ignored image
                    if conn.topic == ev_topic:
                        yield _Packet(int(t_ns), "<undecodable>", 0, 0, 0)
                    continue
                if conn.topic == ev_topic:
                    if msg.is_bigendian:
                        yield _Packet(int(t_ns), "<big-endian>", 0, 0, 0)
                        continue
                    yield _Packet(int(t_ns), str(msg.encoding), int(msg.width), int(msg.height),
                                  int(msg.time_base), payload=msg.events)
                else:
                    st = msg.header.stamp
                    yield _Image(int(st.sec) * 1_000_000_000 + int(st.nanosec), int(msg.height), int(msg.width),
                                 str(msg.encoding), int(msg.step), msg.data)
        finally:
            reader.close()

    info = {"events_topic": ev_topic, "image_topic": img_topic, "ground_truth_topic": gt_topic,
            "packets": n_packets, "duration_ns": duration}
    return _Stream(str(path), segments, items(), info)


def _dvs128_streams(root: Path) -> tuple[list[_Stream], dict]:
    from edge_vlm.datasets.dvs128_gesture import Dvs128Dataset, TEST_LIST

    ds = Dvs128Dataset(root)
    split = "test" if (root / TEST_LIST).is_file() else "all"
    trials = ds.trials(split)
    if not trials:
        raise ValueError(f"no trials in DvsGesture folder {str(root)!r} (split {split!r})")

    def items(trial: str) -> Iterator:
        events, _ = ds.load(trial)
        if len(events) == 0:
            return
        t = events["t"]
        k0, k1 = int(t[0]) // DVS128_PACKET_NS, int(t[-1]) // DVS128_PACKET_NS
        bounds = np.searchsorted(t, np.arange(k0, k1 + 2, dtype=np.int64) * DVS128_PACKET_NS, side="left")
        for i, k in enumerate(range(k0, k1 + 1)):
            start = k * DVS128_PACKET_NS
            yield _Packet(start + DVS128_PACKET_NS, "mono", 128, 128, start,
                          events=events[bounds[i]:bounds[i + 1]])

    streams = []
    for trial in trials:
        name = os.path.basename(trial)
        segs = [{"clip_id": f"{name[:-len('.aedat')] if name.endswith('.aedat') else name}_{i:02d}",
                 "label": int(s.label), "class_name": s.class_name, "t_start_ns": int(s.start_ns),
                 "t_end_ns": int(s.end_ns), "attributes": {}, "references": class_references(s.label)}
                for i, s in enumerate(ds.segments(trial))]
        segs.sort(key=lambda s: (s["t_start_ns"], s["t_end_ns"]))
        streams.append(_Stream(name, segs, items(trial)))
    return streams, {"split": split, "trials": [os.path.basename(t) for t in trials]}


# ----------------------------------------------------------------------------- images
def _image_to_rgb(img: _Image) -> np.ndarray:
    """rgb8/bgr8/mono8 -> (H, W, 3) uint8 (as edge_vlm_ros.common.image_to_numpy). Raises ValueError."""
    enc = img.encoding.lower()
    ch = {"rgb8": 3, "bgr8": 3, "mono8": 1, "8uc1": 1, "8uc3": 3}.get(enc)
    if ch is None:
        raise ValueError(f"unsupported image encoding '{img.encoding}'")
    h, w, step = img.height, img.width, img.step
    if h <= 0 or w <= 0 or step < w * ch:
        raise ValueError(f"invalid image geometry {w}x{h} step {step}")
    buf = np.asarray(img.data, dtype=np.uint8).reshape(-1)
    if buf.size < step * h:
        raise ValueError(f"image data has {buf.size} bytes, need {step * h}")
    arr = buf[: step * h].reshape(h, step)[:, : w * ch]
    if ch == 1:
        return np.repeat(arr.reshape(h, w)[:, :, None], 3, axis=2)
    arr = arr.reshape(h, w, 3)
    return (arr[:, :, ::-1] if enc == "bgr8" else arr).copy()


def _resize_nearest(img: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    return img[(np.arange(height) * h) // height][:, (np.arange(width) * w) // width]


# ----------------------------------------------------------------------------- the replay
class _Replay:
    """The three steps the nodes run per packet/frame, with their per-frame records."""

    def __init__(self, perc: PerceptionCore, capt: CaptionerCore):
        self.perc, self.capt = perc, capt
        self.p = capt.params
        self.period = period_ns(self.p)
        self.records: list[dict] = []
        self.stats = Counter()
        self.stream = ""

    def start(self, name: str) -> None:
        self.stream = name
        self.clock = FrameClock(self.period)
        self.capt.engine.reset()
        self.decoders: dict[str, Any] = {}
        self.images: deque = deque(maxlen=IMAGE_QUEUE)
        self.decode_ms: dict[int, float] = {}
        self.pending: deque = deque()
        self.now = 0

    def finish(self) -> None:
        """End of the stream: the idle flush closes the open frame; waiting frames are processed."""
        self.stats["late_events"] += self.clock.late_events
        self.stats["clock_resets"] += self.clock.resets
        self._closed(self.clock.flush())
        self._drain(force=True)

    # -- inputs
    def packet(self, pk: _Packet) -> None:
        from edge_vlm.io.codecs import make_decoder

        self.now = max(self.now, pk.stamp)
        self.stats["packets"] += 1
        if pk.width <= 0 or pk.height <= 0:
            self.stats["rejected_packets"] += 1
            return
        t0 = time.perf_counter()
        if pk.events is not None:
            ev = pk.events
        else:
            try:
                dec = self.decoders.get(pk.encoding)
                if dec is None:
                    dec = self.decoders[pk.encoding] = make_decoder(pk.encoding)
                ev = dec.decode(pk.payload, pk.width, pk.height, pk.time_base)
            except Exception:   # EventDecodeError / unsupported encoding: the node rejects the packet
                self.stats["rejected_packets"] += 1
                return
        ev = np.asarray(ev)
        if ev.dtype != EVENT_DTYPE:
            ev = ev.astype(EVENT_DTYPE)
        if len(ev) and (int(ev["x"].max()) >= pk.width or int(ev["y"].max()) >= pk.height):
            self.stats["rejected_packets"] += 1
            return
        if len(ev) > 1 and bool((np.diff(ev["t"]) < 0).any()):
            ev = ev[np.argsort(ev["t"], kind="stable")]
        ms = (time.perf_counter() - t0) * 1e3
        self.stats["events"] += len(ev)
        if len(ev):   # FrameInputs.add: the packet's decode time shared by the frames it feeds
            k0, k1 = int(ev["t"][0]) // self.period, int(ev["t"][-1]) // self.period
            k0 = max(k0, k1 - 64)
            for k in range(k0, k1 + 1):
                self.decode_ms[k] = self.decode_ms.get(k, 0.0) + ms / (k1 - k0 + 1)
        try:
            frames = self.clock.push(ev, pk.width, pk.height)
            if (not len(ev) and pk.encoding == "mono" and self.clock.current is not None and self.clock.chunks
                    and pk.time_base >= (self.clock.current + 1) * self.period):
                frames = self.clock.flush()
        except Exception:   # the node logs and keeps running
            self.stats["clock_errors"] += 1
            return
        self._closed(frames)

    def image(self, img: _Image) -> None:
        self.now = max(self.now, img.stamp)
        if self.p["use_rgb"] == "never":
            return
        self.images.append(img)
        self._drain()

    # -- frames
    def _closed(self, frames) -> None:
        for f in frames:
            self.pending.append(f)
        self._drain()

    def _pick_image(self, t_end: int):
        for img in reversed(self.images):
            if abs(img.stamp - t_end) < self.period:
                return img
        return None

    def _drain(self, force: bool = False) -> None:
        while self.pending:
            f = self.pending[0]
            if (not force and self.p["use_rgb"] == "always" and self._pick_image(f.t_end) is None
                    and self.now < f.t_end + self.period):
                return   # an image within one period of the frame end can still arrive
            self.pending.popleft()
            self._process(f)

    def _process(self, f) -> None:
        p = self.p
        decode_ms = self.decode_ms.pop(f.index, 0.0)
        for old in [k for k in self.decode_ms if k < f.index - 64]:
            self.decode_ms.pop(old, None)
        t0 = time.perf_counter()
        mask = self.perc.process(f)
        perception_ms = (time.perf_counter() - t0) * 1e3
        rgb = None
        if p["use_rgb"] != "never":
            img = self._pick_image(f.t_end)
            if img is not None:
                try:
                    rgb = _resize_nearest(_image_to_rgb(img), int(p["model_width"]), int(p["model_height"]))
                except ValueError:
                    self.stats["images_rejected"] += 1
            if rgb is None and p["use_rgb"] == "always":
                self.stats["rgb_missing"] += 1
        change = mask.active_indices if p["mask_source"] == "topic" else None
        res = self.capt.process(f, rgb, change)
        self.stats["rgb_frames"] += int(rgb is not None)
        lat = {k: float(v) for k, v in res.latency_ms.items()}
        captioner_ms = float(lat.pop("total", sum(lat.values())))
        latency = {"decode": decode_ms, "perception": perception_ms, **lat, "captioner": captioner_ms,
                   "total": decode_ms + perception_ms + captioner_ms}
        self.records.append({
            "stream": self.stream, "index": int(f.index), "t_start": int(f.t_start), "t_end": int(f.t_end),
            "events": int(len(f.events)), "text": res.text, "label": int(res.label),
            "gesture_name": res.gesture_name, "confidence": float(res.confidence),
            "active_tokens": int(res.active_tokens), "total_tokens": int(res.total_tokens),
            "change_tokens": int(res.change_tokens), "mask_tokens": int(len(mask.active_indices)),
            "active_fraction": res.active_tokens / max(1, res.total_tokens), "refreshed": bool(res.refreshed),
            "flops_executed": float(res.flops_executed), "flops_dense": float(res.flops_dense),
            "rgb": rgb is not None, "latency_ms": latency})


# ----------------------------------------------------------------------------- scoring
def _assign(records: list[dict], streams: list[_Stream]) -> list[dict]:
    """Attach ``segment`` (global index or None) and ``gt_label`` to each record; return the segments."""
    segments, lookup = [], {}
    for s in streams:
        idx0 = len(segments)
        for i, seg in enumerate(s.segments):
            segments.append({**seg, "stream": s.name, "id": seg.get("clip_id") or f"{s.name}#{i}"})
        starts = np.asarray([seg["t_start_ns"] for seg in s.segments], dtype=np.int64)
        lookup[s.name] = (idx0, starts, s.segments)
    reach = {name: np.maximum.accumulate(np.asarray([seg["t_end_ns"] for seg in segs] or [0], dtype=np.int64))
             for name, (_, _, segs) in lookup.items()}
    for r in records:
        r["segment"], r["gt_label"] = None, None
        if r["stream"] not in lookup:
            continue
        idx0, starts, segs = lookup[r["stream"]]
        t = r["t_end"]
        j = int(np.searchsorted(starts, t, side="left")) - 1   # last segment with t_start < t_end
        while j >= 0 and reach[r["stream"]][j] >= t:          # some segment <= j still reaches t
            if t <= segs[j]["t_end_ns"]:
                r["segment"], r["gt_label"] = idx0 + j, int(segs[j]["label"])
                break
            j -= 1
    return segments


def _vote(frames: list[dict]) -> int:
    votes = Counter(r["label"] for r in frames)
    conf = Counter()
    for r in frames:
        conf[r["label"]] += r["confidence"]
    best = max(votes.values())
    return max((lab for lab, v in votes.items() if v == best), key=lambda lab: (conf[lab], -lab))


def _summary(records: list[dict], segments: list[dict], meteor: bool) -> dict:
    scored = [r for r in records if r["segment"] is not None]
    by_seg: dict[int, list[dict]] = {}
    for r in scored:
        by_seg.setdefault(r["segment"], []).append(r)
    per_segment = []
    for i, seg in enumerate(segments):
        fr = by_seg.get(i)
        if not fr:
            continue
        last = max(fr, key=lambda r: r["t_end"])
        motion = (seg.get("attributes") or {}).get("motion")
        per_segment.append({
            "id": seg["id"], "stream": seg["stream"], "label": int(seg["label"]),
            "class_name": seg.get("class_name") or GESTURE_CLASSES[int(seg["label"]) - 1],
            "t_start_ns": seg["t_start_ns"], "t_end_ns": seg["t_end_ns"], "frames": len(fr),
            "predicted": _vote(fr), "frame_accuracy": float(np.mean([r["label"] == r["gt_label"] for r in fr])),
            "caption": last["text"], "references": list(seg.get("references") or []),
            "motion": motion, "active_fraction_mean": float(np.mean([r["active_fraction"] for r in fr]))})
    out: dict = {}
    out["accuracy"] = {
        "frame": gesture_accuracy([r["gt_label"] for r in scored], [r["label"] for r in scored]),
        "segment": gesture_accuracy([s["label"] for s in per_segment], [s["predicted"] for s in per_segment])}
    out["confusion"] = confusion_matrix([r["gt_label"] for r in scored], [r["label"] for r in scored])
    out["confusion_segment"] = confusion_matrix([s["label"] for s in per_segment],
                                                [s["predicted"] for s in per_segment])
    with_refs = [s for s in per_segment if s["references"]]
    caps = caption_metrics({s["id"]: s["caption"] for s in with_refs},
                           {s["id"]: s["references"] for s in with_refs}, meteor=meteor, per_item=True)
    per_item = caps.pop("per_item", {})
    for s in per_segment:
        s["caption_scores"] = per_item.get(str(s["id"]))
    caps["scored_on"] = "caption of each segment's last scored frame vs the segment's references"
    out["captions"] = caps

    af = [r["active_fraction"] for r in records]
    pa = percentiles(af, (50, 95))
    out["active_fraction"] = {"mean": pa["mean"], "p50": pa["p50"], "p95": pa["p95"],
                              "change_mean": float(np.mean([r["change_tokens"] / max(1, r["total_tokens"])
                                                            for r in records])) if records else None}
    ex = float(np.mean([r["flops_executed"] for r in records])) if records else None
    de = float(np.mean([r["flops_dense"] for r in records])) if records else None
    out["flops"] = {"executed_mean": ex, "dense_mean": de,
                    "ratio": (ex / de) if ex is not None and de else None,
                    "saved_fraction": (1.0 - ex / de) if ex is not None and de else None}
    out["latency_ms"] = {st: percentiles([r["latency_ms"].get(st, 0.0) for r in records])
                         for st in LATENCY_STAGES}

    motions = {s["motion"] for s in per_segment if s["motion"] is not None}
    for level in ("low", "high"):
        key = f"{level}_motion"
        if not motions:
            out[key] = None
            continue
        segs = [s for s in per_segment if s["motion"] == level]
        ids = {i for i, seg in enumerate(segments) if (seg.get("attributes") or {}).get("motion") == level}
        fr = [r for r in scored if r["segment"] in ids]
        out[key] = {"segments": len(segs), "frames": len(fr),
                    "frame_accuracy": gesture_accuracy([r["gt_label"] for r in fr],
                                                       [r["label"] for r in fr])["accuracy"],
                    "segment_accuracy": gesture_accuracy([s["label"] for s in segs],
                                                         [s["predicted"] for s in segs])["accuracy"],
                    "active_fraction_mean": float(np.mean([r["active_fraction"] for r in fr])) if fr else None}
    out["per_segment"] = per_segment
    return out


# ----------------------------------------------------------------------------- API
def evaluate(source, *, checkpoint: str = "", overrides: dict | None = None, max_frames: int | None = None,
             progress: bool = True, out_dir: str | os.PathLike | None = None, graph: str | None = None,
             meteor: bool = True) -> dict:
    """Replay ``source`` (bag folder/file or DvsGesture folder) through the nodes' logic and score it.

    ``checkpoint``: captioner checkpoint ('' = parameter / shipped default);
    ``overrides``: node parameters (see :func:`node_params`); ``max_frames``:
    stop after this many processed frames; ``progress``: tqdm bar on stderr;
    ``out_dir``: also write the report there (:func:`write_report`);
    ``graph``: graph file for the node parameters (None = config/graph.yaml if
    found, '' = spec defaults); ``meteor=False`` skips METEOR (its Java
    start-up takes ~10 s once per process).

    Returns a JSON-safe dict: ``source`` (kind, path, topics / split, trials),
    ``checkpoint``, ``model_id``, ``params`` (per node), ``frame_period_ns``,
    ``frames``, ``frames_scored``, ``segments``, ``segments_scored``,
    ``accuracy`` ({frame, segment}: {accuracy, correct, total}), ``confusion``
    (per frame) and ``confusion_segment`` (:func:`~edge_vlm.metrics.confusion_matrix`),
    ``captions`` (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, n, tokenizer, scored_on),
    ``active_fraction`` (mean, p50, p95, change_mean), ``flops`` (executed_mean,
    dense_mean, ratio, saved_fraction), ``latency_ms`` ({stage: p50/p95/p99/
    mean/min/max/n} for :data:`LATENCY_STAGES`), ``fps`` (wall, pipeline),
    ``wall_s``, ``ms_per_frame``, ``low_motion`` / ``high_motion`` (segments,
    frames, frame_accuracy, segment_accuracy, active_fraction_mean; None
    without ``attributes['motion']``), ``stream`` (packet/event/RGB counters),
    ``per_segment``, ``per_frame`` and, with ``out_dir``, ``outputs``.
    """
    perc_p, capt_p, inputs = node_params(overrides, checkpoint, graph)
    kind, path = detect_source(source)
    if kind == "bag":
        streams = [_bag_stream(path, inputs, capt_p["use_rgb"] != "never")]
        src_info = {"kind": "bag", "path": str(path), **streams[0].info}
    else:
        streams, extra = _dvs128_streams(path)
        src_info = {"kind": "dvs128", "path": str(path), **extra}

    from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT

    capt = CaptionerCore(capt_p)
    perc = PerceptionCore(perc_p)
    replay = _Replay(perc, capt)
    total = None
    if kind == "bag" and streams[0].info.get("duration_ns"):
        total = int(streams[0].info["duration_ns"] // replay.period) + 1
    if max_frames is not None:
        total = min(total, int(max_frames)) if total else int(max_frames)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="frame", desc="evaluate", dynamic_ncols=True, leave=False)

    t_wall = time.perf_counter()
    done = False
    try:
        for s in streams:
            replay.start(s.name)
            try:
                for item in s.items:
                    if isinstance(item, _Packet):
                        replay.packet(item)
                    elif isinstance(item, _Image):
                        replay.image(item)
                    if bar is not None:
                        bar.update(len(replay.records) - bar.n)
                    if max_frames is not None and len(replay.records) >= max_frames:
                        done = True
                        break
                if not done:
                    replay.finish()
                else:
                    replay.stats["late_events"] += replay.clock.late_events
                    replay.stats["clock_resets"] += replay.clock.resets
            finally:
                close = getattr(s.items, "close", None)
                if close is not None:
                    close()
            if done:
                break
    finally:
        if bar is not None:
            bar.update(len(replay.records) - bar.n)
            bar.close()
    wall = time.perf_counter() - t_wall
    records = replay.records
    if max_frames is not None:
        del records[int(max_frames):]

    segments = _assign(records, streams)
    summary = _summary(records, segments, meteor)
    n = len(records)
    mean_total = summary["latency_ms"]["total"]["mean"]
    result = {
        "source": src_info,
        "checkpoint": os.path.abspath(capt_p["checkpoint"]) if capt_p["checkpoint"] else DEFAULT_CHECKPOINT,
        "model_id": capt.model_id,
        "params": {"sttf_perception": perc_p, "vlm_captioner": capt_p},
        "frame_period_ns": replay.period,
        "frames": n,
        "frames_scored": sum(1 for r in records if r["segment"] is not None),
        "segments": len(segments),
        "segments_scored": len(summary["per_segment"]),
        **{k: summary[k] for k in ("accuracy", "confusion", "confusion_segment", "captions", "active_fraction",
                                   "flops", "latency_ms", "low_motion", "high_motion")},
        "fps": {"wall": (n / wall) if wall > 0 else None,
                "pipeline": (1e3 / mean_total) if mean_total else None},
        "wall_s": wall,
        "ms_per_frame": (wall * 1e3 / n) if n else None,
        "stream": {"packets": replay.stats["packets"], "events": replay.stats["events"],
                   "rejected_packets": replay.stats["rejected_packets"],
                   "late_events": replay.stats["late_events"], "clock_resets": replay.stats["clock_resets"],
                   "rgb_frames": replay.stats["rgb_frames"], "rgb_missing": replay.stats["rgb_missing"],
                   "images_rejected": replay.stats["images_rejected"]},
        "per_segment": summary["per_segment"],
        "per_frame": records,
    }
    result = json_safe(result)
    if out_dir is not None:
        result["outputs"] = write_report(result, out_dir)
    return result


# ----------------------------------------------------------------------------- report
def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_report(result: dict) -> str:
    """The evaluation as Markdown tables."""
    acc, caps, af, fl = result["accuracy"], result["captions"], result["active_fraction"], result["flops"]
    rows = [
        ("source", f"{result['source']['kind']}: `{result['source']['path']}`"),
        ("checkpoint", f"`{result['checkpoint']}` ({result['model_id']})"),
        ("frames (scored)", f"{result['frames']} ({result['frames_scored']})"),
        ("segments (scored)", f"{result['segments']} ({result['segments_scored']})"),
        ("gesture accuracy, per frame", f"{_fmt(acc['frame']['accuracy'])} ({acc['frame']['correct']}/"
                                        f"{acc['frame']['total']})"),
        ("gesture accuracy, per segment (majority vote)", f"{_fmt(acc['segment']['accuracy'])} "
                                                          f"({acc['segment']['correct']}/{acc['segment']['total']})"),
    ]
    rows += [(f"{m} (last frame of each segment)", _fmt(caps.get(m))) for m in
             ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")]
    rows += [
        ("active-token fraction mean / p50 / p95", " / ".join(_fmt(af[k], 3) for k in ("mean", "p50", "p95"))),
        ("FLOPs per frame, executed / dense", f"{_fmt((fl['executed_mean'] or 0) / 1e6, 2)} M / "
                                              f"{_fmt((fl['dense_mean'] or 0) / 1e6, 2)} M"),
        ("FLOPs executed / dense", _fmt(fl["ratio"], 3)),
        ("frames per second (wall, whole replay)", _fmt(result["fps"]["wall"], 1)),
        ("frames per second (1 / mean total latency)", _fmt(result["fps"]["pipeline"], 1)),
    ]
    lines = ["# edge_vlm evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Latency per stage (ms)", "", "| stage | p50 | p95 | p99 | mean |", "|---|---|---|---|---|"]
    for st, d in result["latency_ms"].items():
        lines.append(f"| {st} | {_fmt(d['p50'], 3)} | {_fmt(d['p95'], 3)} | {_fmt(d['p99'], 3)} | "
                     f"{_fmt(d['mean'], 3)} |")
    if result.get("low_motion") or result.get("high_motion"):
        lines += ["", "## Motion splits", "",
                  "| split | segments | frames | frame acc. | segment acc. | active fraction |",
                  "|---|---|---|---|---|---|"]
        for key in ("low_motion", "high_motion"):
            d = result.get(key) or {}
            lines.append(f"| {key} | {d.get('segments', 0)} | {d.get('frames', 0)} | "
                         f"{_fmt(d.get('frame_accuracy'))} | {_fmt(d.get('segment_accuracy'))} | "
                         f"{_fmt(d.get('active_fraction_mean'), 3)} |")
    lines += ["", "Captions are scored once per segment: the caption of its last scored frame against "
              "the segment's references (PTB-tokenized; CIDEr-D with idf over the evaluated segments).", ""]
    return "\n".join(lines)


def _plot_confusion(conf: dict, path: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(conf["normalized"], dtype=float)
    k = m.shape[0]
    fig = Figure(figsize=(8.5, 7.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    names = conf["class_names"]
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), [f"{n} ({s})" for n, s in zip(names, conf["support"])], fontsize=7)
    for i in range(k):
        for j in range(k):
            if m[i, j] >= 0.005:
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if m[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (support)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_active(records: list[dict], segments: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    if records:
        single = len({r["stream"] for r in records}) == 1
        t0 = records[0]["t_end"]
        x = (np.asarray([(r["t_end"] - t0) / 1e9 for r in records]) if single
             else np.arange(len(records), dtype=float))
        ax.plot(x, [r["active_fraction"] for r in records], lw=0.8, label="active (re-encoded) tokens")
        ax.plot(x, [r["change_tokens"] / max(1, r["total_tokens"]) for r in records], lw=0.8, alpha=0.8,
                label="change mask")
        seg_of = [r.get("segment") for r in records]
        start = None
        for i, s in enumerate(seg_of + [None]):
            if start is not None and (s is None or s != seg_of[start]):
                ax.axvspan(x[start], x[i - 1], color="0.85", lw=0, zorder=0)
                start = None
            if s is not None and start is None:
                start = i
        ax.set_xlabel("sensor time since the first frame (s)" if single else "processed frame (all trials)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("fraction of tokens")
    ax.set_title("Active-token fraction over time (grey: ground-truth gesture segments)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(result: dict, out_dir: str | os.PathLike) -> dict:
    """Write ``eval.json`` (everything but the per-frame records), ``frames.jsonl`` (one
    record per frame), ``eval.md`` (tables), ``confusion.png`` (per-frame normalized confusion
    matrix) and ``active_fraction.png`` under ``out_dir``; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: str(out / n) for k, n in (("json", "eval.json"), ("frames", "frames.jsonl"),
                                          ("markdown", "eval.md"), ("confusion_png", "confusion.png"),
                                          ("active_fraction_png", "active_fraction.png"))}
    summary = {k: v for k, v in result.items() if k not in ("per_frame", "outputs")}
    summary["outputs"] = paths
    with open(paths["json"], "w") as f:
        json.dump(json_safe(summary), f, indent=1)
    with open(paths["frames"], "w") as f:
        for r in result.get("per_frame", []):
            f.write(json.dumps(json_safe(r)) + "\n")
    with open(paths["markdown"], "w") as f:
        f.write(markdown_report(result))
    _plot_confusion(result["confusion"], paths["confusion_png"],
                    "Gesture confusion (per frame, row-normalized)")
    _plot_active(result.get("per_frame", []), result.get("per_segment", []), paths["active_fraction_png"])
    return paths
