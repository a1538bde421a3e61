"""Decode + frame binning of an EventPacket stream: what every node does with its packets.

:class:`FrameBinner` does what per-packet processing does -- stateful decode,
:class:`~edge_vlm.stream.frames.FrameClock` on the absolute grid of period ``P``,
:func:`~edge_vlm.stream.histogram.event_histogram` of every closed frame on the model grid --
with the same results (histograms, event counts, frame indices, clock counters, rejected
packets), but in few vectorised calls per packet. Two backends, same results
(``FrameBinner.backend``; ``backend=`` picks one):

* ``"native"`` (where ``_native/libevbin.so`` is built; :mod:`edge_vlm.stream.binner_native`):
  one call of the C kernel per ``mono`` / ``evt3`` packet of the current stream;
* ``"numpy"`` (no library, or ``EDGE_VLM_NO_NATIVE=1``): a packet gets cheap pure-Python
  checks on arrival (sensor size, encoding, payload length, mono ``time_base`` range) and is
  buffered while it ends inside the open frame (``mono``: the times of its first and last
  words; ``evt3``: the last time words of its tail); any other packet, or
  ``max_batch_bytes`` buffered, decodes the buffer in ONE pass (``mono`` words straight to
  histogram bins by two table look-ups; ``evt3`` through
  :meth:`~edge_vlm.io.codecs.evt3.Evt3Decoder.decode_columns`; other encodings packet by
  packet) and bins the frames it closes with ONE ``bincount`` when that is exact (events
  time-ordered, starting in the open frame, spanning at most ``max_gap_frames``); any other
  batch is replayed packet by packet with the :meth:`FrameClock.advance` rules, and a batch
  that fails to decode is decoded again packet by packet (the malformed packets rejected).

Frames come out as :class:`~edge_vlm.stream.frames.Frame` with ``events=None``, ``hist``
(float32 ``(2*TIME_BINS, model_h, model_w)``, READ-ONLY on both backends: copy it to change
it) and ``count``. ``flicker_min_flips`` > 0 leaves flickering pixels out of every closed frame
(:mod:`edge_vlm.stream.flicker`; both backends). docs/design.md ("Decode + bin") lists the two
documented differences from per-packet binning; tests/test_binner.py checks the rest.
"""
from __future__ import annotations

import time
from collections import deque
from itertools import accumulate

import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError, check_coordinates, check_in_sensor
from edge_vlm.io.codecs import SUPPORTED_ENCODINGS, make_decoder
from edge_vlm.io.codecs.evt3 import WRAP_THRESHOLD_HIGH
from edge_vlm.io.codecs.mono import check_mono_packet, payload_bytes
from edge_vlm.stream import native_evbin as native
from edge_vlm.stream.binner_native import CHECK, CLOSED, NO_STREAM, NativeBinning, payload_pointer
from edge_vlm.stream.flicker import MAX_MIN_FLIPS, flicker_keep
from edge_vlm.stream.frames import Buffered, Decoded, FedPacket, Frame, FrameClock, Rejection
from edge_vlm.stream.histogram import TIME_BINS, BinTables, bin_tables, scale_coords

__all__ = ["FrameBinner", "MAX_BATCH_BYTES", "Rejection", "FedPacket"]

#: buffered payload bytes that force a decode (bounds the latency of a stream whose peek fails)
MAX_BATCH_BYTES = 1 << 17
_TAIL_BYTES = 64             # evt3 peek: the tail scanned in Python for the last time words
_ONES = np.ones(0)           # bincount weights (float64 counts)
_perf = time.perf_counter
_CHECK, _CLOSED = CHECK, CLOSED
_NO_STREAM = NO_STREAM


def _counts(code: np.ndarray, size: int) -> np.ndarray:
    """float32 histogram of ``size`` bins of the integer ``code`` values (all in ``[0, size)``)."""
    global _ONES
    m = code.size
    if _ONES.size < m:
        _ONES = np.ones(max(m, 2 * _ONES.size, 4096))
    # float64 counts (exact) -> float32: cheaper than casting bincount's int64 counts
    return np.bincount(code, _ONES[:m], minlength=size).astype(np.float32)




