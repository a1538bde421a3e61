"""Per-node processing cores (no rclpy). Nodes are thin adapters around these.

* :class:`FrameClock` cuts a time-ordered event stream into frames on the
  absolute grid ``[k*P, (k+1)*P)``; every node uses it, so frame stamps agree.
* :class:`PerceptionCore` (sttf_perception): frame -> change mask / token mask.
* :class:`RouterCore` (anc_router): frame -> complexity level and route.
* :class:`CaptionerCore` (vlm_captioner): frame (+ optional RGB, + optional
  external mask) -> caption, gesture and compute cost, with the token memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .events import concat_events
from .params import resolve
from .repr import event_histogram, patch_counts


@dataclass
class Frame:
    index: int          # k: the frame covers [k*P, (k+1)*P)
    t_start: int        # ns
    t_end: int          # ns (exclusive); used as the stamp of every output about this frame
    events: np.ndarray  # EVENT_DTYPE, inside [t_start, t_end)
    width: int          # sensor size
    height: int


class FrameClock:
    """Cut events into frames of ``period_ns`` on the absolute sensor-time grid.

    Late events (older than the open frame) are dropped and counted in
    ``late_events``; a jump of more than ``max_gap_frames`` empty frames
    (e.g. a bag loop or sensor reset) restarts the clock (counted in ``resets``)
    instead of emitting thousands of empty frames.
    """

    def __init__(self, period_ns: int, max_gap_frames: int = 30):
        if period_ns <= 0:
            raise ValueError("period_ns must be positive")
        self.period = int(period_ns)
        self.max_gap = int(max_gap_frames)
        self.current: int | None = None
        self.chunks: list[np.ndarray] = []
        self.late_events = 0
        self.resets = 0
        self.size = (0, 0)

    def push(self, events: np.ndarray, width: int, height: int) -> list[Frame]:
        """Add time-ordered events; return the frames this closes (oldest first)."""
        self.size = (int(width), int(height))
        if len(events) == 0:
            return []
        out: list[Frame] = []
        k = events["t"] // self.period
        if self.current is None:
            self.current = int(k[0])
        late = k < self.current
        if late.any():
            n_late = int(late.sum())
            if n_late == len(events) and int(k[-1]) < self.current - self.max_gap:
                # the stream jumped backwards (bag loop / sensor reset): restart
                self.resets += 1
                self.current, self.chunks = int(k[0]), []
                late = np.zeros(len(events), dtype=bool)
            else:
                self.late_events += n_late
                events, k = events[~late], k[~late]
                if len(events) == 0:
                    return []
        last = int(k[-1])
        if last - self.current > self.max_gap:
            # forward jump: close the open frame, restart at the new position
            self.resets += 1
            head = k < self.current + 1
            self.chunks.append(events[head])
            out.append(self._close())
            events, k = events[~head], k[~head]
            self.current = int(k[0])
        while self.current < last:
            end = np.searchsorted(k, self.current + 1)
            self.chunks.append(events[:end])
            events, k = events[end:], k[end:]
            out.append(self._close())
            self.current += 1
        self.chunks.append(events)
        return out

    def flush(self) -> list[Frame]:
        """Close the open frame (end of stream)."""
        if self.current is None or not self.chunks:
            return []
        f = self._close()
        self.current += 1
        return [f]

    def _close(self) -> Frame:
        ev = concat_events(self.chunks)
        self.chunks = []
        k = int(self.current)
        return Frame(k, k * self.period, (k + 1) * self.period, ev, *self.size)


def period_ns(params: dict) -> int:
    return int(round(float(params["frame_period_ms"]) * 1e6))


def frame_histogram(frame: Frame, params: dict) -> np.ndarray:
    return event_histogram(frame.events, frame.t_start, frame.t_end, frame.width, frame.height,
                           int(params["model_width"]), int(params["model_height"]))


@dataclass
class MaskResult:
    active_indices: np.ndarray   # uint32, row-major patch indices
    scores: np.ndarray           # float32 per active index, in (0, 1]
    threshold: float
    grid_width: int
    grid_height: int
    total_tokens: int
    event_count: int
    method: str
    mask_image: np.ndarray       # (model_h, model_w) uint8, 255 = active patch

    @property
    def active_fraction(self) -> float:
        return len(self.active_indices) / max(1, self.total_tokens)


def event_count_mask(hist: np.ndarray, patch: int, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Rule-based change mask: (bool per patch, score per patch = 1 - exp(-count/threshold))."""
    counts = patch_counts(hist, patch)
    return counts >= threshold, (1.0 - np.exp(-counts / float(threshold))).astype(np.float32)


