"""Frames on the absolute sensor-time grid, the clock that cuts a stream into them, and what a
binner reports about the packets it saw.

:class:`FrameClock` cuts a time-ordered event stream into frames on the absolute grid
``[k*P, (k+1)*P)``; every node uses it (through :class:`~edge_vlm.stream.binner.FrameBinner`),
so frame stamps agree between nodes without a synchroniser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_vlm.events import concat_events
from edge_vlm.stream.flicker import flicker_keep
from edge_vlm.stream.histogram import event_histogram, scale_coords


@dataclass
class Frame:
    index: int          # k: the frame covers [k*P, (k+1)*P) of sensor time
    t_start: int        # ns, sensor time (the events' clock)
    t_end: int          # ns (exclusive), sensor time
    events: np.ndarray | None  # EVENT_DTYPE, inside [t_start, t_end); None for a binned frame
    width: int          # sensor size
    height: int
    hist: np.ndarray | None = None   # (2*TIME_BINS, model_h, model_w) float32, set by FrameBinner
    count: int | None = None         # number of events (set when ``events`` is None)
    #: EventPacket header clock - sensor time (ns) of the packets that fed the frame, set by
    #: :class:`edge_vlm.stream.clock.HeaderClock` (0: the two clocks are taken as one)
    stamp_offset: int = 0

    @property
    def stamp_end(self) -> int:
        """Frame end in the EventPacket header clock (ns): the stamp of every output about it."""
        return self.t_end + self.stamp_offset

    @property
    def stamp_start(self) -> int:
        """Frame start in the EventPacket header clock (ns)."""
        return self.t_start + self.stamp_offset

    @property
    def n_events(self) -> int:
        """Number of events of the frame (binned or not)."""
        return int(self.count) if self.count is not None else len(self.events)


class Advance(NamedTuple):
    """What one push does to the clock (:meth:`FrameClock.advance`)."""

    keep: np.ndarray | None            # the events that are not late (None: all)
    closes: list[tuple[int, int]]      # (frame index, end) of every frame closed, oldest first
    restart: bool                      # the open frame's earlier events must be discarded


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

    def advance(self, t: np.ndarray) -> Advance:
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
            return Advance(None, [], False)     # inside the open frame (the common case): no work
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
                    return Advance(keep, [], False)
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
        return Advance(keep, closes, restart)

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
    """The frame's event histogram on the model grid of ``params`` (precomputed by FrameBinner
    if so; else from its events, less the flickering pixels when ``params`` has
    ``flicker_min_flips`` > 0: the binner's rule, :mod:`edge_vlm.stream.flicker`)."""
    mw, mh = int(params["model_width"]), int(params["model_height"])
    if frame.hist is not None and frame.hist.shape[1:] == (mh, mw):
        return frame.hist
    ev, k = frame.events, int(params.get("flicker_min_flips", 0))
    if k and len(ev):            # the binner's anti-flicker rule (stream/flicker.py)
        x, y = scale_coords(ev["x"], ev["y"], frame.width, frame.height, mw, mh)
        keep = flicker_keep(None, (ev["p"].astype(np.int64) * mh + y) * mw + x, mh * mw, k)
        ev = ev if keep is None else ev[keep]
    return event_histogram(ev, frame.t_start, frame.t_end, frame.width, frame.height, mw, mh)


class Rejection(NamedTuple):
    """A packet the binner rejected: the caller's tag and why."""

    tag: object
    reason: str


class FedPacket(NamedTuple):
    """A decoded packet with events: the caller's tag, the frames its events fell in and the
    sensor time of its first (earliest) event."""

    tag: object
    first_frame: int
    last_frame: int
    t_first: int


class Buffered(NamedTuple):
    """A packet waiting in the numpy backend's batch."""

    payload: np.ndarray       # uint8
    time_base: int
    tag: object


class Decoded(NamedTuple):
    """Decoded packets of one stream: event times (ns), channel-less bins, event end per packet."""

    t: np.ndarray
    c: np.ndarray
    ends: list[int]
