"""event_camera_msgs ``mono`` EventPacket encoding (vectorized numpy).

One little-endian uint64 per event::

    bit 63      polarity (1 = ON)
    bits 48-62  y (15 bits)
    bits 32-47  x (16 bits)
    bits 0-31   time offset in ns from the packet's ``time_base``

Event time (int64 ns) = ``time_base + offset``.
"""
from __future__ import annotations

import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError, check_coordinates

__all__ = ["encode_mono", "decode_mono", "check_mono_packet", "payload_bytes"]

_U64 = np.dtype("<u8")


def payload_bytes(data) -> np.ndarray:
    """View a bytes-like payload (bytes, bytearray, memoryview, ndarray) as uint8."""
    try:
        if isinstance(data, np.ndarray):
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise EventDecodeError(f"payload is not a bytes-like buffer: {exc}") from exc


def encode_mono(events: np.ndarray, time_base: int) -> bytes:
    """Encode an :data:`EVENT_DTYPE` array relative to ``time_base`` (ns).

    Raises :class:`EventDecodeError` if a time offset is negative or does not
    fit in 32 bits, or if a coordinate does not fit its bit field.
    """
    ev = np.asarray(events)
    if len(ev) == 0:
        return b""
    off = ev["t"].astype(np.int64) - np.int64(time_base)
    if int(off.min()) < 0 or int(off.max()) > 0xFFFFFFFF:
        raise EventDecodeError(
            f"mono: time offsets [{int(off.min())}, {int(off.max())}] ns from "
            f"time_base {time_base} do not fit in 32 unsigned bits")
    if int(ev["y"].max()) > 0x7FFF:
        raise EventDecodeError("mono: y does not fit in 15 bits")
    words = (off.astype(np.uint64)
             | (ev["x"].astype(np.uint64) << np.uint64(32))
             | (ev["y"].astype(np.uint64) << np.uint64(48))
             | ((ev["p"] != 0).astype(np.uint64) << np.uint64(63)))
    return words.astype(_U64, copy=False).tobytes()


def check_mono_packet(nbytes: int, time_base: int, width: int, height: int) -> None:
    """The per-packet checks of :func:`decode_mono` that need no decoding (cheap, pure Python).

    Raises :class:`EventDecodeError` for a zero sensor size, a ``time_base`` whose event
    times would not fit int64 ns, or a payload length that is not a multiple of 8.
    """
    check_coordinates(-1, -1, width, height, "mono: ")
    if not -(1 << 63) <= time_base <= (1 << 63) - 1 - 0xFFFFFFFF:   # int64 ns, no wrap
        raise EventDecodeError(
            f"mono: time_base {time_base} ns is outside the int64 event time range")
    if nbytes % 8:
        raise EventDecodeError(
            f"mono: payload of {nbytes} bytes is not a multiple of 8 (truncated)")


def decode_mono(data, time_base: int, width: int, height: int) -> np.ndarray:
    """Decode a ``mono`` payload (bytes-like or uint8 array) to events.

    Raises :class:`EventDecodeError` for a truncated payload (length not a
    multiple of 8), a zero sensor size, coordinates outside ``width`` x
    ``height``, or a ``time_base`` whose event times would not fit int64 ns.
    """
    width, height, time_base = int(width), int(height), int(time_base)
    buf = payload_bytes(data)
    check_mono_packet(buf.size, time_base, width, height)
    w = buf.view(_U64)
    ev = np.empty(w.size, dtype=EVENT_DTYPE)
    if w.size == 0:
        return ev
    x = (w >> np.uint64(32)).astype(np.uint16)          # keeps the low 16 bits
    y = ((w >> np.uint64(48)) & np.uint64(0x7FFF)).astype(np.uint16)
    check_coordinates(int(x.max()), int(y.max()), width, height, "mono: ")
    ev["t"] = (w & np.uint64(0xFFFFFFFF)).astype(np.int64) + np.int64(time_base)
    ev["x"] = x
    ev["y"] = y
    ev["p"] = (w >> np.uint64(63)).astype(np.uint8)
    return ev
