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
    events: np.ndarray | None  # EVENT_DTYPE, inside [t_start, t_end); None for a binned frame
    width: int          # sensor size
    height: int
    hist: np.ndarray | None = None   # (2*TIME_BINS, model_h, model_w) float32, set by FrameBinner
    count: int | None = None         # number of events (set when ``events`` is None)

    @property
    def n_events(self) -> int:
        """Number of events of the frame (binned or not)."""
        return int(self.count) if self.count is not None else len(self.events)


class FrameClock:
    """Cut events into frames of ``period_ns`` on the absolute sensor-time grid.

    Late events (older than the open frame) are dropped and counted in
    ``late_events``; a jump of more than ``max_gap_frames`` empty frames
    (e.g. a bag loop or sensor reset) restarts the clock (counted in ``resets``)
    instead of emitting thousands of empty frames.

    The rules live in :meth:`advance`, which works on event times only, so
    :class:`~edge_vlm.binner.FrameBinner` applies exactly the same rules to its
    own per-event arrays.
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

    def advance(self, t: np.ndarray) -> tuple[np.ndarray | None, list[tuple[int, int]], bool]:
        """Advance the clock over the (time-ordered, non-empty) event times ``t`` of one push.

        Returns ``(keep, closes, restart)``: ``keep`` selects the events that are not late
        (None: all); ``closes`` lists ``(frame index, end)`` for every frame this push closes,
        oldest first: the kept events ``[previous end, end)`` complete that frame (with what
        the open frame already holds) and the kept events from the last end on join the open
        frame; ``restart``: the open frame's earlier events must be discarded (backward jump).
        Updates ``current``, ``late_events`` and ``resets``.
        """
        P = self.period
        if self.current is None:
            self.current = int(t[0]) // P
        cur = self.current
        if cur * P <= int(t[0]) and int(t[-1]) < (cur + 1) * P:
            return None, [], False              # inside the open frame (the common case): no work
        k = t // P
        keep, restart = None, False
        late = k < cur
        if late.any():
            n_late = int(late.sum())
            if n_late == len(k) and int(k[-1]) < cur - self.max_gap:
                # the stream jumped backwards (bag loop / sensor reset): restart
                self.resets += 1
                cur, restart = int(k[0]), True
            else:
                self.late_events += n_late
                keep = ~late
                k = k[keep]
                if len(k) == 0:
                    return keep, [], False
        closes: list[tuple[int, int]] = []
        last = int(k[-1])
        off = 0
        if last - cur > self.max_gap:
            # forward jump: close the open frame, restart at the new position
            self.resets += 1
            off = int(np.searchsorted(k, cur + 1))
            closes.append((cur, off))
            cur = int(k[off])
        if cur < last:
            ends = np.searchsorted(k[off:], np.arange(cur + 1, last + 1)) + off
            closes += zip(range(cur, last), ends.tolist())
        self.current = last
        return keep, closes, restart

    def push(self, events: np.ndarray, width: int, height: int) -> list[Frame]:
        """Add time-ordered events; return the frames this closes (oldest first)."""
        self.size = (int(width), int(height))
        if len(events) == 0:
            return []
        keep, closes, restart = self.advance(events["t"])
        if restart:
            self.chunks = []
        if keep is not None:
            events = events[keep]
        out: list[Frame] = []
        a = 0
        for k, end in closes:
            self.chunks.append(events[a:end])
            out.append(self._close(k))
            a = end
        if a < len(events):
            self.chunks.append(events[a:] if a else events)
        return out

    def flush(self) -> list[Frame]:
        """Close the open frame (end of stream)."""
        if self.current is None or not self.chunks:
            return []
        f = self._close(self.current)
        self.current += 1
        return [f]

    def _close(self, k: int) -> Frame:
        ev = concat_events(self.chunks)
        self.chunks = []
        k = int(k)
        return Frame(k, k * self.period, (k + 1) * self.period, ev, *self.size)


def period_ns(params: dict) -> int:
    return int(round(float(params["frame_period_ms"]) * 1e6))


def frame_histogram(frame: Frame, params: dict) -> np.ndarray:
    """The frame's event histogram on the model grid of ``params`` (precomputed by FrameBinner if so)."""
    mw, mh = int(params["model_width"]), int(params["model_height"])
    if frame.hist is not None and frame.hist.shape[1:] == (mh, mw):
        return frame.hist
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
    """sttf_perception's logic: event frame -> change mask (the checkpoint's learned change-mask
    net by default, the event-count rule with ``mask_method: event_count``)."""

    def __init__(self, overrides: dict | None = None):
        self.params = p = resolve("sttf_perception", overrides)
        self.mask_net = None
        if p["mask_method"] == "learned":
            import torch

            from .model.engine import load_checkpoint

            torch.set_num_threads(1)
            model, _ = load_checkpoint(p["checkpoint"])   # CheckpointError: the node exits 3
            self.mask_net = model.mask_net

    def process(self, frame: Frame) -> MaskResult:
        p = self.params
        patch = int(p["patch_size"])
        hist = frame_histogram(frame, p)
        if self.mask_net is not None:
            import torch

            from .model.engine import hist_tensor

            with torch.no_grad():
                logit = self.mask_net(hist_tensor(hist)[None])[0]
            g = int(p["model_height"]) // patch
            score = torch.sigmoid(logit).numpy().reshape(g, -1).astype(np.float32)
            active, thr = score > 0.5, 0.5
        else:
            active, score = event_count_mask(hist, patch, int(p["event_count_threshold"]))
            thr = float(p["event_count_threshold"])
        gh, gw = active.shape
        idx = np.flatnonzero(active.reshape(-1)).astype(np.uint32)
        img = (np.repeat(np.repeat(active, patch, 0), patch, 1) * 255).astype(np.uint8)
        return MaskResult(idx, score.reshape(-1)[idx], thr, gw, gh, gh * gw, frame.n_events,
                          str(p["mask_method"]), img)


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
    est_flops: float = 0.0        # learned router: encoder FLOPs of the routed branches (changed tokens)
    est_flops_dense: float = 0.0  # Medium branch, every token


