"""vlm_captioner's per-frame scheduling, without threads or rclpy: which closed frame the model
takes next, with which change mask, route and image. The node runs it under its lock with the
wall clock; the offline evaluation runs the very same object with the recording's clock.

Frames are taken strictly in order. Masks and routes are keyed by the frame end in SENSOR time
(``t_end``: the nodes cut the same frames); images are matched in the EventPacket header clock
(``frame.stamp_end``, :mod:`edge_vlm.stream.clock`), the clock of the image stamps. With
``mask_source: topic`` a closed frame waits for the TokenMask of its window for at most
``mask_timeout_ms``, then the captioner's own mask is used (a fallback). Once a RouteDecision has
come in (anc_router runs), a frame also waits (same timeout) for the RouteDecision of its window,
which the captioner then executes; without it the captioner routes locally (``route_late``, a
counted fallback). With ``use_rgb: always`` it also waits (same timeout) for an image whose stamp
lies within one frame period of the frame end (``|stamp - stamp_end| < P``; the nearest such
image is taken). A frame that finds images queued but none within a period counts in
``images_unmatched`` (``image_gap_ns``: its nearest image's stamp - its stamp, the clue when the
camera and the event stream are stamped in different clocks). Backpressure: at most
``max_pending_frames`` closed frames wait; when more arrive the OLDEST are dropped and the
next frame taken is a dense refresh of the token memory (a memory that skipped frames is never
reused).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from edge_vlm.cores.images import RawImage
from edge_vlm.inference.anc_engine import RouteOverride
from edge_vlm.stream.frames import Frame
from edge_vlm.stream.intake import FrameInput

#: TokenMasks and RouteDecisions kept while their frames wait (oldest dropped first)
MAX_PENDING_MASKS = 256
#: images kept (~5 s at 30 fps: covers a processing backlog)
IMAGE_QUEUE = 150


@dataclass
class PendingFrame:
    """A closed frame waiting for the model."""

    frame: Frame
    inputs: FrameInput        # the EventPackets that fed it (stamps, decode time)
    closed_at: float          # the scheduler's clock (s) when it closed
    deadline: float           # ... until when it waits for its mask / image


@dataclass
class ReadyFrame:
    """The next frame to caption, with what the scheduler matched to it."""

    pending: PendingFrame
    change: np.ndarray | None     # active patch indices of its TokenMask (None: none / local mask)
    image: RawImage | None        # the image picked for it (None: none / events only)
    branch: str                   # anc_router's branch for it (or the latest older one)
    refresh: bool                 # frames were dropped before it: re-encode every token
    route: RouteOverride | None = None   # anc_router's decision for this very frame
    route_late: bool = False      # anc_router runs but its decision for this frame is missing


class CaptionScheduler:
    """See the module doc. ``params`` is the captioner's live parameter dict (read at every
    call, so runtime parameter changes apply from the next frame)."""

    def __init__(self, params: dict, num_tokens: int, period_ns: int):
        self.params = params
        self.num_tokens = int(num_tokens)
        self.period = int(period_ns)
        self.pending: deque[PendingFrame] = deque()
        self.masks: dict[int, np.ndarray] = {}
        self.routes: dict[int, RouteOverride] = {}
        self.routes_seen = False
        self.images: deque[RawImage] = deque(maxlen=IMAGE_QUEUE)
        self.latest_branch = "base"
        self.refresh_needed = False
        self.masks_bad = 0
        self.images_unmatched = 0
        self.image_gap_ns: int | None = None   # of the latest frame that had images but no match

    # ------------------------------------------------------------------ inputs
    def add_frames(self, frames: list[Frame], inputs: list[FrameInput], now: float) -> list[int]:
        """Closed frames (with their packet inputs) join the queue; returns the indices of the
        frames dropped by backpressure (the oldest waiting ones)."""
        timeout = float(self.params["mask_timeout_ms"]) / 1e3
        for f, fi in zip(frames, inputs):
            self.pending.append(PendingFrame(f, fi, now, now + timeout))
        limit = max(1, int(self.params["max_pending_frames"]))
        dropped = []
        while len(self.pending) > limit:
            dropped.append(self.pending.popleft().frame.index)
        if dropped:
            self.refresh_needed = True
        return dropped

    def add_mask(self, stamp: int, indices: np.ndarray, total_tokens: int) -> bool:
        """sttf_perception's TokenMask for the frame ending at ``stamp``; False (counted in
        ``masks_bad``) when it does not fit the model's tokens."""
        idx = np.asarray(indices, dtype=np.int64)
        n = self.num_tokens
        if int(total_tokens) != n or (len(idx) and int(idx.max()) >= n):
            self.masks_bad += 1
            return False
        self.masks[int(stamp)] = idx
        _bound(self.masks)
        return True

    def add_route(self, stamp: int, branches: list[str], weights: list[float] | None = None,
                  budget: float = 1.0, probabilities: list[float] | None = None) -> None:
        """anc_router's RouteDecision for the frame ending at ``stamp``: the branches it runs,
        their weights (default: equal), the compute budget in force and its level
        probabilities (given: the captioner does not re-run the complexity estimator)."""
        w = [float(x) for x in weights] if weights is not None else [1.0] * len(branches)
        probs = None if probabilities is None else [float(x) for x in probabilities]
        self.routes[int(stamp)] = RouteOverride(list(branches), w, float(budget), probs)
        self.routes_seen = True
        _bound(self.routes)

    def add_image(self, image: RawImage) -> bool:
        """An image; False (ignored) when ``use_rgb`` is ``never``."""
        if self.params["use_rgb"] == "never":
            return False
        self.images.append(image)
        return True

    # ------------------------------------------------------------------ taking frames
    def next_ready(self, now: float) -> ReadyFrame | None:
        """The head frame if it may be processed at ``now`` (taken off the queue), else None."""
        if not self.pending:
            return None
        head = self.pending[0]
        t_end = head.frame.t_end
        p = self.params
        waiting = now < head.deadline
        if waiting and p["mask_source"] == "topic" and t_end not in self.masks:
            return None
        stamp = head.frame.stamp_end
        if waiting and p["use_rgb"] == "always" and self._pick_image(stamp) is None:
            return None
        if waiting and self.routes_seen and t_end not in self.routes:
            return None
        self.pending.popleft()
        refresh, self.refresh_needed = self.refresh_needed, False
        change = self.masks.pop(t_end, None) if p["mask_source"] == "topic" else None
        for old in [s for s in self.masks if s <= t_end]:
            self.masks.pop(old, None)
        picked = self._pick_image(stamp) if p["use_rgb"] != "never" else None
        if picked is None and self.images:
            self.images_unmatched += 1
            self.image_gap_ns = min((i.stamp - stamp for i in self.images), key=abs)
        while self.images and self.images[0].stamp <= stamp - self.period:
            self.images.popleft()          # too old for this and every later frame
        route = self.routes.get(t_end)
        return ReadyFrame(head, change, picked, self._branch_for(t_end), refresh, route,
                          self.routes_seen and route is None)

    def wait_s(self, now: float, longest: float = 0.05) -> float:
        """How long a worker may sleep before the head frame's deadline (at most ``longest``)."""
        if not self.pending:
            return longest
        return min(longest, max(0.0, self.pending[0].deadline - now) + 1e-4)

    def _pick_image(self, stamp: int) -> RawImage | None:
        """The image nearest to the frame end ``stamp`` (header clock) if within one frame
        period of it (the later one of two as near)."""
        best = None
        for img in self.images:
            gap = abs(img.stamp - stamp)
            if gap < self.period and (best is None or gap <= abs(best.stamp - stamp)):
                best = img
        return best

    def _branch_for(self, t_end: int) -> str:
        """Branch of the RouteDecision for this frame, else of the latest older one, else the
        last one used."""
        if t_end in self.routes:
            branch = _label(self.routes[t_end])
        else:
            older = [s for s in self.routes if s < t_end]
            branch = _label(self.routes[max(older)]) if older else self.latest_branch
        for old in [s for s in self.routes if s <= t_end]:
            self.routes.pop(old, None)
        self.latest_branch = branch
        return branch


def _label(route: RouteOverride) -> str:
    """The branch label of a RouteDecision: its one branch, ``mixed`` or ``base`` (none)."""
    b = route.branches
    return b[0] if len(b) == 1 else ("mixed" if b else "base")


def _bound(d: dict) -> None:
    while len(d) > MAX_PENDING_MASKS:
        d.pop(next(iter(d)))
