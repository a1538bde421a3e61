"""Decode + frame binning of an EventPacket stream (what the nodes run).

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

Two backends, same results (``FrameBinner.backend``; ``backend=`` picks one):

* ``"native"`` (the default where ``_native/libevbin.so`` is built, see
  :mod:`edge_vlm.native`): ``mono`` / ``evt3`` packets of the current stream
  (bytes or rclpy's ``array('B')``) go through ONE call of the kernel each, no
  buffering (a builtin function of the small ``evbinext`` extension where it is
  built, else ctypes; ctypes for the rare calls; ``FrameBinner.fast_path``):
  evbin.c decodes them (a stateful EVT 3.0 decoder of the same semantics as
  :mod:`edge_vlm.codecs.evt3`) into scratch columns (t, bin) and, when the
  packet is time-ordered, starts in the open frame and spans at most
  ``max_gap_frames``, counts them into the open frame, closing frames into
  float32 output histograms; any other packet is binned here with the
  :meth:`FrameClock.advance` rules on the same open frame, and a packet the
  kernel finds malformed is handed to the numpy decoder for its rejection
  message. Output histograms are handed out read-only and reused for later
  frames once no one references them (nor a view of them); the kernel knows
  which bins it wrote into a buffer last time and zeroes just those (no 256 KB
  memset per frame on a sparse stream).
* ``"numpy"`` (no library, or ``EDGE_VLM_NO_NATIVE=1``): as follows.

Frames come out as :class:`~edge_vlm.pipeline.Frame` with ``events=None``,
``hist`` (float32 ``(2*TIME_BINS, model_h, model_w)``, READ-ONLY on both
backends: copy it to change it) and ``count``.
Differences from per-packet binning (tests/test_binner.py checks the rest):
each packet's coordinates are scaled with that packet's sensor size (the
per-packet path scales a frame with the size of the last packet pushed: they
differ only if the sensor size changes inside a frame); an evt3 vector running
past x = 2047 (possible only on a sensor wider than EVT 3.0 addresses) rejects
the packet. The numpy backend reports a malformed packet buffered in a batch
when the batch is decoded, the native one at once.
"""
from __future__ import annotations

import array
import ctypes
import sys
import time
from collections import deque
from itertools import accumulate

import numpy as np

from edge_vlm.stream import native_evbin as native
from edge_vlm.io.codecs import SUPPORTED_ENCODINGS, make_decoder
from edge_vlm.io.codecs.evt3 import WRAP_THRESHOLD_HIGH
from edge_vlm.io.codecs.mono import check_mono_packet, payload_bytes
from edge_vlm.events import EVENT_DTYPE, EventDecodeError
from edge_vlm.stream.frames import Frame, FrameClock
from edge_vlm.stream.histogram import TIME_BINS, scale_coords

__all__ = ["FrameBinner", "MAX_BATCH_BYTES"]

#: buffered payload bytes that force a decode (bounds the latency of a stream whose peek fails)
MAX_BATCH_BYTES = 1 << 17
_BAD = -(1 << 30)            # table entry of an out-of-sensor coordinate: makes the bin negative
_TAIL_BYTES = 64             # evt3 peek: the tail scanned in Python for the last time words
_ONES = np.ones(0)           # bincount weights (float64 counts)
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_perf = time.perf_counter
_Array = array.array
_VoidP = ctypes.c_void_p
_refcount = sys.getrefcount
_POOL = 8                    # output histograms kept for reuse (native backend)
_LIST_FRACTION = 16          # an output buffer lists up to 1/16 of its bins (then: memset)
_LUTS: dict = {}             # FrameBinner._tables, by (encoding, sensor w, h, model w, h)
_CHECK, _CLOSED = native.EVB_CHECK, native.EVB_CLOSED
_NO_STREAM = object()


def _address(a: np.ndarray) -> int:
    """Address of a writable, C-contiguous array's data (cheaper than ``a.ctypes.data``)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(a))


def _counts(code: np.ndarray, size: int) -> np.ndarray:
    """float32 histogram of ``size`` bins of the integer ``code`` values (all in ``[0, size)``)."""
    global _ONES
    m = code.size
    if _ONES.size < m:
        _ONES = np.ones(max(m, 2 * _ONES.size, 4096))
    # float64 counts (exact) -> float32: cheaper than casting bincount's int64 counts
    return np.bincount(code, _ONES[:m], minlength=size).astype(np.float32)


def _payload_ptr(data):
    """evbin_push's payload argument for ctypes: bytes as is, array('B') by address."""
    return data if type(data) is bytes else _VoidP(data.buffer_info()[0])


