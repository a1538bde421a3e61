"""The native backend of :class:`~edge_vlm.stream.binner.FrameBinner`: one call of the C kernel
``_native/evbin.c`` per EventPacket (see :mod:`edge_vlm.stream.native_evbin` for the loader).

One call (evbin_push: the ``evbinext`` extension's builtin, else ctypes) decodes a packet into
two scratch columns (t, channel-less bin) and, when exact (time-ordered, starting in the open
frame, spanning at most ``max_gap_frames``), counts them into the open frame (kept in C: uint32
counts + the bins touched), closing frames into output histograms given from here (read-only,
pooled: see :meth:`NativeBinning._new_hist`); no buffering. The rest -- rejection messages (the
numpy decoder's), the FrameClock rules for late events / jumps / unsorted packets (evbin_add /
evbin_close / evbin_discard on the same open frame), other encodings, empty packets -- stays in
Python. Output histograms are reused once nothing references them (nor a view of them); the
kernel knows which bins it wrote into a buffer last time and zeroes just those.
"""
from __future__ import annotations

import array
import ctypes
import sys
from typing import NamedTuple

import numpy as np

from edge_vlm.events import EventDecodeError
from edge_vlm.stream import native_evbin as native
from edge_vlm.stream.frames import Buffered, FedPacket, Frame
from edge_vlm.stream.histogram import TIME_BINS

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_Array = array.array
_VoidP = ctypes.c_void_p
_refcount = sys.getrefcount
_POOL = 8                    # output histograms kept for reuse
_LIST_FRACTION = 16          # an output buffer lists up to 1/16 of its bins (then: memset)
CHECK, CLOSED = native.EVB_CHECK, native.EVB_CLOSED
_CHECK = CHECK
#: a stream no packet matches (not even None x None x None): the hot path is off
NO_STREAM = object()


class PooledHist(NamedTuple):
    """An output buffer of the pool: the read-only histogram a frame hands out, the address the
    kernel writes to, and the float32 root array holding both (see
    :meth:`NativeBinning._new_hist`)."""

    hist: np.ndarray
    address: int
    root: np.ndarray


def _address(a: np.ndarray) -> int:
    """Address of a writable, C-contiguous array's data (cheaper than ``a.ctypes.data``)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(a))




def payload_pointer(data):
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




class NativeBinning:
    """The native-kernel methods of FrameBinner (a mixin: FrameBinner holds the state)."""

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
        # (+1: evbin.c's branchless append)
        self._touched = np.empty(2 * self.cb + 1, dtype=np.int32)
        st.acc, st.touched = _address(self._acc), _address(self._touched)
        if self.flicker_min_flips:           # anti-flicker state (evbin.c; stream/flicker.py)
            self._fl = np.zeros(self.cb // 2, dtype=np.uint8)
            st.fl_state = _address(self._fl)
            st.fl_min = self.flicker_min_flips
        self._pool: list = []                # (histogram, address, root) of _new_hist, newest last
        self._out = None                     # output histogram of the next frame to close
        self._set_out()
        self._t = self._c = None
        self._grow(4096)
        self._nluts: dict = {}
        self._general = NativeBinning._npush

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
        """Point the kernel at the coordinate tables (and sensor size) of the stream (enc, w,
        h)."""
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
        self._nenc = NO_STREAM            # the hot path again once a packet is accepted here
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
            if enc == "mono" and cur is not None and self._st.open_count \
                    and tb >= (cur + 1) * self.period:
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
        raw = ptr if type(ptr) is bytes else (ctypes.c_char * nb).from_address(ptr.value)
        buf = np.frombuffer(raw, np.uint8)
        enc, (w, h) = ("mono" if self._st.mono else "evt3"), (self._st.width, self._st.height)
        if enc == "evt3":
            self._evt3_to_numpy()
        try:
            t, c, _ = self._decode(enc, [Buffered(buf, tb, tag)], w, h)
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
        s.base_x, s.pol = st.base_x, st.pol
        s.seen_high, s.valid = bool(st.seen_high), bool(st.valid)

    def _evt3_from_numpy(self) -> None:
        s, st = self._decoder("evt3")._s, self._st
        st.y, st.time_low, st.time_high, st.wraps = s.y, s.time_low, s.time_high, s.wraps
        st.base_x, st.pol, st.seen_high, st.valid = s.base_x, s.pol, int(s.seen_high), int(s.valid)

    def _fed_scratch(self, n: int, tag) -> None:
        """fed entry of a packet binned by the kernel (its events are time-ordered in the
        scratch)."""
        P, t0 = self.period, int(self._t[0])
        self.fed.append(FedPacket(tag, t0 // P, int(self._t[n - 1]) // P, t0))

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

    def _nbin_packet(self, t: np.ndarray, c: np.ndarray, tag) -> list[Frame]:
        """:meth:`_bin_packet` on the kernel's open frame: the FrameClock rules in Python."""
        if t.size == 0:
            return []
        t, c = self._sorted_fed(t, c, tag)
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

