"""The node graph's per-frame logic, replayed offline: the same objects the ROS nodes run.

Per EventPacket: :class:`~edge_vlm.stream.intake.PacketIntake` (sequence gaps, checked decode +
bin, the nodes' rejections) and :class:`~edge_vlm.stream.intake.FrameInputs` (which packets fed
which frame, their decode time) and :class:`~edge_vlm.stream.clock.HeaderClock` (the frames'
stamps in the packets' header clock, for which a packet's bag time stands here: images are
matched to frames in that clock, as in the node). Per closed frame: sttf_perception's
:class:`~edge_vlm.cores.perception.PerceptionCore` (its TokenMask reaches the captioner at
once), then vlm_captioner's :class:`~edge_vlm.cores.schedule.CaptionScheduler` and
:meth:`~edge_vlm.cores.captioner.CaptionerCore.caption`. The scheduler's clock is the
recording's (bag time): a frame waiting for an image (``use_rgb: always``) waits until a matching
image arrives or its ``mask_timeout_ms`` passed in bag time; the end of a stream flushes the open
frame (as the nodes' idle flush does) and takes every waiting frame.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from edge_vlm.cores.captioner import CaptionerCore, CaptionOutput
from edge_vlm.cores.images import RawImage
from edge_vlm.cores.perception import MaskResult, PerceptionCore
from edge_vlm.cores.schedule import CaptionScheduler
from edge_vlm.evaluation.sources import SourcePacket
from edge_vlm.stream.binner import FrameBinner
from edge_vlm.stream.clock import HeaderClock
from edge_vlm.stream.frames import Frame, period_ns
from edge_vlm.stream.intake import FrameInputs, IntakeResult, PacketIntake

#: per-frame latency stages (ms): ``decode`` (decode + bin of the packets that fed the frame),
#: ``perception`` (PerceptionCore.process), the captioner model stages ``mask``/``memory``/
#: ``encoder``/``fusion``/``decoder`` (+ ``router`` of a joint model) and their sum
#: ``captioner``, and ``total`` = decode + perception + captioner (serial, one process)
LATENCY_STAGES = ("decode", "perception", "mask", "memory", "encoder", "fusion", "decoder",
                  "captioner",
                  "total")


@dataclass
class FrameRecord:
    """One captioned frame of the replay."""

    stream: str
    index: int
    t_start: int
    t_end: int
    events: int
    text: str
    label: int
    gesture_name: str
    confidence: float
    active_tokens: int
    total_tokens: int
    change_tokens: int
    mask_tokens: int
    active_fraction: float
    refreshed: bool
    flops_executed: float
    flops_dense: float
    rgb: bool
    latency_ms: dict[str, float]
    branch: str | None = None         # ANC branch (joint model) or anc_router's
    scene: dict | None = None         # the engine's SceneReport (kind, gesture, ...), if any
    segment: int | None = None        # index of its ground-truth segment (set by scoring)
    gt_label: int | None = None       # its label (0: a scene without gesture)
    gt_scene: str | None = None       # its scene kind ("gesture", "nothing", "walk", ...)


@dataclass
class ReplayStats:
    packets: int = 0
    events: int = 0
    rejected_packets: int = 0
    seq_gaps: int = 0
    missing_packets: int = 0
    late_events: int = 0
    clock_resets: int = 0
    rgb_frames: int = 0
    rgb_missing: int = 0
    images_rejected: int = 0


@dataclass
class _Open:
    """Per-stream state: the node objects that restart with each recording."""

    intake: PacketIntake
    inputs: FrameInputs
    scheduler: CaptionScheduler
    clock: HeaderClock
    masks: dict[int, MaskResult] = field(default_factory=dict)
    perception_ms: dict[int, float] = field(default_factory=dict)


def _scene_dict(scene) -> dict | None:
    """The engine's SceneReport as a JSON-ready dict (None when the engine reports none)."""
    if scene is None:
        return None
    return scene.to_dict() if hasattr(scene, "to_dict") else dict(vars(scene))


