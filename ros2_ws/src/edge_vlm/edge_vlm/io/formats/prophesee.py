"""Prophesee / Metavision files: RAW (EVT 2.0, EVT 3.0) and DAT (CD events).

Both start with an ASCII header of lines beginning with ``%`` (e.g.
``% date ...``, ``% evt 3.0``, ``% format EVT3;height=720;width=1280``,
``% geometry 1280x720``, ``% Width 304`` / ``% Height 240``, ``% Version 2``);
newer files end it with ``% end``, older ones at the first byte that is not
``%``.

RAW EVT 3.0: the payload is one EVT 3.0 word stream, decoded by
:class:`edge_vlm.io.codecs.evt3.Evt3Decoder` (sensor time, 24-bit wraps unwrapped).

RAW EVT 2.0: little-endian 32-bit words, type in bits 28-31:

====  ===========  ========================================================
type  name         payload
====  ===========  ========================================================
0x0   CD_OFF       t low 6 bits (22-27), x (11-21), y (0-10)
0x1   CD_ON        same
0x8   TIME_HIGH    bits 6..33 of the us time stamp (bits 0-27)
0xA   EXT_TRIGGER  t low 6 bits (22-27), id (8-12), value (bit 0)
0xE   OTHERS       ignored
0xF   CONTINUED    ignored
====  ===========  ========================================================

``t_us = (time_high << 6) | t_low``; CD events before the first TIME_HIGH
have no valid time and are dropped (as for EVT 3.0).  Any other type raises.

DAT (``.dat``, "EVT 2D" CD files): after the header one byte event type and
one byte event size (must be 8), then 8-byte little-endian events: ``uint32
t`` (us, unwrapped at 2**32) and ``uint32`` with x in bits 0-13, y in 14-27,
polarity in 28-31 (non-zero = ON).

Sensor size comes from the header; without one it is inferred as max + 1
(``info["size_source"] == "inferred"``).  Events outside a header size raise
:class:`~edge_vlm.events.EventDecodeError`.  Coordinates are stored with the
origin at the top-left, which is this project's convention (no flip).
"""
from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError
from edge_vlm.io.codecs.evt3 import Evt3Decoder
from edge_vlm.io.formats.common import ReadResult, sensor_size, unwrap_u32

__all__ = ["PercentHeader", "HeaderSize", "parse_header", "decode_raw", "read_raw", "decode_dat",
           "read_dat", "write_raw_evt2", "write_raw_evt3", "write_dat", "decode_evt2"]

_MAX_HEADER_LINES = 10_000
_GEOM_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
_INT_RE = re.compile(r"^\s*(\d+)\s*$")


class PercentHeader(NamedTuple):
    """The ``%`` header of a RAW / DAT file."""

    keys: dict[str, str]      # the first word of each line (lower case) -> the rest
    lines: list[str]          # every line, without the ``%``
    offset: int               # where the data starts


class HeaderSize(NamedTuple):
    """The sensor size a header gives (None: not given)."""

    width: int | None
    height: int | None


def parse_header(buf: bytes) -> PercentHeader:
    """Parse the ``%`` header (up to ``% end`` or the first line without ``%``)."""
    lines: list[str] = []
    keys: dict[str, str] = {}
    pos = 0
    while pos < len(buf) and buf[pos:pos + 1] == b"%":
        if len(lines) >= _MAX_HEADER_LINES:
            raise EventDecodeError(f"'%' header longer than {_MAX_HEADER_LINES} lines")
        end = buf.find(b"\n", pos)
        if end < 0:
            raise EventDecodeError(f"unterminated '%' header line at byte {pos}")
        line = buf[pos + 1:end].rstrip(b"\r").decode("latin-1").strip()
        lines.append(line)
        pos = end + 1
        if line.lower() == "end":
            break
        k, _, v = line.partition(" ")
        if k:
            keys.setdefault(k.lower(), v.strip())
    return PercentHeader(keys, lines, pos)


def _geometry(keys: dict[str, str]) -> HeaderSize:
    """(width, height) from ``geometry``, ``format ...;width=;height=`` or Width/Height."""
    w = h = None
    fmt = keys.get("format", "")
    for part in fmt.split(";")[1:]:
        k, _, v = part.partition("=")
        if _INT_RE.match(v):
            if k.strip().lower() == "width":
                w = int(v)
            elif k.strip().lower() == "height":
                h = int(v)
    if (w is None or h is None) and (m := _GEOM_RE.match(keys.get("geometry", ""))):
        w, h = int(m.group(1)), int(m.group(2))
    if w is None and _INT_RE.match(keys.get("width", "")):
        w = int(keys["width"])
    if h is None and _INT_RE.match(keys.get("height", "")):
        h = int(keys["height"])
    if w is not None and h is not None and (w <= 0 or h <= 0 or w > 65535 or h > 65535):
        raise EventDecodeError(f"invalid sensor size {w}x{h} in header")
    return HeaderSize(w, h)


