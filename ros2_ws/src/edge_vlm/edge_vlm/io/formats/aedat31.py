"""AEDAT 3.1 (iniVation), the file format of the DVS128 Gesture data set.

AEDAT 3.1 layout (little-endian throughout), as specified by iniVation
("AEDAT 3.1" file-format page) and implemented in libcaer
``include/libcaer/events/common.h`` and ``events/polarity.h``:

* ASCII header lines, each ``#...\\r\\n``: first ``#!AER-DAT3.1``, then
  ``#Format: RAW``, ``#Source <id>: <name>`` (DvsGesture: ``#Source 1: DVS128``),
  ``#Start-Time: ...``, last ``#!END-HEADER``.
* Packets: a 28-byte header ``<hhiiiiii`` = eventType, eventSource, eventSize,
  eventTSOffset, eventTSOverflow, eventCapacity, eventNumber, eventValid,
  followed by ``eventCapacity * eventSize`` bytes; only the first
  ``eventNumber`` slots hold events.
* Polarity events (eventType 1, eventSize 8, eventTSOffset 4): ``uint32 data``
  + ``int32 timestamp`` (us). ``data`` bit 0 = valid mark, bit 1 = polarity
  (1 = ON), bits 2-16 = y (15 bits), bits 17-31 = x (15 bits). The 64-bit
  time is ``(eventTSOverflow << 31) | timestamp`` (libcaer ``TS_OVERFLOW_SHIFT``
  = 31).
* Coordinates: AEDAT 3.1 puts (0, 0) in the upper-left corner (AEDAT 3.0 and
  jAER's AEDAT 2.0 used lower-left), which is this project's convention, so x
  and y are returned exactly as stored (no flip); the SpikingJelly and
  dv-python based DvsGesture loaders do the same. The DVS128 is 128x128.

Events use :data:`edge_vlm.events.EVENT_DTYPE` with ``t = us * 1000`` (ns).
Malformed input raises :class:`edge_vlm.events.EventDecodeError`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence, Union

import numpy as np

from edge_vlm.events import EventDecodeError, empty_events
from edge_vlm.io.formats.common import HeaderLines, ReadResult

PathLike = Union[str, "os.PathLike[str]"]

AEDAT31_VERSION_LINE = "#!AER-DAT3.1"
AEDAT_END_HEADER = "#!END-HEADER"
POLARITY_EVENT = 1
DEFAULT_PACKET_SIZE = 8192  # polarity events per packet written
DEFAULT_SOURCE_ID = 1       # DvsGesture files use "#Source 1: DVS128"

PACKET_HEADER_DTYPE = np.dtype([
    ("eventType", "<i2"), ("eventSource", "<i2"), ("eventSize", "<i4"),
    ("eventTSOffset", "<i4"), ("eventTSOverflow", "<i4"),
    ("eventCapacity", "<i4"), ("eventNumber", "<i4"), ("eventValid", "<i4"),
])
PACKET_HEADER_SIZE = PACKET_HEADER_DTYPE.itemsize  # 28
POLARITY_DTYPE = np.dtype([("data", "<u4"), ("timestamp", "<i4")])

_VALID_BIT = 0x1
_POL_SHIFT = 1
_Y_SHIFT = 2
_X_SHIFT = 17
_ADDR_MASK = 0x7FFF
_TS_OVERFLOW_SHIFT = 31
_MAX_HEADER_LINES = 100_000

_SOURCE_RE = re.compile(r"^#Source (\d+): (.*)$")
_START_RE = re.compile(r"^#Start-Time: (.*)$")
_FORMAT_RE = re.compile(r"^#Format: (.*)$")


def _parse_header(buf: bytes) -> HeaderLines:
    """Split the ASCII header off ``buf``: (lines without CRLF, data offset)."""
    if not buf.startswith(AEDAT31_VERSION_LINE.encode()):
        head = buf[:16]
        raise EventDecodeError(
            f"not an AEDAT 3.1 file: expected first line {AEDAT31_VERSION_LINE!r}, "
            f"got {head!r}")
    lines: list[str] = []
    pos = 0
    while len(lines) < _MAX_HEADER_LINES:
        if pos >= len(buf) or buf[pos:pos + 1] != b"#":
            raise EventDecodeError(
                f"AEDAT 3.1 header has no {AEDAT_END_HEADER!r} line "
                f"(header stops at byte {pos})")
        end = buf.find(b"\n", pos)
        if end < 0:
            raise EventDecodeError(f"unterminated AEDAT header line at byte {pos}")
        line = buf[pos:end].rstrip(b"\r").decode("latin-1")
        lines.append(line)
        pos = end + 1
        if line == AEDAT_END_HEADER:
            return HeaderLines(lines, pos)
    raise EventDecodeError(f"AEDAT header longer than {_MAX_HEADER_LINES} lines")


class _Header(NamedTuple):
    """What the header lines between the version line and ``#!END-HEADER`` say."""

    sources: dict[int, str]        # ``#Source <id>: <name>``
    start_time: str | None         # the first ``#Start-Time:``
    extra: list[str]               # every other line