class PerceptionCore:
    """sttf_perception's logic: event frame -> change mask."""

    def __init__(self, overrides: dict | None = None):
        self.params = resolve("sttf_perception", overrides)

    def process(self, frame: Frame) -> MaskResult:
        p = self.params
        patch = int(p["patch_size"])
        hist = frame_histogram(frame, p)
        active, score = event_count_mask(hist, patch, int(p["event_count_threshold"]))
        gh, gw = active.shape
        idx = np.flatnonzero(active.reshape(-1)).astype(np.uint32)
        img = (np.repeat(np.repeat(active, patch, 0), patch, 1) * 255).astype(np.uint8)
        return MaskResult(idx, score.reshape(-1)[idx], float(p["event_count_threshold"]), gw, gh, gh * gw,
                          int(len(frame.events)), str(p["mask_method"]), img)


LEVELS = ("tiny", "small", "medium")


@dataclass
class RouteResult:
    levels: tuple
    probabilities: np.ndarray
    level: int
    score: float                 # events per pixel per frame
    branches: list
    weights: list
    budget: float


class RouterCore:
    """anc_router's logic (Foundation version): event density -> complexity level.

    Probabilities are a softmax over the distance of log-density to the level
    centres set by ``low_density`` / ``high_density``; the budget caps the level
    (budget <= 1/3 -> tiny only, <= 2/3 -> up to small).
    """

    def __init__(self, overrides: dict | None = None):
        self.params = resolve("anc_router", overrides)

    def set_budget(self, budget: float) -> None:
        self.params = resolve("anc_router", {**self.params, "compute_budget": budget})

    def process(self, frame: Frame) -> RouteResult:
        p = self.params
        pixels = float(p["model_width"] * p["model_height"])
        density = len(frame.events) / pixels
        lo, hi = math.log(max(p["low_density"], 1e-9)), math.log(max(p["high_density"], 1e-8))
        centres = np.array([lo - 0.5 * (hi - lo), 0.5 * (lo + hi), hi + 0.5 * (hi - lo)])
        x = math.log(max(density, 1e-9))
        logits = -((x - centres) ** 2) / max((hi - lo) ** 2 / 4, 1e-6)
        probs = np.exp(logits - logits.max())
        probs = (probs / probs.sum()).astype(np.float32)
        level = 0 if density < p["low_density"] else (2 if density > p["high_density"] else 1)
        cap = max(0, min(2, int(math.ceil(float(p["compute_budget"]) * 3 - 1e-9)) - 1))
        run = min(level, cap)
        return RouteResult(LEVELS, probs, level, density, [LEVELS[run]], [1.0], float(p["compute_budget"]))


class CaptionerCore:
    """vlm_captioner's logic: token memory + captioning model."""

    def __init__(self, overrides: dict | None = None):
        import torch

        from .model.engine import StreamingCaptioner, load_checkpoint

        self.params = p = resolve("vlm_captioner", overrides)
        torch.set_num_threads(int(p["num_threads"]))
        self.model, self.meta = load_checkpoint(p["checkpoint"])
        if self.model.cfg.image_size != p["model_width"] or self.model.cfg.patch != p["patch_size"]:
            raise ValueError(f"checkpoint grid {self.model.cfg.image_size}/{self.model.cfg.patch} does not match "
                             f"parameters model_width={p['model_width']} patch_size={p['patch_size']}")
        self.model_id = str(self.meta.get("model_id", "captioner"))
        self.engine = StreamingCaptioner(
            self.model, event_count_threshold=int(p["event_count_threshold"]),
            refresh_period=int(p["refresh_period"]), decoding=str(p["decoding"]),
            beam_size=int(p["beam_size"]), max_caption_tokens=int(p["max_caption_tokens"]),
            caption_period=int(p["caption_period"]))

    def process(self, frame: Frame, rgb: np.ndarray | None = None, change_indices=None):
        """Caption one frame; ``change_indices``: active patch indices from an external mask."""
        hist = frame_histogram(frame, self.params)
        mask = None
        if change_indices is not None:
            mask = np.zeros(self.model.cfg.num_tokens, dtype=bool)
            mask[np.asarray(change_indices, dtype=np.int64)] = True
        return self.engine.process(hist, rgb, mask)