def _evt_version(keys: dict[str, str]) -> str | None:
    fmt = keys.get("format", "").split(";")[0].strip().upper()
    if fmt:
        return {"EVT2": "evt2", "EVT3": "evt3", "EVT21": "evt2.1"}.get(fmt, fmt.lower())
    evt = keys.get("evt", "").strip()
    return {"2.0": "evt2", "3.0": "evt3", "2.1": "evt2.1", "2": "evt2", "3": "evt3"}.get(
        evt, evt or None)


def decode_evt2(payload) -> ReadResult:
    """Decode an EVT 2.0 word stream (bytes-like); its info holds the trigger counters and the
    CD events dropped before the first TIME_HIGH."""
    buf = np.frombuffer(memoryview(payload).cast("B"), np.uint8)
    if buf.size % 4:
        raise EventDecodeError(
            f"EVT 2.0 payload of {buf.size} bytes is not whole 32-bit words")
    w = buf.view("<u4")
    typ = (w >> 28).astype(np.uint8)
    bad = ~np.isin(typ, (0x0, 0x1, 0x8, 0xA, 0xE, 0xF))
    if bad.any():
        raise EventDecodeError(f"EVT 2.0: unsupported word type 0x{int(typ[bad][0]):X}")
    is_hi = typ == 0x8
    idx = np.where(is_hi, np.arange(w.size), -1)
    if idx.size:
        idx = np.maximum.accumulate(idx)
    hi = np.where(idx >= 0, w[np.maximum(idx, 0)].astype(np.int64) & 0x0FFFFFFF, 0)
    valid = idx >= 0
    cd = np.flatnonzero((typ <= 1) & valid)
    wc = w[cd].astype(np.int64)
    ev = np.empty(cd.size, dtype=EVENT_DTYPE)
    ev["t"] = ((hi[cd] << 6) | ((wc >> 22) & 0x3F)) * 1000
    ev["x"] = (wc >> 11) & 0x7FF
    ev["y"] = wc & 0x7FF
    ev["p"] = typ[cd]
    trig = np.flatnonzero((typ == 0xA) & valid)
    rising = int(np.count_nonzero(w[trig] & 1))
    return ReadResult(ev, {"triggers_rising": rising,
                           "triggers_falling": int(trig.size) - rising,
                           "dropped_before_time": int(np.count_nonzero((typ <= 1) & ~valid))})


def decode_raw(buf: bytes) -> ReadResult:
    """Decode the bytes of a Prophesee RAW file (EVT 2.0 or 3.0)."""
    buf = bytes(buf)
    if not buf.startswith(b"%"):
        raise EventDecodeError("not a Prophesee RAW file (no '%' header)")
    keys, lines, pos = parse_header(buf)
    ver = _evt_version(keys)
    w, h = _geometry(keys)
    payload = memoryview(buf)[pos:]
    extra: dict[str, Any] = {}
    if ver == "evt3":
        dec = Evt3Decoder()
        ev = dec.decode(payload)
        extra = {"triggers_rising": dec.triggers_rising,
                 "triggers_falling": dec.triggers_falling}
    elif ver == "evt2":
        ev, extra = decode_evt2(payload)
    else:
        raise EventDecodeError(f"unsupported Prophesee RAW event format {ver!r} "
                               "(supported: EVT 2.0, EVT 3.0)")
    size = sensor_size(ev, w, h, f"RAW {ver}: ")
    info = {"format": f"prophesee_raw_{ver}", "encoding": ver, "width": size.width,
            "height": size.height, "size_source": size.source, "header": lines, **extra}
    return ReadResult(ev, info)


def read_raw(path: str | os.PathLike) -> ReadResult:
    """Read a Prophesee ``.raw`` file; see :func:`decode_raw`."""
    with open(path, "rb") as f:
        return decode_raw(f.read())