def _header_fields(lines: list[str]) -> _Header:
    sources: dict[int, str] = {}
    start_time: str | None = None
    extra: list[str] = []
    for line in lines[1:-1]:
        if (m := _SOURCE_RE.match(line)) is not None:
            sources[int(m.group(1))] = m.group(2)
        elif start_time is None and (m := _START_RE.match(line)) is not None:
            start_time = m.group(1)
        elif (m := _FORMAT_RE.match(line)) is not None:
            if m.group(1) != "RAW":
                raise EventDecodeError(f"unsupported AEDAT 3.1 format {m.group(1)!r}")
        else:
            extra.append(line)
    return _Header(sources, start_time, extra)


@dataclass
class _Packets:
    """The packets of a file: the polarity ones' event bytes, the others counted."""

    chunks: list[memoryview] = field(default_factory=list)    # valid slots of each packet
    overflows: list[int] = field(default_factory=list)        # eventTSOverflow of each
    counts: list[int] = field(default_factory=list)           # eventNumber of each
    skipped_by_type: dict[int, int] = field(default_factory=dict)
    n_packets: int = 0
    packet_size: int = 0                                       # largest eventCapacity


class _PacketHeader(NamedTuple):
    """The fields of a packet header this reader uses."""

    etype: int          # eventType
    esize: int          # eventSize
    capacity: int       # eventCapacity (slots in the body)
    number: int         # eventNumber (slots holding events)
    overflow: int       # eventTSOverflow
    ts_offset: int      # eventTSOffset


def _packet_header(buf: bytes, pos: int) -> _PacketHeader:
    """The header of the packet at ``pos``, checked (and its body against the file size)."""
    total = len(buf)
    if total - pos < PACKET_HEADER_SIZE:
        raise EventDecodeError(
            f"truncated AEDAT packet header at byte {pos}: "
            f"{total - pos} of {PACKET_HEADER_SIZE} bytes")
    h = np.frombuffer(buf, PACKET_HEADER_DTYPE, 1, pos)[0]
    etype, esize = int(h["eventType"]), int(h["eventSize"])
    cap, num = int(h["eventCapacity"]), int(h["eventNumber"])
    ovf = int(h["eventTSOverflow"])
    if etype < 0 or esize <= 0 or cap < 0 or num < 0 or num > cap or ovf < 0:
        raise EventDecodeError(
            f"corrupt AEDAT packet header at byte {pos}: type={etype} size={esize} "
            f"capacity={cap} number={num} overflow={ovf}")
    if pos + PACKET_HEADER_SIZE + cap * esize > total:
        raise EventDecodeError(
            f"truncated AEDAT packet at byte {pos}: needs {cap * esize} body bytes, "
            f"{total - pos - PACKET_HEADER_SIZE} left")
    return _PacketHeader(etype, esize, cap, num, ovf, int(h["eventTSOffset"]))


