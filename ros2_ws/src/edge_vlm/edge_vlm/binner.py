"""Decode + frame binning of an EventPacket stream, batched per frame (what the nodes run).

:class:`FrameBinner` does what a node does with every EventPacket -- stateful
decode, :class:`~edge_vlm.pipeline.FrameClock` on the absolute grid of period
``P``, :func:`~edge_vlm.repr.event_histogram` of every closed frame on the model
grid -- with the same results (histograms, event counts, frame indices, clock
counters, rejected packets), but without ~35 small numpy calls per packet:

* On arrival a packet gets only cheap, pure-Python checks (sensor size,
  encoding, payload length, mono ``time_base`` range); a packet failing them
  is rejected at once. It is buffered while it ends inside the open frame:
  ``mono`` from the times of its first and last words, ``evt3`` from the last
  TIME_HIGH / TIME_LOW words of its tail (a short pure-Python scan). Any other
  packet (it may close frames, or hold late events or a jump), or
  ``max_batch_bytes`` buffered, decodes the buffer in ONE vectorized pass. So
  frames are emitted on the packet that closes them, as with per-packet
  decoding. (The peek only decides *when* to decode: results never depend on
  it; an evt3 tail without time words just decodes at once.)
* ``mono`` goes from the uint64 words straight to histogram bins (a
  channel-less bin ``p * H * W + y * W + x`` of the model grid by two table
  look-ups, event times from the low 32 bits plus each packet's ``time_base``);
  ``evt3`` joins the payloads (exact: the decoder state carries over) and uses
  :meth:`~edge_vlm.codecs.evt3.Evt3Decoder.decode_columns`. Other encodings
  (``libcaer_cmp``) are decoded packet by packet.
* The frames closed by a batch are binned by ONE ``bincount`` over
  ``h * 2HW + bin`` (``h``: half-frame index from the open frame's start). This
  equals per-packet processing when the batch's events are time-ordered,
  start in the open frame and span at most ``max_gap_frames``; any other
  batch (late events, jumps, unsorted packets) is replayed packet by packet
  with the :meth:`FrameClock.advance` rules. A batch that fails to decode is
  decoded again packet by packet: the malformed packets are rejected and
  counted, the good ones kept.

Frames come out as :class:`~edge_vlm.pipeline.Frame` with ``events=None``,
``hist`` (float32 ``(2*TIME_BINS, model_h, model_w)``) and ``count``.
Differences from per-packet binning (tests/test_binner.py checks the rest):
each packet's coordinates are scaled with that packet's sensor size (the
per-packet path scales a frame with the size of the last packet pushed: they
differ only if the sensor size changes inside a frame); an evt3 vector running
past x = 2047 (possible only on a sensor wider than EVT 3.0 addresses) rejects
the packet.
"""
from __future__ import annotations

import time
from collections import deque
from itertools import accumulate

import numpy as np

from .codecs import SUPPORTED_ENCODINGS, make_decoder
from .codecs.evt3 import WRAP_THRESHOLD_HIGH
from .codecs.mono import check_mono_packet, payload_bytes
from .events import EVENT_DTYPE, EventDecodeError
from .pipeline import Frame, FrameClock
from .repr import TIME_BINS, scale_coords

__all__ = ["FrameBinner", "MAX_BATCH_BYTES"]

#: buffered payload bytes that force a decode (bounds the latency of a stream whose peek fails)
MAX_BATCH_BYTES = 1 << 17
_BAD = -(1 << 30)            # table entry of an out-of-sensor coordinate: makes the bin negative
_TAIL_BYTES = 64             # evt3 peek: the tail scanned in Python for the last time words
_ONES = np.ones(0)           # bincount weights (float64 counts)


def _counts(code: np.ndarray, size: int) -> np.ndarray:
    """float32 histogram of ``size`` bins of the integer ``code`` values (all in ``[0, size)``)."""
    global _ONES
    m = code.size
    if _ONES.size < m:
        _ONES = np.ones(max(m, 2 * _ONES.size, 4096))
    # float64 counts (exact) -> float32: cheaper than casting bincount's int64 counts
    return np.bincount(code, _ONES[:m], minlength=size).astype(np.float32)