def _ctypes_pusher(st, stref, f_push):
    """evbinext's ``push(data, time_base)`` through ctypes (where the extension is not built)."""
    def push(data, time_base):
        if type(data) is bytes:
            ptr, nb = data, len(data)
        elif type(data) is _Array and data.typecode == "B":
            ptr, nb = data.buffer_info()
            ptr = _VoidP(ptr)
        else:
            return _CHECK
        try:
            if _I64_MIN <= time_base <= _I64_MAX:       # (ctypes would wrap it)
                st.nbytes, st.time_base = nb, time_base
                return f_push(stref, ptr)
        except TypeError:                               # time_base is no integer
            pass
        return _CHECK
    return push


class FrameBinner:
    """Decode and bin one EventPacket stream into closed frames (see the module doc).

    ``push`` returns the frames a packet closes (oldest first), ``flush`` closes the open
    frame (end of stream). Rejected packets are counted in ``rejected`` and listed as
    ``(tag, reason)`` in ``rejections`` (drain with :meth:`pop_rejections`). With
    ``track_packets``, ``fed`` lists ``(tag, first frame, last frame)`` of every decoded
    packet with events (drain with :meth:`pop_fed`). ``busy_s``: time spent in
    ``push``/``flush``. ``backend``: None picks ``"native"`` when the kernel loads, else
    ``"numpy"``; ``"native"`` raises RuntimeError when it does not load.
    """

    def __init__(self, period_ns: int, model_width: int = 128, model_height: int = 128,
                 max_gap_frames: int = 30, max_batch_bytes: int = MAX_BATCH_BYTES,
                 track_packets: bool = False, backend: str | None = None):
        self.clock = FrameClock(period_ns, max_gap_frames)
        self.period = self.clock.period
        self.mw, self.mh = int(model_width), int(model_height)
        self.cb = 2 * self.mh * self.mw        # bins of one time sub-bin (polarity x rows x columns)
        self.max_batch_bytes = int(max_batch_bytes)
        self.track = bool(track_packets)
        self.decoders: dict = {}
        self._packets = self._events = self.rejected = self.unsorted = 0
        self._st = None                                          # native kernel state
        self.fast_path = None        # native backend: "evbinext" or "ctypes" (its per-packet call)
        self.busy_s = 0.0
        self.rejections: deque = deque(maxlen=1000)
        self.fed: list[tuple[object, int, int]] = []
        self._pend: list[tuple[np.ndarray, int, object]] = []     # (payload uint8, time_base, tag)
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
            raise RuntimeError("the native decode+bin kernel is not available (see edge_vlm.native)")
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
                    return self._native_result(r, tag, _payload_ptr(data))
            return self._general(self, str(encoding), data, int(width), int(height), int(time_base), tag)
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

    # ------------------------------------------------------------------ cheap checks (both backends)
    def _stream_ok(self, enc: str, w: int, h: int, tag) -> bool:
        """Sensor size and encoding of a packet; rejects (and counts) it when they are bad."""
        if w <= 0 or h <= 0:
            self._reject(tag, f"invalid sensor size {w}x{h}")
            return False
        if enc not in SUPPORTED_ENCODINGS:
            self._reject(tag, f"unsupported encoding {enc!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
            return False
        return True

    def _payload(self, enc: str, data, w: int, h: int, tb: int, tag) -> np.ndarray | None:
        """The payload as uint8, after the length / mono time_base checks; None (rejected) if bad."""
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

    # ------------------------------------------------------------------ native kernel
    # One call of evbin.c (evbin_push: evbinext's builtin, else ctypes) per packet decodes it
    # into two scratch columns (t, channel-less bin) and, when exact, counts them into the open
    # frame (kept in C: uint32 counts + the bins touched), closing frames into output buffers
    # given from here (read-only histograms, pooled: see _new_hist); no buffering. The rest --
    # rejection messages (the numpy decoder's), the FrameClock rules for late events / jumps /
    # unsorted packets (evbin_add / evbin_close / evbin_discard on the same open frame), other
    # encodings, empty packets -- stays in Python.
    def _native_init(self, lib) -> None:
        self._lib = lib
        self._f_push, self._f_resume = lib.evbin_push, lib.evbin_resume
        st = self._st = native.EvbinState()
        self._stp = ctypes.addressof(st)             # for the calls with argtypes
        self._stref = ctypes.byref(st)               # for evbin_push / evbin_resume
        st.period, st.max_gap, st.cb = self.period, self.clock.max_gap, self.cb
        st.olcap = self._olcap = 2 * self.cb // _LIST_FRACTION
        ext = native.load_ext()
        # push(data, time_base) -> evbin_push's code: the extension's builtin bound to the state
        # (it keeps `st` alive), else the same in Python with ctypes
        self._fast = (ext.pusher(self._stp, st, _Array) if ext is not None
                      else _ctypes_pusher(st, self._stref, self._f_push))
        self.fast_path = "evbinext" if ext is not None else "ctypes"
        self._acc = np.zeros(2 * self.cb, dtype=np.uint32)        # the open frame's counts
        self._touched = np.empty(2 * self.cb + 1, dtype=np.int32)   # (+1: evbin.c's branchless append)
        st.acc, st.touched = _address(self._acc), _address(self._touched)
        self._pool: list = []                # (histogram, address, root) of _new_hist, newest last
        self._out = None                     # output histogram of the next frame to close
        self._set_out()
        self._t = self._c = None
        self._grow(4096)
        self._nluts: dict = {}
        self._general = FrameBinner._npush

    def _new_hist(self) -> tuple[np.ndarray, int, np.ndarray]:
        """An output buffer for the next frame to close: ``(hist, address, root)``.

        ``root`` (float32) holds the histogram (``hist``: a read-only view of its head, what
        the frame hands out), then evbin.c's int32 header and list of the bins it wrote last
        (see evbin.c): on reuse the kernel zeroes just those. Nobody outside can change the
        buffer: ``root`` is read-only too, so a view of ``hist`` cannot be made writable.
        A buffer is reused once nothing references it any more (``sys.getrefcount``: only
        the pool's tuple on ``hist``; that tuple and ``hist``'s base on ``root``, so no view
        of it is alive either). Called as a frame is handed out: the buffer of the frame
        before it is likely free by then. A new buffer is all zeros (header 0)."""
        pool = self._pool
        if len(pool) > 1:
            for j in (-2, 0):                      # the frame before the last one, the oldest
                ent = pool[j]
                # references: the pool's tuple and the argument (+ hist.base for root)
                if _refcount(ent[0]) == 2 and _refcount(ent[2]) == 3:
                    del pool[j]
                    pool.append(ent)
                    return ent
        n = 2 * self.cb
        root = np.zeros(n + 1 + self._olcap, dtype=np.float32)
        h = root[:n].reshape(2 * TIME_BINS, self.mh, self.mw)
        ent = (h, _address(root), root)
        h.flags.writeable = root.flags.writeable = False
        if len(pool) >= _POOL:
            del pool[0]                            # still referenced: left to its holder
        pool.append(ent)
        return ent

    def _set_out(self) -> None:
        self._out, self._st.out, _ = self._new_hist()

    def _grow(self, n: int) -> None:
        st = self._st
        cap = max(int(n), 2 * st.cap, 4096)
        self._t, self._c = np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int32)
        st.t, st.c, st.cap = _address(self._t), _address(self._c), cap

    def _native_stream(self, enc: str, w: int, h: int) -> None:
        """Point the kernel at the coordinate tables (and sensor size) of the stream (enc, w, h)."""
        key = (enc, w, h)
        ent = self._nluts.get(key)
        if ent is None:
            a, b = self._tables(enc, w, h)
            if len(self._nluts) >= 8:          # (only the entry installed below is in use)
                self._nluts.pop(next(iter(self._nluts)))
            ent = self._nluts[key] = (a, b, a.ctypes.data, b.ctypes.data)
        st = self._st
        st.lut_a, st.lut_b, st.width, st.height, st.mono = ent[2], ent[3], w, h, enc == "mono"

    def _npush(self, enc: str, data, w: int, h: int, tb: int, tag) -> list[Frame]:
        """push() of the native backend, the general case: any payload type, empty payloads,
        a new stream (encoding / sensor size), packets failing the cheap checks."""
        self._packets += 1
        self._nenc = _NO_STREAM            # the hot path again once a packet is accepted here
        if not self._stream_ok(enc, w, h, tag):
            return []
        buf = self._payload(enc, data, w, h, tb, tag)
        if buf is None:
            return []
        if enc not in ("mono", "evt3"):
            return self._one_packet(enc, buf, w, h, tb, tag)
        if buf.size == 0:
            self.clock.size = (w, h)
            cur = self.clock.current
            if enc == "mono" and cur is not None and self._st.open_count and tb >= (cur + 1) * self.period:
                return self._close_open_frame()     # an empty mono packet carries sensor time
            return []
        buf = np.ascontiguousarray(buf)
        self._native_stream(enc, w, h)
        ptr = _VoidP(buf.ctypes.data)
        st = self._st
        st.nbytes, st.time_base = buf.size, (tb if enc == "mono" else 0)   # (evt3 ignores it)
        self._packets -= 1                 # counted by the kernel
        r = self._f_push(self._stref, ptr)
        if r == _CHECK:
            raise RuntimeError("edge_vlm native kernel: evbin_push refused a checked packet")
        rejected = self.rejected
        frames = self._native_result(r, tag, ptr, size=(w, h))
        if self.rejected == rejected:
            self._nenc, self._nw, self._nh = enc, w, h
        return frames

    def _native_result(self, r: int, tag, ptr, size=None) -> list[Frame]:
        """The frames of evbin_push's return code ``r`` < 0 (``ptr``: its payload argument, to
        call again; ``size``: set the clock's sensor size once the packet is accepted)."""
        st = self._st
        while r == native.EVB_GROW:
            self._grow(st.need)
            r = self._f_push(self._stref, ptr)
        if r == native.EVB_BAD:
            return self._native_bad(ptr, st.nbytes, st.time_base, tag)
        if size is not None:
            self.clock.size = size
        n = st.n
        if r == native.EVB_SLOW:
            return self._nbin_packet(self._t[:n], self._c[:n], tag)
        if n and self.track:
            self._fed_scratch(n, tag)
        if r >= 0:                                 # no frame closed (after EVB_GROW / from _npush)
            return []
        frames: list[Frame] = []
        while r < 0:
            if r == native.EVB_NO_OUT:             # a frame closes: give it an output buffer
                self._set_out()
            else:
                frames.append(self._ntake())
                if r != native.EVB_CLOSED_MORE:
                    if r != native.EVB_CLOSED:
                        raise RuntimeError(f"edge_vlm native kernel: unexpected return code {r}")
                    break
            r = self._f_resume(self._stref)
        self.clock.current = st.cur
        return frames

    def _native_bad(self, ptr, nb: int, tb: int, tag) -> list[Frame]:
        """A packet the kernel found malformed: the numpy decoder (same state) says why."""
        buf = np.frombuffer(ptr if type(ptr) is bytes else (ctypes.c_char * nb).from_address(ptr.value), np.uint8)
        enc, (w, h) = ("mono" if self._st.mono else "evt3"), (self._st.width, self._st.height)
        if enc == "evt3":
            self._evt3_to_numpy()
        try:
            t, c, _ = self._decode(enc, [(buf, tb, tag)], w, h)
        except EventDecodeError as exc:
            self._reject(tag, str(exc))
            return []
        # the kernel and numpy disagree (a bug): keep numpy's verdict, so results stay the same
        if enc == "evt3":
            self._evt3_from_numpy()
        self.clock.size = (w, h)
        self._events += t.size
        return self._nbin_packet(t, c.astype(np.int32), tag)

    def _evt3_to_numpy(self) -> None:
        s, st = self._decoder("evt3")._s, self._st
        s.y, s.time_low, s.time_high, s.wraps = st.y, st.time_low, st.time_high, st.wraps
        s.base_x, s.pol, s.seen_high, s.valid = st.base_x, st.pol, bool(st.seen_high), bool(st.valid)

    def _evt3_from_numpy(self) -> None:
        s, st = self._decoder("evt3")._s, self._st
        st.y, st.time_low, st.time_high, st.wraps = s.y, s.time_low, s.time_high, s.wraps
        st.base_x, st.pol, st.seen_high, st.valid = s.base_x, s.pol, int(s.seen_high), int(s.valid)

    def _fed_scratch(self, n: int, tag) -> None:
        """fed entry of a packet binned by the kernel (its events are time-ordered in the scratch)."""
        P = self.period
        self.fed.append((tag, int(self._t[0]) // P, int(self._t[n - 1]) // P))

    def _ntake(self) -> Frame:
        """The frame the kernel just closed (into ``_out``; a new output buffer is set)."""
        st, hist, pool = self._st, self._out, self._pool
        ent = pool[-2] if len(pool) > 1 else None
        # the common case of _new_hist inline: the previous frame's buffer is free again
        if ent is not None and _refcount(ent[0]) == 2 and _refcount(ent[2]) == 3:
            pool[-2] = pool[-1]                # (the buffer of this frame)
            pool[-1] = ent
        else:
            ent = self._new_hist()
        self._out = ent[0]
        st.out = ent[1]
        k = st.closed_k
        w, h = self.clock.size
        P = self.period
        return Frame(k, k * P, (k + 1) * P, None, w, h, hist, st.closed_count)

    def _nclose(self, k: int) -> Frame:
        if self._lib.evbin_close(self._stp, k) != 0:
            raise RuntimeError("edge_vlm native kernel: evbin_close failed")
        return self._ntake()

    def _sorted_fed(self, t: np.ndarray, c: np.ndarray, tag) -> tuple[np.ndarray, np.ndarray]:
        """A packet's events time-sorted (counted in ``unsorted``), its frame span recorded when tracking."""
        if t.size > 1 and bool((t[1:] < t[:-1]).any()):
            self.unsorted += 1
            order = np.argsort(t, kind="stable")
            t, c = t[order], c[order]
        if self.track:
            P = self.period
            self.fed.append((tag, int(t[0]) // P, int(t[-1]) // P))
        return t, c

    def _nbin_packet(self, t: np.ndarray, c: np.ndarray, tag) -> list[Frame]:
        """:meth:`_bin_packet` on the kernel's open frame: the FrameClock rules in Python."""
        if t.size == 0:
            return []
        t, c = self._sorted_fed(t, c, tag)
        P = self.period
        clock, st, lib = self.clock, self._st, self._lib
        keep, closes, restart = clock.advance(t)
        if restart:
            lib.evbin_discard(self._stp)
        if keep is not None:
            t, c = t[keep], c[keep]
        t = np.ascontiguousarray(t, dtype=np.int64)
        c = np.ascontiguousarray(c, dtype=np.int32)
        tp, cp = t.ctypes.data, c.ctypes.data
        frames: list[Frame] = []
        a = 0
        for k, e in closes:
            if e > a and lib.evbin_add(self._stp, tp, cp, a, e, k) != 0:
                raise RuntimeError("edge_vlm native kernel: events outside their frame")
            frames.append(self._nclose(k))
            a = e
        if a < t.size and lib.evbin_add(self._stp, tp, cp, a, t.size, clock.current) != 0:
            raise RuntimeError("edge_vlm native kernel: events outside their frame")
        st.has_cur, st.cur = 1, clock.current
        return frames

    # ------------------------------------------------------------------ arrival
    def _reject(self, tag, reason: str) -> None:
        self.rejected += 1
        self.rejections.append((tag, reason))

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
        the sensor): mono (x, y | p << 15); evt3 (y, x | p << 11). Shared by all binners."""
        key = (enc, w, h, self.mw, self.mh)
        lut = _LUTS.get(key)
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
            for a in lut:
                a.flags.writeable = False
            if len(_LUTS) >= 32:
                _LUTS.pop(next(iter(_LUTS)))
            _LUTS[key] = lut
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
        t, c = self._sorted_fed(t, c, tag)
        P = self.period
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
        return [Frame(k0 + i, (k0 + i) * P, (k0 + i + 1) * P, None, w, h, hist=hist[i], count=int(counts[i]))
                for i in range(n)]
