"""RPG / "Event Camera Dataset" text files (``events.txt``).

One event per line: ``t x y p`` separated by white space, ``t`` in seconds
(decimal, e.g. ``1468941032.229165635``), ``x``/``y`` integer pixel
coordinates (origin top-left), ``p`` polarity (1 = ON, 0 or -1 = OFF).  An
optional first line ``width height`` (two integers) gives the sensor size;
without it the size is inferred as max + 1 (``info["size_source"]``).

Times are parsed exactly from the decimal text (seconds and up to 9 fraction
digits -> int64 ns; more digits are truncated) so that nanosecond stamps
survive; numbers in exponent notation fall back to float parsing.
Parsing is vectorized (one ``str.split`` plus numpy string conversions).
"""
from __future__ import annotations

import os
import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError
from edge_vlm.io.formats.common import ReadResult, sensor_size

__all__ = ["read_rpg", "decode_rpg", "write_rpg"]


def _times_ns(tok: np.ndarray) -> np.ndarray:
    try:
        parts = np.char.partition(tok, ".")
        sec_s, frac_s = parts[:, 0], parts[:, 2]
        if np.any(np.char.str_len(frac_s) > 0) and not np.all(np.char.isdigit(
                frac_s[np.char.str_len(frac_s) > 0])):
            raise ValueError("non-digit fraction")
        neg = np.char.startswith(sec_s, "-")
        if neg.any():
            raise ValueError("negative time")
        sec = np.where(np.char.str_len(sec_s) > 0, sec_s, "0").astype(np.int64)
        frac = np.char.ljust(frac_s.astype("U9"), 9, "0").astype(np.int64)
        if int(sec.max(initial=0)) > 9_000_000_000:
            raise EventDecodeError("time stamp too large")
        return sec * 1_000_000_000 + frac
    except EventDecodeError:
        raise
    except (ValueError, OverflowError):
        try:
            f = tok.astype(np.float64)
        except ValueError as exc:
            raise EventDecodeError(f"events.txt: unparsable time stamp: {exc}") from None
        if not np.all(np.isfinite(f)) or np.any(f < 0) or np.any(f > 9e9):
            raise EventDecodeError("events.txt: time stamps must be finite, >= 0, < 9e9 s")
        return np.round(f * 1e9).astype(np.int64)


def decode_rpg(text: str | bytes) -> ReadResult:
    """Decode the text of an ``events.txt`` file."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as exc:
            raise EventDecodeError(f"events.txt is not ASCII text: {exc}") from None
    first, _, rest = text.lstrip("\ufeff").partition("\n")
    head = first.split()
    w = h = None
    if len(head) == 2:
        try:
            w, h = int(head[0]), int(head[1])
        except ValueError:
            raise EventDecodeError(f"events.txt: bad size line {first!r}") from None
        if not (0 < w <= 65535 and 0 < h <= 65535):
            raise EventDecodeError(f"events.txt: invalid sensor size {w}x{h}")
        body = rest
    else:
        body = text
    tok = body.split()
    if not tok:           # an empty file, or a size line alone: nothing says it is events.txt
        raise EventDecodeError("events.txt: no events (expected one 't x y p' line per event)")
    if len(tok) % 4:
        raise EventDecodeError(f"events.txt: {len(tok)} values is not a multiple of 4 (t x y p)")
    arr = np.array(tok, dtype=str).reshape(-1, 4) if tok else np.zeros((0, 4), dtype="U1")
    ev = np.empty(arr.shape[0], dtype=EVENT_DTYPE)
    if arr.shape[0]:
        try:
            xyp = arr[:, 1:].astype(np.int64)
        except (ValueError, OverflowError) as exc:
            raise EventDecodeError(f"events.txt: x, y, p must be integers ({exc})") from None
        x, y, p = xyp[:, 0], xyp[:, 1], xyp[:, 2]
        if x.min() < 0 or y.min() < 0 or x.max() > 65535 or y.max() > 65535:
            raise EventDecodeError("events.txt: coordinates outside 0..65535")
        if not np.all((p >= -1) & (p <= 1)):
            raise EventDecodeError("events.txt: polarity must be -1, 0 or 1")
        ev["t"] = _times_ns(arr[:, 0])
        ev["x"], ev["y"], ev["p"] = x, y, p > 0
    size = sensor_size(ev, w, h, "events.txt: ")
    return ReadResult(ev, {"format": "rpg_txt", "encoding": "rpg_txt", "width": size.width,
                           "height": size.height, "size_source": size.source,
                           "monotonic": bool(np.all(np.diff(ev["t"]) >= 0))})


def read_rpg(path: str | os.PathLike) -> ReadResult:
    """Read an ``events.txt`` file; see :func:`decode_rpg`."""
    with open(path, "rb") as f:
        return decode_rpg(f.read())


def write_rpg(path: str | os.PathLike, events: np.ndarray, width: int | None = None,
              height: int | None = None) -> None:
    """Write ``events.txt`` (exact ns times, 9 fraction digits; size line if given)."""
    ev = np.asarray(events)
    t = ev["t"].astype(np.int64)
    if t.size and int(t.min()) < 0:
        raise ValueError("events.txt times must be >= 0")
    sec = (t // 1_000_000_000).astype(str)
    frac = np.char.zfill((t % 1_000_000_000).astype(str), 9)
    cols = [np.char.add(np.char.add(sec, "."), frac), ev["x"].astype(str),
            ev["y"].astype(str), (ev["p"] != 0).astype(np.int64).astype(str)]
    lines = [f"{int(width)} {int(height)}"] if width is not None else []
    if t.size:
        row = cols[0]
        for c in cols[1:]:
            row = np.char.add(np.char.add(row, " "), c)
        lines.extend(row.tolist())
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
