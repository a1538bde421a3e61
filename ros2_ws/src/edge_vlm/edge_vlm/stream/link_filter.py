"""The link mode that sends less (``link:=active``, docs/deploy.md): per frame, only the events
of the frame's ACTIVE patches cross the link, as ONE EventPacket.

:func:`active_keep` is THE rule: an event of frame ``[t_start, t_end)`` is kept when the patch
its model-grid pixel falls in (:func:`~edge_vlm.stream.histogram.scale_coords`, the binner's
coordinate rule; patch index row-major on the ``(model_h / patch, model_w / patch)`` grid, as
in ``TokenMask.active_indices``) is active. A receiver that bins the kept events gets, in the
active patches, exactly the histogram of the raw events, and zero elsewhere.

:class:`LinkRelay` is the rclpy-free state of the drone's relay (``sttf_perception`` with
``link_relay``): decoded events bucketed by frame on the absolute grid ``[k*P, (k+1)*P)`` (an
event goes to the frame its time falls in, whatever packet carried it), at most
``max_frames`` open buckets (oldest dropped and counted), and :meth:`LinkRelay.take`: frame
``k``'s kept events as one payload (:class:`LinkPacket`). Encoding: ``libcaer_cmp`` (the
compact one) when every kept event is whole microseconds after the first and fits 11 bits,
else ``mono`` (exact for any event; counted in ``mono_fallbacks``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_vlm.events import EVENT_DTYPE
from edge_vlm.io.codecs import encode_libcaer_cmp, encode_mono
from edge_vlm.stream.histogram import scale_coords

__all__ = ["LinkGeometry", "LinkPacket", "LinkCounters", "LinkRelay", "active_keep",
           "filter_active", "encode_kept"]

#: libcaer_cmp: coordinates fit 11 bits, offsets below 2**24 us
_CMP_MAX_XY = 0x7FF
_CMP_MAX_OFFSET_NS = ((1 << 24) - 1) * 1000


class LinkGeometry(NamedTuple):
    """The sensor and the model grid the patches tile (the binner's mapping between them)."""

    sensor_w: int
    sensor_h: int
    model_w: int
    model_h: int
    patch: int

    def check(self) -> None:
        """ValueError when the sizes are not positive or the patch does not tile the grid."""
        if min(self) <= 0:
            raise ValueError(f"link filter: sizes must be positive, got {tuple(self)}")
        if self.model_w % self.patch or self.model_h % self.patch:
            raise ValueError(f"link filter: patch {self.patch} does not tile the model grid "
                             f"{self.model_w}x{self.model_h}")

    @property
    def tokens(self) -> int:
        return (self.model_w // self.patch) * (self.model_h // self.patch)


class LinkPacket(NamedTuple):
    """One frame's kept events as an EventPacket payload (``time_base``: the first kept event's
    time, ns; the payload's times are offsets from it, as in the source's packets)."""

    encoding: str
    payload: bytes
    time_base: int
    events: int            # kept events
    events_in: int         # events of the frame before the filter


def _active_table(active, geom: LinkGeometry) -> np.ndarray:
    """bool per patch (row-major) from the active indices; ValueError on a bad index."""
    idx = np.asarray(active)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError("link filter: active patch indices must be a 1-D integer array")
    idx = idx.astype(np.int64)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= geom.tokens):
        raise ValueError(f"link filter: active patch index out of range 0..{geom.tokens - 1}")
    table = np.zeros(geom.tokens, dtype=bool)
    table[idx] = True
    return table


def active_keep(events: np.ndarray, t_start: int, t_end: int, active,
                geom: LinkGeometry) -> np.ndarray:
    """bool per event: inside ``[t_start, t_end)`` and in an active patch (see the module doc).
    ValueError on malformed input (not :data:`EVENT_DTYPE`, a coordinate outside the sensor, an
    active index outside the grid, a geometry the patch does not tile)."""
    geom = LinkGeometry(*(int(v) for v in geom))
    geom.check()
    if not isinstance(events, np.ndarray) or events.dtype.names != EVENT_DTYPE.names:
        raise ValueError("link filter: events must be an EVENT_DTYPE array")
    if int(t_end) <= int(t_start):
        raise ValueError(f"link filter: empty frame window [{t_start}, {t_end})")
    table = _active_table(active, geom)
    if len(events) == 0:
        return np.zeros(0, dtype=bool)
    x, y = events["x"], events["y"]
    if int(x.max()) >= geom.sensor_w or int(y.max()) >= geom.sensor_h:
        raise ValueError(f"link filter: event outside the {geom.sensor_w}x{geom.sensor_h} "
                         "sensor")
    xm, ym = scale_coords(x, y, geom.sensor_w, geom.sensor_h, geom.model_w, geom.model_h)
    patch = (ym // geom.patch) * (geom.model_w // geom.patch) + xm // geom.patch
    t = events["t"]
    return (t >= int(t_start)) & (t < int(t_end)) & table[patch]


def filter_active(events: np.ndarray, t_start: int, t_end: int, active,
                  geom: LinkGeometry) -> np.ndarray:
    """The events :func:`active_keep` keeps (a copy, time order kept)."""
    return events[active_keep(events, t_start, t_end, active, geom)]


def encode_kept(kept: np.ndarray, events_in: int = 0) -> LinkPacket:
    """Kept events as one payload: ``libcaer_cmp`` when it holds them exactly, else ``mono``."""
    if len(kept) == 0:
        return LinkPacket("libcaer_cmp", b"", 0, 0, int(events_in))
    base = int(kept["t"].min())
    off = kept["t"] - base
    if (int(off.max()) <= _CMP_MAX_OFFSET_NS and not np.any(off % 1000)
            and int(kept["x"].max()) <= _CMP_MAX_XY and int(kept["y"].max()) <= _CMP_MAX_XY):
        return LinkPacket("libcaer_cmp", encode_libcaer_cmp(kept, base), base, len(kept),
                          int(events_in))
    return LinkPacket("mono", encode_mono(kept, base), base, len(kept), int(events_in))


@dataclass
class LinkCounters:
    frames_sent: int = 0
    events_in: int = 0            # events of the frames sent
    events_kept: int = 0
    bytes_sent: int = 0           # payload bytes
    frames_dropped: int = 0       # buckets dropped: over max_frames, or never taken
    late_events: int = 0          # events of a frame already sent or dropped
    mono_fallbacks: int = 0
    resets: int = 0               # the stream jumped backwards (a bag loop)


class LinkRelay:
    """Decoded events bucketed by frame, frame ``k`` taken once with its active patches (see the
    module doc). ``period``: the frame period (ns)."""

    def __init__(self, period_ns: int, max_frames: int = 64):
        if int(period_ns) <= 0 or int(max_frames) <= 0:
            raise ValueError("link relay: period and max_frames must be positive")
        self.period, self.max_frames = int(period_ns), int(max_frames)
        self.buckets: dict[int, list[np.ndarray]] = {}
        self.done: int | None = None          # the newest frame taken (or dropped) so far
        self.counters = LinkCounters()

    def push(self, events: np.ndarray) -> None:
        """Decoded events of one packet (time-ordered or not) into their frames' buckets;
        events of a frame already taken are late (counted, dropped), unless the whole packet
        is far behind (a backward jump: the buckets restart)."""
        if len(events) == 0:
            return
        k = events["t"] // self.period
        if self.done is not None and int(k.max()) < self.done - self.max_frames:
            self.buckets.clear()              # the stream jumped backwards (bag loop): restart
            self.done = None
            self.counters.resets += 1
        if self.done is not None:
            late = k <= self.done
            if late.any():
                self.counters.late_events += int(late.sum())
                events, k = events[~late], k[~late]
        order = np.argsort(k, kind="stable")
        events, k = events[order], k[order]
        frames, starts = np.unique(k, return_index=True)
        for f, a, b in zip(frames.tolist(), starts.tolist(), [*starts[1:].tolist(), len(k)]):
            self.buckets.setdefault(f, []).append(events[a:b])
        while len(self.buckets) > self.max_frames:
            self._drop(min(self.buckets))

    def _drop(self, k: int) -> None:
        self.buckets.pop(k, None)
        self.counters.frames_dropped += 1

    def take(self, index: int, active, geom: LinkGeometry) -> LinkPacket:
        """Frame ``index``'s events in its active patches, encoded; older buckets are dropped
        (counted: their frame was never taken, e.g. a clock reset)."""
        index = int(index)
        for old in [j for j in self.buckets if j < index]:
            self._drop(old)
        chunks = self.buckets.pop(index, [])
        self.done = index
        ev = np.concatenate(chunks) if chunks else np.zeros(0, dtype=EVENT_DTYPE)
        if len(chunks) > 1:
            ev = ev[np.argsort(ev["t"], kind="stable")]
        t0 = index * self.period
        kept = filter_active(ev, t0, t0 + self.period, active, geom)
        pkt = encode_kept(kept, len(ev))
        if not pkt.events:                    # nothing kept: the reference is the frame start
            pkt = pkt._replace(time_base=t0)
        c = self.counters
        c.frames_sent += 1
        c.events_in += len(ev)
        c.events_kept += pkt.events
        c.bytes_sent += len(pkt.payload)
        c.mono_fallbacks += pkt.encoding == "mono"
        return pkt