def _scan_packets(buf: bytes, pos: int) -> _Packets:
    """Walk the packets from ``pos`` to the end of ``buf``."""
    out = _Packets()
    view = memoryview(buf)
    while pos < len(buf):
        h = _packet_header(buf, pos)
        body = pos + PACKET_HEADER_SIZE
        if h.etype == POLARITY_EVENT:
            if h.esize != POLARITY_DTYPE.itemsize or h.ts_offset != 4:
                raise EventDecodeError(
                    f"polarity packet at byte {pos} has eventSize={h.esize}, "
                    f"eventTSOffset={h.ts_offset} (expected 8, 4)")
            out.chunks.append(view[body:body + h.number * h.esize])
            out.overflows.append(h.overflow)
            out.counts.append(h.number)
            out.packet_size = max(out.packet_size, h.capacity)
        else:
            out.skipped_by_type[h.etype] = out.skipped_by_type.get(h.etype, 0) + h.number
        out.n_packets += 1
        pos = body + h.capacity * h.esize
    return out


class _Polarity(NamedTuple):
    """The valid polarity events of a file."""

    events: np.ndarray       # EVENT_DTYPE
    us: np.ndarray           # their times in us (int64)
    invalid: int             # polarity events with the valid bit clear


def _polarity_events(packets: _Packets) -> _Polarity:
    """The valid events of the polarity packets (times unwrapped with eventTSOverflow)."""
    raw = np.frombuffer(b"".join(packets.chunks), POLARITY_DTYPE)
    ovf_per_event = np.repeat(np.asarray(packets.overflows, np.int64),
                              np.asarray(packets.counts, np.int64))
    valid = (raw["data"] & _VALID_BIT).astype(bool)
    data = raw["data"][valid]
    ts = raw["timestamp"][valid]
    if ts.size and int(ts.min()) < 0:
        raise EventDecodeError("negative polarity timestamp in AEDAT file")
    us = (ovf_per_event[valid] << _TS_OVERFLOW_SHIFT) | ts.astype(np.int64)
    if us.size and int(us.max()) > np.iinfo(np.int64).max // 1000:
        raise EventDecodeError("AEDAT timestamp too large for int64 nanoseconds")
    events = empty_events(int(data.size))
    events["t"] = us * 1000
    events["x"] = (data >> _X_SHIFT) & _ADDR_MASK
    events["y"] = (data >> _Y_SHIFT) & _ADDR_MASK
    events["p"] = (data >> _POL_SHIFT) & 1
    return _Polarity(events, us, int(raw.size - data.size))


def read_aedat31(path: PathLike) -> ReadResult:
    """Read the polarity events of an AEDAT 3.1 file.

    Returns ``(events, info)``: ``events`` (EVENT_DTYPE, file order, valid
    events only, ``t`` in ns) and ``info`` with keys ``header`` (all header
    lines without CRLF), ``sources`` ({id: name}), ``source`` / ``source_id``
    (first source), ``start_time`` (str or None), ``header_extra`` (other
    header lines), ``packets`` (all packets), ``polarity_packets``,
    ``packet_size`` (largest polarity eventCapacity, 0 if none),
    ``skipped_events`` (events in non-polarity packets), ``skipped_by_type``
    ({eventType: count}), ``invalid_events`` (polarity events with the valid
    bit clear) and ``monotonic`` (event time never decreases).
    """
    with open(path, "rb") as f:
        buf = f.read()
    lines, pos = _parse_header(buf)
    head = _header_fields(lines)
    packets = _scan_packets(buf, pos)
    events, us, invalid = _polarity_events(packets)
    first_id = min(head.sources) if head.sources else None
    info: dict[str, Any] = {
        "header": lines,
        "sources": head.sources,
        "source_id": first_id,
        "source": head.sources[first_id] if first_id is not None else None,
        "start_time": head.start_time,
        "header_extra": head.extra,
        "packets": packets.n_packets,
        "polarity_packets": len(packets.counts),
        "packet_size": packets.packet_size,
        "skipped_events": sum(packets.skipped_by_type.values()),
        "skipped_by_type": packets.skipped_by_type,
        "invalid_events": invalid,
        "monotonic": bool(np.all(us[1:] >= us[:-1])),
    }
    return ReadResult(events, info)