class RouterCore:
    """anc_router's logic: event frame -> complexity level, routed branches, budget.

    ``router_method: learned`` (default): the checkpoint's ANC complexity estimator on the
    frame's histogram plus the change-mask state it needs (changed and recently changed
    fractions, tracked here exactly as the captioner's token memory tracks them), hard
    routing as the captioner does it. ``density``: the rule fallback, a softmax over the
    distance of log event density to level centres set by ``low_density`` / ``high_density``.
    Either way the budget caps the level (<= 1/3 tiny only, <= 2/3 up to small).
    """

    def __init__(self, overrides: dict | None = None):
        self.params = p = resolve("anc_router", overrides)
        self.model = None
        if p["router_method"] == "learned":
            import torch

            from .model.engine import CheckpointError, load_checkpoint

            torch.set_num_threads(1)
            self.model, _ = load_checkpoint(p["checkpoint"])
            if not hasattr(self.model, "estimator"):
                raise CheckpointError(f"checkpoint {p['checkpoint'] or '(shipped default)'} has no ANC complexity "
                                      "estimator (STTF only); use router_method:=density or a joint checkpoint")
            self.age = None

    def set_budget(self, budget: float) -> None:
        self.params = resolve("anc_router", {**self.params, "compute_budget": budget})

    def _learned(self, frame: Frame) -> tuple[np.ndarray, int, int]:
        import torch

        from .model.captioner import age_bucket
        from .model.engine import hist_tensor

        c = self.model.cfg
        hist = frame_histogram(frame, self.params)
        ht = hist_tensor(hist)[None]
        with torch.no_grad():
            change = (self.model.mask_net(ht)[0] > 0).numpy()
            self.age = (np.where(change, 0, c.max_age) if self.age is None
                        else np.where(change, 0, np.minimum(self.age + 1, c.max_age)))
            bucket = age_bucket(torch.from_numpy(self.age), c.max_age)[None]
            logits = self.model.route_logits(ht, torch.from_numpy(change)[None], bucket)
        probs = torch.softmax(logits, dim=-1)[0].numpy().astype(np.float32)
        return probs, int(np.argmax(probs)), int(change.sum())

    def process(self, frame: Frame) -> RouteResult:
        from .model.anc import budget_cap

        p = self.params
        pixels = float(p["model_width"] * p["model_height"])
        density = frame.n_events / pixels
        cap = budget_cap(float(p["compute_budget"]))
        if self.model is not None:
            from dataclasses import replace

            from .model.flops import estimator_flops, vit_flops

            probs, level, n_changed = self._learned(frame)
            q = probs[:cap + 1] / probs[:cap + 1].sum()
            a, c = self.model.acfg, self.model.cfg
            run = [b for b in range(cap + 1) if q[b] > a.router_threshold] or [int(np.argmax(q))]
            w = q[run] / q[run].sum()
            est = estimator_flops(c, a.est_hidden) + sum(
                vit_flops(replace(c, mlp_ratio=a.mlp_ratios[b]), [n_changed] * a.depths[b]) for b in run)
            dense = vit_flops(replace(c, mlp_ratio=a.mlp_ratios[2]), [c.num_tokens] * a.depths[2])
            return RouteResult(LEVELS, probs, level, density, [LEVELS[b] for b in run], [float(x) for x in w],
                               float(p["compute_budget"]), float(est), float(dense))
        lo, hi = math.log(max(p["low_density"], 1e-9)), math.log(max(p["high_density"], 1e-8))
        centres = np.array([lo - 0.5 * (hi - lo), 0.5 * (lo + hi), hi + 0.5 * (hi - lo)])
        x = math.log(max(density, 1e-9))
        logits = -((x - centres) ** 2) / max((hi - lo) ** 2 / 4, 1e-6)
        probs = np.exp(logits - logits.max())
        probs = (probs / probs.sum()).astype(np.float32)
        level = 0 if density < p["low_density"] else (2 if density > p["high_density"] else 1)
        run = min(level, cap)
        return RouteResult(LEVELS, probs, level, density, [LEVELS[run]], [1.0], float(p["compute_budget"]))


class CaptionerCore:
    """vlm_captioner's logic: token memory + captioning model."""

    def __init__(self, overrides: dict | None = None):
        import torch

        from .model.engine import engine_from_params, load_checkpoint

        self.params = p = resolve("vlm_captioner", overrides)
        torch.set_num_threads(int(p["num_threads"]))
        self.model, self.meta = load_checkpoint(p["checkpoint"])
        if self.model.cfg.image_size != p["model_width"] or self.model.cfg.patch != p["patch_size"]:
            raise ValueError(f"checkpoint grid {self.model.cfg.image_size}/{self.model.cfg.patch} does not match "
                             f"parameters model_width={p['model_width']} patch_size={p['patch_size']}")
        self.model_id = str(self.meta.get("model_id", "captioner"))
        self.engine = engine_from_params(self.model, p, self.meta)

    def process(self, frame: Frame, rgb: np.ndarray | None = None, change_indices=None):
        """Caption one frame; ``change_indices``: active patch indices from an external mask."""
        hist = frame_histogram(frame, self.params)
        mask = None
        if change_indices is not None:
            mask = np.zeros(self.model.cfg.num_tokens, dtype=bool)
            mask[np.asarray(change_indices, dtype=np.int64)] = True
        return self.engine.process(hist, rgb, mask)
