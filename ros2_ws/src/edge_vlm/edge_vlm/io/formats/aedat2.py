"""jAER AEDAT 2.0 (``#!AER-DAT2.0``) reader and writer (DVS128 and DAVIS240).

Layout (jAER ``AEFileInputStream``; public "AEDAT 2.0" format description):

* ASCII header lines starting with ``#`` (first ``#!AER-DAT2.0``), each ended
  by ``\\r\\n``; the header ends at the first line that does not start with ``#``.
  jAER writes the chip class, e.g. ``# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128``
  or ``...DAVIS240C``; this selects the default ``camera``.  Newer jAER files
  end the header with ``# End Of ASCII Header`` (honoured here, so that data
  whose first byte is ``#`` is not mistaken for a header line).
* Then 8-byte events, **big-endian**: ``uint32 address``, ``uint32 timestamp``
  (microseconds; wraps at 2**32, unwrapped here).

Address layouts (jAER extractors ``DVS128.Extractor`` / ``DavisBaseCamera``):

``DVS128`` (128x128): raw x = ``(a >> 1) & 0x7F``, raw y = ``(a >> 8) & 0x7F``,
bit 0 = raw polarity *type*; jAER flips the type (``setFliptype(true)``): raw
bit 0 == 0 is an **ON** event.  Addresses with bit 15 set are special (sync)
events and are skipped (counted in ``info["special_events"]``).

``DAVIS240`` (240x180): bit 31 set = APS/IMU sample (skipped), bit 10 set =
external-input event (skipped), else a DVS event with raw x = ``(a >> 12) &
0x3FF``, raw y = ``(a >> 22) & 0x1FF``, polarity bit 11 (1 = ON).

Orientation.  jAER mirrors x (``setFlipx(true)`` / ``sx1 - x``) and puts the
y origin at the **bottom** of the image.  With ``orientation="jaer"`` (the
default) this reader returns the jAER view converted to this project's
top-left origin, i.e. ``x = W-1-raw_x`` and ``y = H-1-raw_y`` -- the image as
jAER shows it, stored with y down.  ``orientation="raw"`` returns the raw
address fields unchanged (like jAER's ``loadaerdat.py``).  Polarity is always
1 = ON in the jAER sense.

Events: :data:`edge_vlm.events.EVENT_DTYPE`, ``t = us * 1000``.
"""
from __future__ import annotations

import os

import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError, check_xy
from edge_vlm.io.formats.common import HeaderLines, ReadResult, unwrap_u32

__all__ = ["CAMERAS", "read_aedat2", "decode_aedat2", "write_aedat2", "AEDAT2_MAGIC"]

AEDAT2_MAGIC = b"#!AER-DAT2.0"
#: camera -> (width, height)
CAMERAS: dict[str, tuple[int, int]] = {"DVS128": (128, 128), "DAVIS240": (240, 180)}
_MAX_HEADER = 1 << 20
_RAW_DTYPE = np.dtype([("addr", ">u4"), ("ts", ">u4")])


def _split_header(buf: bytes, magic: bytes) -> HeaderLines:
    """Header lines (decoded, no EOL) and the data offset of a ``#``-header file."""
    if not buf.startswith(magic):
        raise EventDecodeError(f"not an {magic.decode()} file (starts with {buf[:16]!r})")
    lines: list[str] = []
    pos = 0
    while pos < len(buf) and buf[pos:pos + 1] == b"#":
        end = buf.find(b"\n", pos)
        if end < 0 or end - pos > _MAX_HEADER:
            raise EventDecodeError(f"unterminated header line at byte {pos}")
        lines.append(buf[pos:end].rstrip(b"\r").decode("latin-1"))
        pos = end + 1
        if lines[-1].lower().replace(" ", "") == "#endofasciiheader":
            break                    # newer jAER files end the header explicitly
    return HeaderLines(lines, pos)


def _camera_from_header(lines: list[str]) -> str | None:
    for ln in lines:
        low = ln.lower()
        if "aechip" in low or "chip" in low or "hardwareinterface" in low:
            if "davis240" in low:
                return "DAVIS240"
            if "dvs128" in low or "tmpdiff128" in low:
                return "DVS128"
    return None


