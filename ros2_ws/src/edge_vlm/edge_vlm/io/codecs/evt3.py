"""Stateful, vectorized decoder for Prophesee EVT 3.0 payloads.

EVT 3.0 is a stream of little-endian 16-bit words; the top 4 bits give the
word type and the low 12 bits its payload:

====  ==============  ======================================================
type  name            payload
====  ==============  ======================================================
0x0   EVT_ADDR_Y      y (bits 0-10), system type (bit 11, ignored)
0x2   EVT_ADDR_X      one CD event: x (bits 0-10), polarity (bit 11)
0x3   VECT_BASE_X     x base (bits 0-10), polarity (bit 11) for vectors
0x4   VECT_12         12 validity bits: events at base..base+11; base += 12
0x5   VECT_8          8 validity bits: events at base..base+7; base += 8
0x6   EVT_TIME_LOW    low 12 bits of the 24-bit microsecond time
0x7   CONTINUED_4     payload continuation (ignored)
0x8   EVT_TIME_HIGH   high 12 bits of the 24-bit microsecond time
0xA   EXT_TRIGGER     value/edge (bit 0), trigger id (bits 8-11)
0xE   OTHERS          (ignored)
0xF   CONTINUED_12    payload continuation (ignored)
====  ==============  ======================================================

Event time in ns = ``((wraps << 24) | (time_high << 12) | time_low) * 1000``
where ``wraps`` counts 24-bit wrap-arounds (every 16.77 s), detected by
``time_high`` jumping backwards by more than :data:`WRAP_THRESHOLD_HIGH`.
This is sensor time; the packet ``time_base`` (host time) is ignored, as in
ros-event-camera/event_camera_codecs.

Like the reference decoder, nothing (CD events or triggers) is emitted until
the stream has a valid time, i.e. a TIME_LOW word following a TIME_HIGH word.

The decoder carries its state (y, time high/low, wrap count, x base,
polarity) across packets, so a stream may be cut at any even byte offset.
A packet is decoded without per-word Python loops, by one of two paths with
identical results: :mod:`.evt3_fast` for the packets of a running stream
without vector words (nearly all of them), :mod:`.evt3_general` for any
other.  :meth:`Evt3Decoder.decode_columns` decodes a frame's worth of joined
packets into plain columns for :class:`~edge_vlm.stream.binner.FrameBinner`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError, check_coordinates
from edge_vlm.io.codecs.evt3_fast import (COLUMNS_MAX_WORDS, FAST_LAYOUT, FAST_MAX_WORDS,
                                          UNKNOWN_BITS, VECTOR_BITS, FastScratch, columns_fast,
                                          decode_fast, fast_scratch)
from edge_vlm.io.codecs.evt3_format import (TRIGGER_DTYPE, UNKNOWN_TYPES, VECT_8, VECT_12,
                                            WRAP_THRESHOLD_HIGH, Evt3Columns, Evt3State,
                                            PacketTally, no_triggers)
from edge_vlm.io.codecs.evt3_general import decode_general
from edge_vlm.io.codecs.mono import payload_bytes

__all__ = ["Evt3Decoder", "Evt3Columns", "TRIGGER_DTYPE", "WRAP_THRESHOLD_HIGH"]

_ONE16 = np.uint16(1)


class _Snapshot(NamedTuple):
    """The decoder's state and counters, to restore after a failed multi-packet decode."""

    state: Evt3State
    events_decoded: int
    triggers_rising: int
    triggers_falling: int
    packets: int