class FrameBinner(NativeBinning):
    """Decode and bin one EventPacket stream into closed frames (see the module doc).

    ``push`` returns the frames a packet closes (oldest first), ``flush`` closes the open
    frame (end of stream). Rejected packets are counted in ``rejected`` and listed as
    :class:`~edge_vlm.stream.frames.Rejection` in ``rejections`` (drain with
    :meth:`pop_rejections`). With ``track_packets``, ``fed`` lists a
    :class:`~edge_vlm.stream.frames.FedPacket` (tag, first frame, last frame, first event time)
    for every decoded packet with events (drain with :meth:`pop_fed`). ``busy_s``: time spent in
    ``push``/``flush``. ``backend``: None picks ``"native"`` when the kernel loads, else
    ``"numpy"``; ``"native"`` raises RuntimeError when it does not load.
    """

    def __init__(self, period_ns: int, model_width: int = 128, model_height: int = 128,
                 max_gap_frames: int = 30, max_batch_bytes: int = MAX_BATCH_BYTES,
                 track_packets: bool = False, backend: str | None = None,
                 flicker_min_flips: int = 0):
        if not 0 <= int(flicker_min_flips) <= MAX_MIN_FLIPS:
            raise ValueError(f"flicker_min_flips must be in 0..{MAX_MIN_FLIPS}")
        #: the anti-flicker rule (stream/flicker.py; 0: off) and the events it left out
        self.flicker_min_flips, self._flicker_removed = int(flicker_min_flips), 0
        self.clock = FrameClock(period_ns, max_gap_frames)
        self.period = self.clock.period
        self.mw, self.mh = int(model_width), int(model_height)
        self.cb = 2 * self.mh * self.mw        # bins of one time sub-bin (polarity x rows x cols)
        self.max_batch_bytes = int(max_batch_bytes)
        self.track = bool(track_packets)
        self.decoders: dict = {}
        self._packets = self._events = self.rejected = self.unsorted = 0
        self._st = None                                          # native kernel state
        self.fast_path = None        # native backend: "evbinext" or "ctypes" (its per-packet call)
        self.busy_s = 0.0
        self.rejections: deque = deque(maxlen=1000)
        self.fed: list[FedPacket] = []
        self._pend: list[Buffered] = []                          # packets waiting for a decode
        self._pend_key: tuple | None = None                      # (encoding, width, height)
        self._pend_bytes = 0
        self._open_t: list[np.ndarray] = []                      # open frame: event times (ns)
        self._open_c: list[np.ndarray] = []                      # ... and channel-less bins
        self._peek_hi = 0
        # native kernel (edge_vlm.native): the hot path of push() is taken for a packet of the
        # stream (_nenc, _nw, _nh) of the last packet accepted by _npush (_NO_STREAM: none; no
        # argument equals it, not even None x None x None)
        self._nenc = self._nw = self._nh = _NO_STREAM
        if backend not in (None, "native", "numpy"):
            raise ValueError(f"backend must be 'native', 'numpy' or None, not {backend!r}")
        lib = native.load() if backend != "numpy" else None
        if backend == "native" and lib is None:
            raise RuntimeError("the native decode+bin kernel is not available (see "
                               "edge_vlm.native)")
        self.backend = "native" if lib is not None else "numpy"
        self._general = FrameBinner._push    # (a function, not a bound method: no reference cycle)
        if lib is not None:
            self._native_init(lib)

    # ------------------------------------------------------------------ public
    def push(self, encoding: str, data, width: int, height: int, time_base: int = 0,
             tag: object = None) -> list[Frame]:
        """Add one EventPacket; return the frames it closes. Never raises on malformed input."""
        t0 = _perf()
        try:
            if encoding == self._nenc and width == self._nw and height == self._nh:
                # native hot path: a packet of the current stream, as bytes or array('B')
                # (anything else: _CHECK, nothing done); evbinext's builtin or _ctypes_pusher's
                r = self._fast(data, time_base)
                if r >= 0:                              # no frame closed
                    if r and self.track:
                        self._fed_scratch(r, tag)
                    return []
                if r == _CLOSED:                        # one frame closed
                    st = self._st
                    if self.track:
                        self._fed_scratch(st.n, tag)
                    f = self._ntake()
                    self.clock.current = st.cur
                    return [f]
                if r != _CHECK:
                    return self._native_result(r, tag, payload_pointer(data))
            return self._general(self, str(encoding), data, int(width), int(height),
                                 int(time_base), tag)
        finally:
            self.busy_s += _perf() - t0

    def flush(self) -> list[Frame]:
        """Decode what is buffered and close the open frame (end of stream / idle)."""
        t0 = _perf()
        try:
            return self._run() + self._close_open_frame()
        finally:
            self.busy_s += _perf() - t0

    @property
    def packets(self) -> int:
        """Packets pushed."""
        return self._packets + (self._st.packets if self._st is not None else 0)

    @property
    def events(self) -> int:
        """Events decoded (late ones included)."""
        return self._events + (self._st.events if self._st is not None else 0)

    def pop_rejections(self) -> list[Rejection]:
        out = list(self.rejections)
        self.rejections.clear()
        return out

    def pop_fed(self) -> list[FedPacket]:
        out, self.fed = self.fed, []
        return out

    @property
    def flicker_events(self) -> int:
        """Events the anti-flicker rule left out of closed frames."""
        return self._flicker_removed + (self._st.fl_removed if self._st is not None else 0)

    @property
    def late_events(self) -> int:
        return self.clock.late_events

    @property
    def resets(self) -> int:
        return self.clock.resets

    # ------------------------------------------------------------ cheap checks (both backends)
    def _stream_ok(self, enc: str, w: int, h: int, tag) -> bool:
        """Sensor size and encoding of a packet; rejects (and counts) it when they are bad."""
        if w <= 0 or h <= 0:
            self._reject(tag, f"invalid sensor size {w}x{h}")
            return False
        if enc not in SUPPORTED_ENCODINGS:
            self._reject(tag, f"unsupported encoding {enc!r} (supported: "
                              f"{', '.join(SUPPORTED_ENCODINGS)})")
            return False
        return True

    def _payload(self, enc: str, data, w: int, h: int, tb: int, tag) -> np.ndarray | None:
        """The payload as uint8, after the length / mono time_base checks; None (rejected) if
        bad."""
        try:
            buf = np.frombuffer(data, np.uint8) if type(data) is bytes else payload_bytes(data)
            if enc == "mono":
                check_mono_packet(buf.size, tb, w, h)
            elif enc == "evt3" and buf.size % 2:
                raise EventDecodeError(
                    f"evt3: payload of {buf.size} bytes is not a whole number of 16-bit words")
        except EventDecodeError as exc:
            self._reject(tag, str(exc))
            return None
        return buf


    def _sorted_fed(self, t: np.ndarray, c: np.ndarray, tag) -> tuple[np.ndarray, np.ndarray]:
        """A packet's events time-sorted (counted in ``unsorted``), its frame span recorded when
        tracking."""
        if t.size > 1 and bool((t[1:] < t[:-1]).any()):
            self.unsorted += 1
            order = np.argsort(t, kind="stable")
            t, c = t[order], c[order]
        if self.track:
            P = self.period
            self.fed.append(FedPacket(tag, int(t[0]) // P, int(t[-1]) // P, int(t[0])))
        return t, c


    # ------------------------------------------------------------------ arrival
    def _reject(self, tag, reason: str) -> None:
        self.rejected += 1
        self.rejections.append(Rejection(tag, reason))

    def _push(self, enc: str, data, w: int, h: int, tb: int, tag) -> list[Frame]:
        self._packets += 1
        if not self._stream_ok(enc, w, h, tag):
            return []
        key = (enc, w, h)
        frames = self._run() if self._pend and key != self._pend_key else []
        buf = self._payload(enc, data, w, h, tb, tag)
        if buf is None:
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
        self._pend.append(Buffered(buf, tb, tag))
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

    def _tables(self, enc: str, w: int, h: int) -> BinTables:
        return bin_tables(enc, w, h, self.mw, self.mh)

    def _decode(self, enc: str, pend: list[Buffered], w: int, h: int) -> Decoded:
        """Decode buffered packets of one stream in one pass: (t ns, bin, event end per packet).

        Raises :class:`EventDecodeError` (state unchanged) if any of them is malformed."""
        bufs = [p.payload for p in pend]
        raw = bufs[0] if len(bufs) == 1 else np.concatenate(bufs)
        if enc == "mono":
            words = raw.view("<u8")
            half = words.view(np.uint16)
            lx, lyp = self._tables(enc, w, h)
            c = lx.take(half[2::4])
            c += lyp.take(half[3::4])
            if c.size and int(c.min()) < 0:       # a table entry outside the sensor
                check_coordinates(int(half[2::4].max()), int((half[3::4] & 0x7FFF).max()), w, h,
                                  "mono: ")
            t = words.view(np.uint32)[0::2].astype(np.int64)
            counts = [b.size // 8 for b in bufs]
            tbs = [p.time_base for p in pend]
            if min(tbs) == max(tbs):
                t += tbs[0]
            else:
                t += np.repeat(np.array(tbs, dtype=np.int64), counts)
            return Decoded(t, c, list(accumulate(counts)))
        dec = self._decoder(enc)
        try:        # the decoder checks the coordinates (before it commits its state)
            t, y, xp, ev_ends = dec.decode_columns(
                raw, w, h, list(accumulate(b.size for b in bufs)) if len(bufs) > 1 else None)
        finally:
            self._peek_hi = dec._s.time_high
        ly, lxp = self._tables(enc, w, h)
        c = ly.take(y)
        c += lxp.take(xp)
        return Decoded(t, c, ev_ends.tolist() if ev_ends is not None else [t.size])

    def _one_packet(self, enc: str, buf: np.ndarray, w: int, h: int, tb: int, tag) -> list[Frame]:
        """Any other encoding: decode the packet alone into events, then bin it."""
        try:
            ev = np.asarray(self._decoder(enc).decode(buf, w, h, tb))
            if ev.dtype != EVENT_DTYPE:
                ev = ev.astype(EVENT_DTYPE)
            check_in_sensor(ev, w, h)
        except EventDecodeError as exc:
            self._reject(tag, str(exc))
            return []
        self.clock.size = (w, h)
        x, y = scale_coords(ev["x"], ev["y"], w, h, self.mw, self.mh)
        c = (ev["p"].astype(np.int64) * self.mh + y) * self.mw + x
        self._events += len(ev)
        if self.backend == "native":
            return self._nbin_packet(ev["t"].astype(np.int64), c, tag)
        return self._bin_packet(ev["t"].astype(np.int64), c, tag)

    def _run(self) -> list[Frame]:
        """Decode and bin the buffered packets."""
        if not self._pend:
            return []
        pend, self._pend, self._pend_bytes = self._pend, [], 0
        enc, w, h = self._pend_key
        try:
            parts = [(self._decode(enc, pend, w, h), [p.tag for p in pend])]
        except EventDecodeError:
            parts = []                       # a malformed packet inside: packet by packet
            for p in pend:
                try:
                    parts.append((self._decode(enc, [p], w, h), [p.tag]))
                except EventDecodeError as exc:
                    self._reject(p.tag, str(exc))
        frames: list[Frame] = []
        if parts:
            self.clock.size = (w, h)            # as FrameClock.push of an accepted packet
        for (t, c, ends), tags in parts:
            self._events += t.size
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
                    self.fed.append(FedPacket(tag, int(t[a]) // P, int(t[e - 1]) // P, int(t[a])))
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
        """One packet's events through :meth:`FrameClock.advance` (late events, jumps,
        restarts)."""
        if t.size == 0:
            return []
        t, c = self._sorted_fed(t, c, tag)
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
        if self.backend == "native":        # (the numpy path's _bin_packet passes k)
            if self.clock.current is None or not self._st.open_count:
                return []
            k = self.clock.current
            self.clock.current += 1
            self._st.cur = self.clock.current
            return [self._nclose(k)]
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
        keep = flicker_keep((t - base) // P if n > 1 else None, c, self.cb // 2,
                            self.flicker_min_flips) if self.flicker_min_flips else None
        if keep is not None:
            self._flicker_removed += int(keep.size - np.count_nonzero(keep))
            t, c = t[keep], c[keep]
        code = (t - base) * tb
        code //= P
        code *= cb
        code += c
        hist = _counts(code, n * tb * cb).reshape(n, 2 * tb, self.mh, self.mw)
        hist.flags.writeable = False        # read-only, as the native backend's
        if n == 1:
            counts = [t.size]
        else:
            b = np.searchsorted(t, base + P * np.arange(1, n)).tolist()
            counts = np.diff([0, *b, t.size]).tolist()
        w, h = self.clock.size
        return [Frame(k0 + i, (k0 + i) * P, (k0 + i + 1) * P, None, w, h, hist=hist[i],
                      count=int(counts[i]))
                for i in range(n)]