def decode_aedat2(buf: bytes, camera: str | None = None,
                  orientation: str = "jaer") -> ReadResult:
    """Decode AEDAT 2.0 bytes; see the module docstring. Returns ``(events, info)``."""
    if orientation not in ("jaer", "raw"):
        raise ValueError(f"orientation must be 'jaer' or 'raw', not {orientation!r}")
    lines, pos = _split_header(bytes(buf), AEDAT2_MAGIC)
    cam_hdr = _camera_from_header(lines)
    cam = (camera or cam_hdr or "DVS128").upper()
    if cam not in CAMERAS:
        raise ValueError(f"camera must be one of {sorted(CAMERAS)}, not {camera!r}")
    body = len(buf) - pos
    if body % 8:
        raise EventDecodeError(
            f"AEDAT 2.0 data of {body} bytes is not a whole number of 8-byte events (truncated)")
    raw = np.frombuffer(buf, _RAW_DTYPE, body // 8, pos)
    a = raw["addr"].astype(np.uint32)
    t_us = unwrap_u32(raw["ts"])
    w, h = CAMERAS[cam]
    if cam == "DVS128":
        keep = (a & 0x8000) == 0
        rx = (a >> 1) & 0x7F
        ry = (a >> 8) & 0x7F
        p = 1 - (a & 1)
    else:
        keep = ((a >> 31) == 0) & ((a & 0x400) == 0)
        rx = (a >> 12) & 0x3FF
        ry = (a >> 22) & 0x1FF
        p = (a >> 11) & 1
        check_xy(rx[keep], ry[keep], w, h, "AEDAT 2.0 DAVIS240 raw address: ")
    ev = np.empty(int(np.count_nonzero(keep)), dtype=EVENT_DTYPE)
    ev["t"] = t_us[keep] * 1000
    if orientation == "jaer":
        ev["x"] = (w - 1) - rx[keep].astype(np.int64)
        ev["y"] = (h - 1) - ry[keep].astype(np.int64)
    else:
        ev["x"] = rx[keep]
        ev["y"] = ry[keep]
    ev["p"] = p[keep]
    info = {"format": "aedat2", "encoding": "aedat2", "width": w, "height": h,
            "camera": cam, "camera_from_header": cam_hdr, "orientation": orientation,
            "header": lines, "raw_events": int(a.size),
            "special_events": int(a.size - ev.size),
            "monotonic": bool(np.all(np.diff(ev["t"]) >= 0))}
    return ReadResult(ev, info)


def read_aedat2(path: str | os.PathLike, camera: str | None = None,
                orientation: str = "jaer") -> ReadResult:
    """Read a jAER AEDAT 2.0 file; see :func:`decode_aedat2`."""
    with open(path, "rb") as f:
        return decode_aedat2(f.read(), camera=camera, orientation=orientation)


def write_aedat2(path: str | os.PathLike, events: np.ndarray, camera: str = "DVS128",
                 orientation: str = "jaer", header_extra: tuple[str, ...] = ()) -> None:
    """Write events as AEDAT 2.0 (inverse of :func:`read_aedat2` with the same options).

    Times must be whole microseconds >= 0 (stored modulo 2**32).
    """
    cam = camera.upper()
    if cam not in CAMERAS:
        raise ValueError(f"camera must be one of {sorted(CAMERAS)}")
    w, h = CAMERAS[cam]
    ev = np.asarray(events)
    t = ev["t"].astype(np.int64)
    if t.size and (int(t.min()) < 0 or np.any(t % 1000)):
        raise ValueError("AEDAT 2.0 stores whole non-negative microseconds")
    x = ev["x"].astype(np.int64)
    y = ev["y"].astype(np.int64)
    check_xy(x, y, w, h, f"AEDAT 2.0 {cam}: ")
    if orientation == "jaer":
        x, y = (w - 1) - x, (h - 1) - y
    p = (ev["p"] != 0).astype(np.int64)
    if cam == "DVS128":
        addr = (x << 1) | (y << 8) | (1 - p)
    else:
        addr = (x << 12) | (y << 22) | (p << 11)
    raw = np.empty(t.size, _RAW_DTYPE)
    raw["addr"] = addr.astype(np.uint32)
    raw["ts"] = ((t // 1000) & 0xFFFFFFFF).astype(np.uint32)
    chip = {"DVS128": "ch.unizh.ini.jaer.chip.retina.DVS128",
            "DAVIS240": "eu.seebetter.ini.chips.davis.DAVIS240C"}[cam]
    hdr = [AEDAT2_MAGIC.decode(), "# This is a raw AE data file - do not edit",
           "# Data format is int32 address, int32 timestamp (8 bytes total), "
           "repeated for each event",
           "# Timestamps tick is 1 us", f"# AEChip: {chip}"]
    hdr += [ln if ln.startswith("#") else "#" + ln for ln in header_extra]
    hdr.append("# End Of ASCII Header")
    with open(path, "wb") as f:
        f.write("".join(ln + "\r\n" for ln in hdr).encode("latin-1"))
        f.write(raw.tobytes())