class Evt3Decoder:
    """Stateful EVT 3.0 decoder; feed packets in stream order to :meth:`decode`.

    ``width``/``height`` (optional, here or per call) enable a bounds check:
    a CD event outside the sensor raises :class:`EventDecodeError`.
    Counters: ``events_decoded``, ``triggers_rising``, ``triggers_falling``,
    ``packets``; ``last_triggers`` holds the trigger events (TRIGGER_DTYPE)
    of the last packet.
    """

    encoding = "evt3"

    def __init__(self, width: int | None = None, height: int | None = None) -> None:
        self.width = width
        self.height = height
        self._scratch = np.empty(0, dtype=np.int64)
        self._trigger_src = None
        self._scratch_fast: FastScratch | None = None
        self.reset()

    def reset(self) -> None:
        """Forget all stream state and zero the counters."""
        self._s = Evt3State()
        self.events_decoded = 0
        self.triggers_rising = 0
        self.triggers_falling = 0
        self.packets = 0
        self.last_triggers = no_triggers()

    @property
    def time_us(self) -> int | None:
        """Current unwrapped sensor time in us (None before a valid time)."""
        s = self._s
        if not s.valid:
            return None
        return (s.wraps << 24) | (s.time_high << 12) | s.time_low

    @property
    def last_triggers(self) -> np.ndarray:
        """External trigger events (TRIGGER_DTYPE) of the last decoded packet."""
        if self._trigger_src is not None:
            self._last_triggers, self._trigger_src = self._trigger_src(), None
        return self._last_triggers

    @last_triggers.setter
    def last_triggers(self, trig: np.ndarray) -> None:
        self._last_triggers, self._trigger_src = trig, None

    def _words(self, data, width, height) -> tuple:
        """(width, height, uint16 words) of a payload, with the size and length checks."""
        width = self.width if width is None else int(width)
        height = self.height if height is None else int(height)
        check_coordinates(-1, -1, width, height, "evt3: ")
        buf = np.frombuffer(data, dtype=np.uint8) if type(data) is bytes else payload_bytes(data)
        if buf.size % 2:
            raise EventDecodeError(
                f"evt3: payload of {buf.size} bytes is not a whole number of 16-bit words")
        return width, height, buf.view("<u2")

    def _count(self, tally: PacketTally) -> None:
        """Add a decoded packet to the counters; its triggers become ``last_triggers``."""
        self.events_decoded += tally.events
        self.triggers_rising += tally.rising
        self.triggers_falling += tally.triggers - tally.rising
        self.packets += 1
        if callable(tally.trigger_events):
            self._last_triggers, self._trigger_src = None, tally.trigger_events
        else:
            self._last_triggers, self._trigger_src = tally.trigger_events, None

    def decode(self, data, width: int | None = None, height: int | None = None,
               time_base: int | None = None) -> np.ndarray:
        """Decode one packet (bytes-like / uint8 array) and return its CD events.

        ``time_base`` is accepted for interface symmetry and ignored.  On any
        :class:`EventDecodeError` the decoder state is left unchanged.
        """
        width, height, words = self._words(data, width, height)
        n = words.size
        if n == 0:
            self.packets += 1
            self.last_triggers = no_triggers()
            return np.zeros(0, dtype=EVENT_DTYPE)
        fast = self._s.valid and FAST_LAYOUT and n <= FAST_MAX_WORDS
        if fast:      # typ / val in reused scratch (the general path keeps its own arrays)
            sc = self._scratch_fast = fast_scratch(self._scratch_fast, n)
            typ = np.right_shift(words, 12, out=sc.typ[:n])
            val = np.bitwise_and(words, 0x0FFF, out=sc.val[:n])
        else:
            typ = words >> 12
            val = words & 0x0FFF
        counts = np.bincount(typ, minlength=16)
        c = counts.tolist()
        if c[0x1] or c[0x9] or c[0xB] or c[0xC] or c[0xD]:
            bad = next(k for k in UNKNOWN_TYPES if c[k])
            raise EventDecodeError(f"evt3: unsupported word type 0x{bad:X}")
        out = None
        if fast and not (c[VECT_12] or c[VECT_8]):
            out = decode_fast(self._s, sc, typ, val, c, n, width, height)
        if out is None:
            out = decode_general(self._s, typ, val, counts, width, height, self._int64_scratch(n))
        ev, tally = out
        self._count(tally)
        return ev

    def _int64_scratch(self, n: int) -> np.ndarray:
        """``n`` int64 of a reused buffer (avoids page faults on large packets)."""
        if self._scratch.size < n:
            self._scratch = np.empty(max(n, 2 * self._scratch.size), dtype=np.int64)
        return self._scratch[:n]

    def decode_columns(self, data, width: int | None = None, height: int | None = None,
                       ends=None) -> Evt3Columns:
        """Decode like :meth:`decode` (same events, errors, state and counters) into columns.

        Returns ``(t, y, xp, ends)``: int64 arrays of the event times (ns), rows and
        ``x | p << 11`` (x in bits 0-10, polarity in bit 11, as in EVT_ADDR_X; a vector
        running past x = 2047, which only a sensor wider than EVT 3.0 can address and
        :meth:`decode` accepts, raises :class:`EventDecodeError` here), and, when
        ``ends`` (the byte offset where each of several joined packets ends) is given, the
        event index where each packet's events end (else None). Raises
        :class:`EventDecodeError` like :meth:`decode`, leaving the state unchanged.
        """
        width, height, words = self._words(data, width, height)
        typ = words >> 12
        present = int(np.bitwise_or.reduce(np.left_shift(_ONE16, typ))) if words.size else 0
        if present & UNKNOWN_BITS:
            bad = present & UNKNOWN_BITS
            raise EventDecodeError(
                f"evt3: unsupported word type 0x{(bad & -bad).bit_length() - 1:X}")
        out = None
        if self._s.valid and not present & VECTOR_BITS and words.size <= COLUMNS_MAX_WORDS:
            out = columns_fast(self._s, words, typ, present, width, height, ends)
        if out is None:
            return self._columns_general(words.view(np.uint8), width, height, ends)
        cols, tally = out
        self._count(tally)
        return cols

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(self._s.copy(), self.events_decoded, self.triggers_rising,
                         self.triggers_falling, self.packets)

    def _restore(self, saved: _Snapshot) -> None:
        (self._s, self.events_decoded, self.triggers_rising, self.triggers_falling,
         self.packets) = saved

    def _columns_general(self, buf, width, height, ends) -> Evt3Columns:
        """Columns via :meth:`decode`, packet by packet when ``ends`` is given (state restored
        on error)."""
        cuts = [0, *(int(e) for e in ends)] if ends is not None else [0, buf.size]
        saved = self._snapshot()
        evs, trigs = [], []
        try:
            for a, b in zip(cuts, cuts[1:]):
                evs.append(self.decode(buf[a:b], width, height))
                trigs.append(self.last_triggers)
        except EventDecodeError:
            self._restore(saved)
            raise
        if len(evs) > 1:
            self.packets = saved.packets + 1
            self.last_triggers = np.concatenate(trigs)
        ev = np.concatenate(evs) if evs else np.zeros(0, dtype=EVENT_DTYPE)
        if len(ev) and int(ev["x"].max()) > 0x7FF:     # x | p << 11 cannot hold it
            self._restore(saved)
            raise EventDecodeError(
                f"evt3: x={int(ev['x'].max())} beyond 11 bits (vector past x=2047)")
        xp = ev["x"].astype(np.int64)
        xp |= ev["p"].astype(np.int64) << 11
        counts = np.cumsum([len(e) for e in evs]) if ends is not None else None
        return Evt3Columns(ev["t"].copy(), ev["y"].astype(np.int64), xp, counts)