def decode_dat(buf: bytes) -> ReadResult:
    """Decode the bytes of a Prophesee ``.dat`` CD file."""
    buf = bytes(buf)
    keys, lines, pos = parse_header(buf)
    if len(buf) - pos < 2:
        raise EventDecodeError("DAT file has no event type/size bytes after the header")
    ev_type, ev_size = buf[pos], buf[pos + 1]
    if ev_size != 8:
        raise EventDecodeError(
            f"DAT event size {ev_size} (only 8-byte CD events are supported)")
    body = len(buf) - pos - 2
    if body % 8:
        raise EventDecodeError(
            f"DAT data of {body} bytes is not whole 8-byte events (truncated)")
    raw = np.frombuffer(buf, np.dtype([("t", "<u4"), ("d", "<u4")]), body // 8, pos + 2)
    d = raw["d"]
    ev = np.empty(d.size, dtype=EVENT_DTYPE)
    ev["t"] = unwrap_u32(raw["t"]) * 1000
    ev["x"] = d & 0x3FFF
    ev["y"] = (d >> 14) & 0x3FFF
    ev["p"] = (d >> 28) != 0
    size = sensor_size(ev, *_geometry(keys), "DAT: ")
    info = {"format": "prophesee_dat", "encoding": "dat", "width": size.width,
            "height": size.height, "size_source": size.source, "header": lines,
            "event_type": int(ev_type), "monotonic": bool(np.all(np.diff(ev["t"]) >= 0))}
    return ReadResult(ev, info)


def read_dat(path: str | os.PathLike) -> ReadResult:
    """Read a Prophesee ``.dat`` CD file; see :func:`decode_dat`."""
    with open(path, "rb") as f:
        return decode_dat(f.read())


# ----------------------------------------------------------------- writers (tests, export)
def _header_bytes(lines: list[str]) -> bytes:
    return "".join(f"% {ln}\n" for ln in lines).encode("latin-1")


def write_dat(path: str | os.PathLike, events: np.ndarray, width: int, height: int) -> None:
    """Write CD events as a DAT file (whole us times; x, y < 2**14)."""
    ev = np.asarray(events)
    t = ev["t"].astype(np.int64)
    if t.size and (int(t.min()) < 0 or np.any(t % 1000)):
        raise ValueError("DAT stores whole non-negative microseconds")
    raw = np.empty(t.size, np.dtype([("t", "<u4"), ("d", "<u4")]))
    raw["t"] = ((t // 1000) & 0xFFFFFFFF).astype(np.uint32)
    raw["d"] = ((ev["x"].astype(np.uint32) & 0x3FFF)
                | ((ev["y"].astype(np.uint32) & 0x3FFF) << 14)
                | ((ev["p"] != 0).astype(np.uint32) << 28))
    with open(path, "wb") as f:
        f.write(_header_bytes(["Data file containing CD events.", "Version 2",
                               f"Width {int(width)}", f"Height {int(height)}"]))
        f.write(bytes([0x0C, 8]))
        f.write(raw.tobytes())


def write_raw_evt2(path: str | os.PathLike, events: np.ndarray, width: int,
                   height: int) -> None:
    """Write CD events (sorted by t, whole us) as an EVT 2.0 RAW file."""
    ev = np.asarray(events)
    us = ev["t"].astype(np.int64) // 1000
    hi = us >> 6
    new_hi = np.ones(us.size, bool)
    new_hi[1:] = hi[1:] != hi[:-1]
    cd = (((ev["p"] != 0).astype(np.int64) << 28) | ((us & 0x3F) << 22)
          | (ev["x"].astype(np.int64) << 11) | ev["y"].astype(np.int64))
    out = np.empty(us.size + int(new_hi.sum()), np.int64)
    pos_cd = np.arange(us.size) + np.cumsum(new_hi)
    out[pos_cd] = cd
    out[pos_cd[new_hi] - 1] = (0x8 << 28) | (hi[new_hi] & 0x0FFFFFFF)
    with open(path, "wb") as f:
        f.write(_header_bytes([f"format EVT2;height={int(height)};width={int(width)}",
                               f"geometry {int(width)}x{int(height)}", "evt 2.0", "end"]))
        f.write(out.astype("<u4").tobytes())


def write_raw_evt3(path: str | os.PathLike, payload: bytes, width: int, height: int,
                   header_style: str = "format") -> None:
    """Write an already encoded EVT 3.0 word stream as a RAW file.

    ``header_style``: ``"format"`` (``% format EVT3;height=;width=`` + ``% end``)
    or ``"legacy"`` (``% evt 3.0`` + ``% geometry WxH``, no end marker).
    """
    if header_style == "format":
        hdr = [f"format EVT3;height={int(height)};width={int(width)}", "end"]
    else:
        hdr = ["evt 3.0", f"geometry {int(width)}x{int(height)}"]
    with open(path, "wb") as f:
        f.write(_header_bytes(hdr))
        f.write(bytes(payload))