class Replay:
    """sttf_perception + vlm_captioner over streams of packets and images, frame records out."""

    def __init__(self, perception: PerceptionCore, captioner: CaptionerCore):
        self.perception, self.captioner = perception, captioner
        self.params = captioner.params
        self.period = period_ns(self.params)
        self.records: list[FrameRecord] = []
        self.stats = ReplayStats()
        self.stream = ""
        self.now = 0.0
        self._s: _Open | None = None

    def start(self, name: str) -> None:
        """A new recording: new intake, scheduler and token memory (the nodes restarted)."""
        if self._s is not None:
            self.stop()
        p = self.params
        binner = FrameBinner(self.period, int(p["model_width"]), int(p["model_height"]),
                             track_packets=True,
                             flicker_min_flips=int(p.get("flicker_min_flips", 0)))
        self._s = _Open(PacketIntake(binner), FrameInputs(),
                        CaptionScheduler(p, self.captioner.num_tokens, self.period),
                        HeaderClock(self.period))
        self.captioner.engine.reset()
        self.stream, self.now = name, 0.0

    def packet(self, pk: SourcePacket) -> None:
        self.now = max(self.now, pk.stamp / 1e9)
        res = self._s.intake.push(pk.encoding, pk.payload, pk.width, pk.height, pk.time_base,
                                  pk.seq,
                                  tag=pk, bigendian=pk.bigendian)
        self._closed(res)

    def image(self, img: RawImage) -> None:
        self.now = max(self.now, img.stamp / 1e9)
        if self._s.scheduler.add_image(img):
            self._drain(self.now)

    def finish(self) -> None:
        """End of the stream: the idle flush closes the open frame; waiting frames are taken."""
        self._closed(self._s.intake.flush())
        self._drain(math.inf)
        self.stop()

    def stop(self) -> None:
        """Account the stream's counters (also when the replay stops early)."""
        s, st = self._s, self.stats
        if s is None:
            return
        c, b = s.intake.counters, s.intake.binner
        st.packets += c.packets
        st.events += c.events
        st.rejected_packets += c.rejected
        st.seq_gaps += c.seq_gaps
        st.missing_packets += c.missing_packets
        st.late_events += b.late_events
        st.clock_resets += b.resets
        self._s = None

    # ------------------------------------------------------------------ frames
    def _closed(self, res: IntakeResult) -> None:
        s = self._s
        fed = s.intake.binner.pop_fed()
        for f in fed:
            pk = f.tag
            s.clock.packet(f, pk.stamp, pk.encoding, pk.time_base)
            s.inputs.add_frames(f.first_frame, f.last_frame, pk.stamp, res.decode_ms / len(fed))
        if not res.frames:
            return
        s.clock.stamp(res.frames)
        for f in res.frames:
            self._perceive(f)
        s.scheduler.add_frames(res.frames, [s.inputs.pop(f.index) for f in res.frames], self.now)
        self._drain(self.now)

    def _perceive(self, f: Frame) -> None:
        """sttf_perception on a closed frame; its TokenMask goes to the captioner's scheduler."""
        s = self._s
        t0 = time.perf_counter()
        mask = self.perception.process(f)
        s.perception_ms[f.index] = (time.perf_counter() - t0) * 1e3
        s.masks[f.index] = mask
        s.scheduler.add_mask(f.t_end, mask.active_indices, mask.total_tokens)

    def _drain(self, now: float) -> None:
        s = self._s
        while (ready := s.scheduler.next_ready(now)) is not None:
            out = self.captioner.caption(ready, now)
            k = ready.pending.frame.index
            self._record(out, s.masks.pop(k), s.perception_ms.pop(k))

    def _record(self, out: CaptionOutput, mask: MaskResult, perception_ms: float) -> None:
        res, f = out.result, out.frame
        st = self.stats
        st.rgb_frames += int(out.rgb)
        lat = {k: float(v) for k, v in res.latency_ms.items()}
        captioner_ms = float(lat.pop("total", sum(lat.values())))
        decode_ms = out.stage_ms[0]
        latency = {"decode": decode_ms, "perception": perception_ms, **lat,
                   "captioner": captioner_ms,
                   "total": decode_ms + perception_ms + captioner_ms}
        self.records.append(FrameRecord(
            stream=self.stream, index=int(f.index), t_start=int(f.t_start), t_end=int(f.t_end),
            events=int(f.n_events), text=res.text, label=int(res.label),
            gesture_name=res.gesture_name,
            confidence=float(res.confidence), active_tokens=int(res.active_tokens),
            total_tokens=int(res.total_tokens), change_tokens=int(res.change_tokens),
            mask_tokens=int(len(mask.active_indices)),
            active_fraction=res.active_tokens / max(1, res.total_tokens),
            refreshed=bool(res.refreshed),
            flops_executed=float(res.flops_executed), flops_dense=float(res.flops_dense),
            rgb=out.rgb,
            latency_ms=latency, branch=out.branch or None,
            scene=_scene_dict(getattr(res, "scene", None))))

    def finalize_stats(self) -> ReplayStats:
        """The counters, with the captioner's image counters."""
        cs = self.captioner.stats
        self.stats.rgb_missing, self.stats.images_rejected = cs.rgb_missing, cs.images_rejected
        return self.stats