class FrameBinner:
    """Decode and bin one EventPacket stream into closed frames (see the module doc).

    ``push`` returns the frames a packet closes (oldest first), ``flush`` closes the open
    frame (end of stream). Rejected packets are counted in ``rejected`` and listed as
    ``(tag, reason)`` in ``rejections`` (drain with :meth:`pop_rejections`). With
    ``track_packets``, ``fed`` lists ``(tag, first frame, last frame)`` of every decoded
    packet with events (drain with :meth:`pop_fed`). ``busy_s``: time spent in
    ``push``/``flush``.
    """

    def __init__(self, period_ns: int, model_width: int = 128, model_height: int = 128,
                 max_gap_frames: int = 30, max_batch_bytes: int = MAX_BATCH_BYTES,
                 track_packets: bool = False):
        self.clock = FrameClock(period_ns, max_gap_frames)
        self.period = self.clock.period
        self.mw, self.mh = int(model_width), int(model_height)
        self.cb = 2 * self.mh * self.mw        # bins of one time sub-bin (polarity x rows x columns)
        self.max_batch_bytes = int(max_batch_bytes)
        self.track = bool(track_packets)
        self.decoders: dict = {}
        self.packets = self.events = self.rejected = self.unsorted = 0
        self.busy_s = 0.0
        self.rejections: deque = deque(maxlen=1000)
        self.fed: list[tuple[object, int, int]] = []
        self._pend: list[tuple[np.ndarray, int, object]] = []     # (payload uint8, time_base, tag)
        self._pend_key: tuple | None = None                      # (encoding, width, height)
        self._pend_bytes = 0
        self._open_t: list[np.ndarray] = []                      # open frame: event times (ns)
        self._open_c: list[np.ndarray] = []                      # ... and channel-less bins
        self._luts: dict = {}
        self._peek_hi = 0

    # ------------------------------------------------------------------ public
    def push(self, encoding: str, data, width: int, height: int, time_base: int = 0,
             tag: object = None) -> list[Frame]:
        """Add one EventPacket; return the frames it closes. Never raises on malformed input."""
        t0 = time.perf_counter()
        try:
            return self._push(str(encoding), data, int(width), int(height), int(time_base), tag)
        finally:
            self.busy_s += time.perf_counter() - t0

    def flush(self) -> list[Frame]:
        """Decode what is buffered and close the open frame (end of stream / idle)."""
        t0 = time.perf_counter()
        try:
            return self._run() + self._close_open_frame()
        finally:
            self.busy_s += time.perf_counter() - t0

    def pop_rejections(self) -> list[tuple[object, str]]:
        out = list(self.rejections)
        self.rejections.clear()
        return out

    def pop_fed(self) -> list[tuple[object, int, int]]:
        out, self.fed = self.fed, []
        return out

    @property
    def late_events(self) -> int:
        return self.clock.late_events

    @property
    def resets(self) -> int:
        return self.clock.resets

    # ------------------------------------------------------------------ arrival
    def _reject(self, tag, reason: str) -> None:
        self.rejected += 1
        self.rejections.append((tag, reason))

    def _push(self, enc: str, data, w: int, h: int, tb: int, tag) -> list[Frame]:
        self.packets += 1
        if w <= 0 or h <= 0:
            self._reject(tag, f"invalid sensor size {w}x{h}")
            return []
        if enc not in SUPPORTED_ENCODINGS:
            self._reject(tag, f"unsupported encoding {enc!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
            return []
        key = (enc, w, h)
        frames = self._run() if self._pend and key != self._pend_key else []
        try:
            buf = np.frombuffer(data, np.uint8) if type(data) is bytes else payload_bytes(data)
            if enc == "mono":
                check_mono_packet(buf.size, tb, w, h)
            elif enc == "evt3" and buf.size % 2:
                raise EventDecodeError(
                    f"evt3: payload of {buf.size} bytes is not a whole number of 16-bit words")
        except EventDecodeError as exc:
            self._reject(tag, str(exc))
            return frames
        if enc not in ("mono", "evt3"):
            return frames + self._one_packet(enc, buf, w, h, tb, tag)
        if buf.size == 0:
            self.clock.size = (w, h)
            if enc == "mono":
                # an empty mono packet carries sensor time: the open frame may be over
                frames += self._run()
                cur = self.clock.current
                if cur is not None and self._open_t and tb >= (cur + 1) * self.period:
                    frames += self._close_open_frame()
            return frames
        self._pend.append((buf, tb, tag))
        self._pend_key = key
        self._pend_bytes += buf.size
        cur = self.clock.current
        if cur is None or self._pend_bytes >= self.max_batch_bytes:
            return frames + self._run()
        # buffer only a packet that ends inside the open frame (else it may close frames, or
        # hold late events / a jump: decode now so that the clock stays current)
        start, end = cur * self.period, (cur + 1) * self.period
        if enc == "mono":
            first, last = int(buf[:8].view("<u8")[0]), int(buf[-8:].view("<u8")[0])
            inside = start <= tb + (first & 0xFFFFFFFF) and tb + (last & 0xFFFFFFFF) < end
        else:
            t_last = self._evt3_tail_time(buf)
            inside = t_last is not None and start <= t_last < end
        return frames if inside else frames + self._run()

    def _evt3_tail_time(self, buf: np.ndarray) -> int | None:
        """Sensor time (ns) after the last word of an evt3 packet, from the last TIME_HIGH and
        TIME_LOW words of its tail; None when unknown (no time in the tail, a possible wrap,
        a stream without a valid time yet)."""
        dec = self.decoders.get("evt3")
        if dec is None or not dec._s.valid:
            return None
        tail = buf[-_TAIL_BYTES:].tobytes()
        hi = lo = -1
        for j in range(len(tail) - 1, 0, -2):
            typ = tail[j] >> 4
            if typ == 0x6 and lo < 0:
                lo = (tail[j] & 0xF) << 8 | tail[j - 1]
            elif typ == 0x8 and hi < 0:
                hi = (tail[j] & 0xF) << 8 | tail[j - 1]
            if lo >= 0 and hi >= 0:
                break
        if hi < 0 and buf.size > _TAIL_BYTES:      # the last TIME_HIGH, further back (numpy)
            pos = ((buf[1:-_TAIL_BYTES:2] >> 4) == 0x8).nonzero()[0]
            if pos.size:
                j = 2 * int(pos[-1])
                hi = (int(buf[j + 1]) & 0xF) << 8 | int(buf[j])
        if lo < 0:
            return None
        if hi < 0:
            hi = self._peek_hi
        elif hi < self._peek_hi - WRAP_THRESHOLD_HIGH:
            return None                      # a 24-bit wrap: let the decoder sort it out
        self._peek_hi = hi
        return ((dec._s.wraps << 24) | (hi << 12) | lo) * 1000

    # ------------------------------------------------------------------ decoding
    def _decoder(self, enc: str):
        dec = self.decoders.get(enc)
        if dec is None:
            dec = self.decoders[enc] = make_decoder(enc)
        return dec

    def _tables(self, enc: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Look-up tables to the channel-less bin ``p*mh*mw + ym*mw + xm`` (int32; _BAD outside
        the sensor): mono (x, y | p << 15); evt3 (y, x | p << 11)."""
        key = (enc, w, h)
        lut = self._luts.get(key)
        if lut is None:
            mw, mh = self.mw, self.mh
            if enc == "mono":
                x = np.arange(1 << 16)
                y, p = x & 0x7FFF, x >> 15
                lx = np.where(x < w, scale_coords(x, x, w, w, mw, mw)[0], _BAD)
                ly = np.where(y < h, scale_coords(y, y, h, h, mh, mh)[0] * mw + p * mh * mw, _BAD)
                lut = (lx.astype(np.int32), ly.astype(np.int32))
            else:
                y, v = np.arange(1 << 11), np.arange(1 << 12)
                x, p = v & 0x7FF, v >> 11
                ly = np.where(y < h, scale_coords(y, y, h, h, mh, mh)[0] * mw, _BAD)
                lx = np.where(x < w, scale_coords(x, x, w, w, mw, mw)[0] + p * mh * mw, _BAD)
                lut = (ly.astype(np.int32), lx.astype(np.int32))
            self._luts[key] = lut
        return lut

    def _decode(self, enc: str, pend: list, w: int, h: int) -> tuple[np.ndarray, np.ndarray, list]:
        """Decode buffered packets of one stream in one pass: (t ns, bin, event end per packet).

        Raises :class:`EventDecodeError` (state unchanged) if any of them is malformed."""
        bufs = [p[0] for p in pend]
        raw = bufs[0] if len(bufs) == 1 else np.concatenate(bufs)
        if enc == "mono":
            words = raw.view("<u8")
            half = words.view(np.uint16)
            lx, lyp = self._tables(enc, w, h)
            c = lx.take(half[2::4])
            c += lyp.take(half[3::4])
            if c.size and int(c.min()) < 0:
                raise EventDecodeError(
                    f"mono: event coordinates outside sensor {w}x{h} "
                    f"(max x={int(half[2::4].max())}, max y={int((half[3::4] & 0x7FFF).max())})")
            t = words.view(np.uint32)[0::2].astype(np.int64)
            counts = [b.size // 8 for b in bufs]
            tbs = [p[1] for p in pend]
            if min(tbs) == max(tbs):
                t += tbs[0]
            else:
                t += np.repeat(np.array(tbs, dtype=np.int64), counts)
            return t, c, list(accumulate(counts))
        dec = self._decoder(enc)
        try:        # the decoder checks the coordinates (before it commits its state)
            t, y, xp, ev_ends = dec.decode_columns(
                raw, w, h, list(accumulate(b.size for b in bufs)) if len(bufs) > 1 else None)
        finally:
            self._peek_hi = dec._s.time_high
        ly, lxp = self._tables(enc, w, h)
        c = ly.take(y)
        c += lxp.take(xp)
        return t, c, (ev_ends.tolist() if ev_ends is not None else [t.size])

    def _one_packet(self, enc: str, buf: np.ndarray, w: int, h: int, tb: int, tag) -> list[Frame]:
        """Any other encoding: decode the packet alone into events, then bin it."""
        try:
            ev = np.asarray(self._decoder(enc).decode(buf, w, h, tb))
            if ev.dtype != EVENT_DTYPE:
                ev = ev.astype(EVENT_DTYPE)
            if len(ev) and (int(ev["x"].max()) >= w or int(ev["y"].max()) >= h):
                raise EventDecodeError(f"event coordinates outside sensor {w}x{h}")
        except EventDecodeError as exc:
            self._reject(tag, str(exc))
            return []
        self.clock.size = (w, h)
        x, y = scale_coords(ev["x"], ev["y"], w, h, self.mw, self.mh)
        c = (ev["p"].astype(np.int64) * self.mh + y) * self.mw + x
        self.events += len(ev)
        return self._bin_packet(ev["t"].astype(np.int64), c, tag)

    def _run(self) -> list[Frame]:
        """Decode and bin the buffered packets."""
        if not self._pend:
            return []
        pend, self._pend, self._pend_bytes = self._pend, [], 0
        enc, w, h = self._pend_key
        try:
            parts = [(self._decode(enc, pend, w, h), [p[2] for p in pend])]
        except EventDecodeError:
            parts = []                       # a malformed packet inside: packet by packet
            for p in pend:
                try:
                    parts.append((self._decode(enc, [p], w, h), [p[2]]))
                except EventDecodeError as exc:
                    self._reject(p[2], str(exc))
        frames: list[Frame] = []
        if parts:
            self.clock.size = (w, h)            # as FrameClock.push of an accepted packet
        for (t, c, ends), tags in parts:
            self.events += t.size
            frames += self._bin_batch(t, c, ends, tags)
        return frames

    # ------------------------------------------------------------------ binning
    def _bin_batch(self, t: np.ndarray, c: np.ndarray, ends: list, tags: list) -> list[Frame]:
        """Bin decoded packets (``ends``: event end per packet); vectorized when exact."""
        m = t.size
        if m == 0:
            return []
        P, clock = self.period, self.clock
        t0, t1 = int(t[0]), int(t[-1])
        cur = clock.current if clock.current is not None else t0 // P
        base = cur * P
        if not (base <= t0 and t1 - base < P * (clock.max_gap + 1)
                and (m == 1 or bool((t[1:] >= t[:-1]).all()))):
            frames: list[Frame] = []         # the exact per-packet rules
            a = 0
            for e, tag in zip(ends, tags):
                if e > a:
                    frames += self._bin_packet(t[a:e], c[a:e], tag)
                a = e
            return frames
        if self.track:
            starts = [0, *ends[:-1]]
            for a, e, tag in zip(starts, ends, tags):
                if e > a:
                    self.fed.append((tag, int(t[a]) // P, int(t[e - 1]) // P))
        clock.current = cur
        n_closed = t1 // P - cur
        if n_closed == 0:
            self._open_t.append(t)
            self._open_c.append(c)
            return []
        if self._open_t:
            t = np.concatenate([*self._open_t, t])
            c = np.concatenate([*self._open_c, c])
        split = int(np.searchsorted(t, base + n_closed * P))
        frames = self._hist_frames(cur, n_closed, t[:split], c[:split])
        self._open_t, self._open_c = [t[split:]], [c[split:]]
        clock.current = cur + n_closed
        return frames

    def _bin_packet(self, t: np.ndarray, c: np.ndarray, tag) -> list[Frame]:
        """One packet's events through :meth:`FrameClock.advance` (late events, jumps, restarts)."""
        if t.size == 0:
            return []
        if t.size > 1 and bool((t[1:] < t[:-1]).any()):
            self.unsorted += 1
            order = np.argsort(t, kind="stable")
            t, c = t[order], c[order]
        P = self.period
        if self.track:
            self.fed.append((tag, int(t[0]) // P, int(t[-1]) // P))
        keep, closes, restart = self.clock.advance(t)
        if restart:
            self._open_t, self._open_c = [], []
        if keep is not None:
            t, c = t[keep], c[keep]
        frames: list[Frame] = []
        a = 0
        for k, e in closes:
            self._open_t.append(t[a:e])
            self._open_c.append(c[a:e])
            frames += self._close_open_frame(k)
            a = e
        if a < t.size:
            self._open_t.append(t[a:])
            self._open_c.append(c[a:])
        return frames

    def _close_open_frame(self, k: int | None = None) -> list[Frame]:
        """Close the open frame (frame ``k``; default: the clock's, which then moves on)."""
        if k is None:
            if self.clock.current is None or not self._open_t:
                return []
            k = self.clock.current
            self.clock.current += 1
        t = np.concatenate(self._open_t) if len(self._open_t) != 1 else self._open_t[0]
        c = np.concatenate(self._open_c) if len(self._open_c) != 1 else self._open_c[0]
        self._open_t, self._open_c = [], []
        return self._hist_frames(k, 1, t, c)

    def _hist_frames(self, k0: int, n: int, t: np.ndarray, c: np.ndarray) -> list[Frame]:
        """Frames ``k0 .. k0+n-1`` from their time-ordered (by frame) events: one bincount."""
        P, tb, cb = self.period, TIME_BINS, self.cb
        base = k0 * P
        code = (t - base) * tb
        code //= P
        code *= cb
        code += c
        hist = _counts(code, n * tb * cb).reshape(n, 2 * tb, self.mh, self.mw)
        if n == 1:
            counts = [t.size]
        else:
            b = np.searchsorted(t, base + P * np.arange(1, n)).tolist()
            counts = np.diff([0, *b, t.size]).tolist()
        w, h = self.clock.size
        return [Frame(k0 + i, (k0 + i) * P, (k0 + i + 1) * P, None, w, h, hist=hist[i], count=int(counts[i]))
                for i in range(n)]