def write_options(info: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :func:`write_aedat31` that reproduce a file read
    with :func:`read_aedat31` (exactly, for files this module wrote)."""
    return {
        "source": info["source"] if info["source"] is not None else "DVS128",
        "source_id": info["source_id"] if info["source_id"] is not None else DEFAULT_SOURCE_ID,
        "packet_size": info["packet_size"] or DEFAULT_PACKET_SIZE,
        "start_time": info["start_time"],
        "header_extra": tuple(info["header_extra"]),
    }


def _header_line(line: str) -> str:
    if "\r" in line or "\n" in line:
        raise ValueError(f"AEDAT header line contains a line break: {line!r}")
    return line if line.startswith("#") else "#" + line


def write_aedat31(path: PathLike, events: np.ndarray, *, source: str = "DVS128",
                  source_id: int = DEFAULT_SOURCE_ID,
                  packet_size: int = DEFAULT_PACKET_SIZE,
                  start_time: str | None = None,
                  header_extra: Sequence[str] = ()) -> None:
    """Write ``events`` as AEDAT 3.1 polarity packets (all events valid).

    Output is deterministic: the header is ``#!AER-DAT3.1``, ``#Format: RAW``,
    ``#Source <source_id>: <source>``, ``#Start-Time: <start_time>`` (only if
    given), ``header_extra`` lines ('#' prepended if missing), ``#!END-HEADER``.
    Packets hold at most ``packet_size`` events and one ``eventTSOverflow``
    each. Raises ValueError if a time is negative or not a whole microsecond,
    x/y do not fit 15 bits, or p is not 0/1.
    """
    if packet_size <= 0:
        raise ValueError(f"packet_size must be positive, got {packet_size}")
    if not 0 <= source_id < 2**15:
        raise ValueError(f"source_id {source_id} outside int16 range")
    t = np.asarray(events["t"], dtype=np.int64)
    x = np.asarray(events["x"], dtype=np.int64)
    y = np.asarray(events["y"], dtype=np.int64)
    p = np.asarray(events["p"], dtype=np.int64)
    if t.size:
        if int(t.min()) < 0:
            raise ValueError("AEDAT 3.1 cannot store negative event times")
        if np.any(t % 1000):
            raise ValueError("AEDAT 3.1 stores whole microseconds; event times "
                             "(ns) must be multiples of 1000")
        if (min(int(x.min()), int(y.min())) < 0
                or max(int(x.max()), int(y.max())) > _ADDR_MASK):
            raise ValueError("event coordinates must fit 15 bits (0..32767)")
        if not np.all((p == 0) | (p == 1)):
            raise ValueError("event polarity must be 0 or 1")

    header = [AEDAT31_VERSION_LINE, "#Format: RAW",
              _header_line(f"#Source {source_id}: {source}")]
    if start_time is not None:
        header.append(_header_line(f"#Start-Time: {start_time}"))
    header.extend(_header_line(line) for line in header_extra)
    header.append(AEDAT_END_HEADER)

    us = t // 1000
    overflow = us >> _TS_OVERFLOW_SHIFT
    body = np.empty(t.size, POLARITY_DTYPE)
    body["data"] = ((x << _X_SHIFT) | (y << _Y_SHIFT) | (p << _POL_SHIFT)
                    | _VALID_BIT).astype(np.uint32)
    body["timestamp"] = (us & 0x7FFFFFFF).astype(np.int32)

    # Packet starts: every overflow change, and every packet_size events within a run.
    runs = np.concatenate(([0], np.flatnonzero(np.diff(overflow)) + 1, [t.size]))
    starts = np.concatenate([np.arange(a, b, packet_size) for a, b in zip(runs[:-1], runs[1:])]
                            + [np.zeros(0, np.int64)]).astype(np.int64)
    ends = np.append(starts[1:], t.size)
    n = (ends - starts).astype(np.int32)
    heads = np.zeros(starts.size, PACKET_HEADER_DTYPE)
    heads["eventType"] = POLARITY_EVENT
    heads["eventSource"] = source_id
    heads["eventSize"] = POLARITY_DTYPE.itemsize
    heads["eventTSOffset"] = 4
    heads["eventTSOverflow"] = overflow[starts]  # int64 ns / 1000 >> 31 always fits int32
    heads["eventCapacity"] = n
    heads["eventNumber"] = n
    heads["eventValid"] = n

    with open(path, "wb") as f:
        f.write("".join(line + "\r\n" for line in header).encode("latin-1"))
        for i in range(starts.size):
            f.write(heads[i:i + 1].tobytes())
            f.write(body[starts[i]:ends[i]].tobytes())


