"""The RTPS wire format (RTPS 2.x, as Fast DDS sends it), read without DDS: which row of
:mod:`edge_vlm_tools.linkstat` each byte of a UDP datagram belongs to (a topic's payload or
overhead, control about its writers, discovery, ...), and the writers that SEDP announces
(standard library only: the link counter runs as a script in a network namespace).

RTPS header: "RTPS", version (2), vendorId (2), guidPrefix (12); submessage header: id,
flags (bit 0: little-endian), octetsToNextHeader (0: to the end of the message, except PAD and
INFO_TS); DATA (0x15): extraFlags, octetsToInlineQos, readerId, writerId, writerSN, inline QoS
(flag Q 0x02), serialized payload (D 0x04 / K 0x08); DATA_FRAG (0x16): + fragmentStartingNum,
fragmentsInSubmessage, fragmentSize, sampleSize (K 0x04); a SEDP publication (writer
0x000003c2) is a ParameterList (PL_CDR_LE / BE; PID_ENDPOINT_GUID 0x005a, PID_TOPIC_NAME
0x0005, PID_TYPE_NAME 0x0007; ids with bit 15 set are vendor-specific).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

RTPS_HEADER = 20
SUBMESSAGES = {0x01: "PAD", 0x06: "ACKNACK", 0x07: "HEARTBEAT", 0x08: "GAP", 0x09: "INFO_TS",
               0x0C: "INFO_SRC", 0x0D: "INFO_REPLY_IP4", 0x0E: "INFO_DST", 0x0F: "INFO_REPLY",
               0x12: "NACK_FRAG", 0x13: "HEARTBEAT_FRAG", 0x15: "DATA", 0x16: "DATA_FRAG",
               0x80: "FASTDDS_STATISTICS"}     # Fast DDS built with statistics: every message
#: per-message submessages: their bytes are overhead of the submessage they serve (INFO_*:
#: the next one; the statistics trailer, last: the datagram's lead)
INFO = {"PAD", "INFO_TS", "INFO_SRC", "INFO_REPLY_IP4", "INFO_DST", "INFO_REPLY",
        "FASTDDS_STATISTICS"}
#: control submessages about a remote writer (its guidPrefix is the INFO_DST's)
TO_WRITER = {"ACKNACK", "NACK_FRAG"}
FROM_WRITER = {"HEARTBEAT", "GAP", "HEARTBEAT_FRAG"}
SEDP_PUBLICATIONS_WRITER = bytes.fromhex("000003c2")
#: the builtin writers (row ``discovery``, split by writer): RTPS 2.x + DDS-XTypes
BUILTIN_WRITERS = {"000100c2": "spdp", "000003c2": "sedp_publications",
                   "000004c2": "sedp_subscriptions", "000200c2": "participant_message",
                   "000300c3": "type_lookup_request", "000301c3": "type_lookup_reply"}
PID_SENTINEL, PID_TOPIC_NAME, PID_TYPE_NAME, PID_ENDPOINT_GUID = 0x0001, 0x0005, 0x0007, 0x005A


class Malformed(ValueError):
    """A datagram the parser cannot read (counted as ``unparsed``)."""


@dataclass
class Part:
    """Bytes of one datagram attributed to one row key (``w:<guid>`` data of a writer,
    ``c:<guid>`` control about a writer, ``d:<entityId>`` a builtin writer's (discovery), or a
    fixed row)."""

    key: str
    payload: int = 0
    overhead: int = 0
    samples: int = 0


@dataclass
class Endpoint:
    guid: str
    topic: str
    type_name: str


@dataclass
class Parsed:
    """One UDP datagram read as RTPS: the rows its bytes go to, its submessages (kind,
    bytes) and the writers it announces."""

    parts: list[Part]
    submessages: list[tuple[str, int]] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)


class Parameters(NamedTuple):
    values: dict[int, bytes]        # by parameter id (must-understand bit cleared)
    end: int                        # offset after the sentinel


class DataHeader(NamedTuple):
    """What a DATA / DATA_FRAG says of its sample."""

    writer: bytes                   # writerId
    start: int                      # where the serialized payload starts in the body
    samples: int                    # 1 for a DATA or a sample's first fragment
    whole: bool                     # the payload is a whole sample (a DATA)


def _builtin(entity: bytes) -> bool:
    return entity[3] & 0xC0 == 0xC0


def _cdr_string(buf: bytes, off: int, end: str) -> str:
    (n,) = struct.unpack_from(end + "I", buf, off)
    return buf[off + 4:off + 4 + n].split(b"\0", 1)[0].decode(errors="replace")


def parse_parameters(buf: bytes, off: int, end: str) -> Parameters:
    """A ParameterList from ``off``: {pid: value} and the offset after its sentinel."""
    params = {}
    while True:
        pid, length = struct.unpack_from(end + "HH", buf, off)
        off += 4
        if pid == PID_SENTINEL:
            return Parameters(params, off)
        if off + length > len(buf):
            raise Malformed("parameter past the end")
        if not pid & 0x8000:                           # vendor-specific ids: skipped
            params.setdefault(pid & 0x3FFF, buf[off:off + length])     # less must-understand
        off += length


def parse_sedp(payload: bytes) -> Endpoint | None:
    """The writer a SEDP publication announces (its serialized payload), None without a
    topic name or a GUID (a dispose, say)."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] not in (2, 3):
        return None
    end = "<" if payload[1] == 3 else ">"             # PL_CDR_LE / PL_CDR_BE
    params = parse_parameters(payload, 4, end).values
    if PID_TOPIC_NAME not in params or len(params.get(PID_ENDPOINT_GUID, b"")) != 16:
        return None
    type_name = _cdr_string(params[PID_TYPE_NAME], 0, end) if PID_TYPE_NAME in params else ""
    return Endpoint(params[PID_ENDPOINT_GUID].hex(), _cdr_string(params[PID_TOPIC_NAME], 0, end),
                    type_name)


def _data(kind: str, flags: int, body: bytes, end: str) -> DataHeader:
    """Read a DATA / DATA_FRAG body (past its inline QoS)."""
    _extra, to_qos = struct.unpack_from(end + "HH", body, 0)
    writer = body[8:12]
    off = 4 + to_qos
    samples, whole = 1, kind == "DATA"
    if kind == "DATA_FRAG":
        (first,) = struct.unpack_from(end + "I", body, 20)
        samples = int(first == 1)
    if off > len(body):
        raise Malformed("octetsToInlineQos past the end")
    if flags & 0x02:                                   # Q: inline QoS
        off = parse_parameters(body, off, end).end
    has_payload = flags & (0x0C if kind == "DATA" else 0x04)   # D|K (DATA), K (DATA_FRAG)
    start = off if (has_payload or kind == "DATA_FRAG") else len(body)
    return DataHeader(writer, start, samples, whole)


def _submessages(msg: bytes):
    """(kind, flags, endianness, body, bytes) of each submessage after the RTPS header."""
    off = RTPS_HEADER
    while off < len(msg):          # a truncated header: IndexError / struct.error (unparsed)
        sid, flags = msg[off], msg[off + 1]
        end = "<" if flags & 1 else ">"
        (length,) = struct.unpack_from(end + "H", msg, off + 2)
        kind = SUBMESSAGES.get(sid, f"0x{sid:02x}")
        if length == 0 and kind not in ("PAD", "INFO_TS"):
            length = len(msg) - off - 4                 # to the end of the message
        if off + 4 + length > len(msg):
            raise Malformed(f"{kind} past the end of the datagram")
        yield kind, flags, end, msg[off + 4:off + 4 + length], 4 + length
        off += 4 + length


def parse_rtps(msg: bytes, head_bytes: int) -> Parsed:
    """Attribute the bytes of one RTPS message (a UDP payload) plus ``head_bytes`` (its
    frames' Ethernet + IP headers and the UDP header) to rows; raises :class:`Malformed`."""
    if len(msg) < RTPS_HEADER or msg[:4] != b"RTPS":
        raise Malformed("not RTPS")
    src, dst = msg[8:20], bytes(12)
    out = Parsed([])
    # INFO_* bytes waiting for the submessage they serve; who carries the datagram's headers
    # (the first DATA, else the first submessage)
    pending, lead, lead_data = 0, None, False
    for kind, flags, end, body, size in _submessages(msg):
        out.submessages.append((kind, size))
        if kind in INFO:
            if kind == "INFO_DST" and len(body) >= 12:
                dst = body[:12] if body[:12] != bytes(12) else dst
            elif kind == "INFO_SRC" and len(body) >= 20:
                src = body[8:20]
            pending += size
            continue
        part = _part(kind, flags, end, body, size, src, dst, out)
        part.overhead += pending
        pending = 0
        out.parts.append(part)
        if lead is None or (kind.startswith("DATA") and not lead_data):
            lead, lead_data = part, kind.startswith("DATA")
    if lead is None:
        lead = Part("other_rtps")
        out.parts.append(lead)
    lead.overhead += pending + head_bytes + RTPS_HEADER
    return out


def _part(kind: str, flags: int, end: str, body: bytes, size: int, src: bytes, dst: bytes,
          out: Parsed) -> Part:
    """One substantive submessage's row and bytes."""
    if kind in ("DATA", "DATA_FRAG"):
        if len(body) < (20 if kind == "DATA" else 32):
            raise Malformed(f"short {kind}")
        writer, start, samples, whole = _data(kind, flags, body, end)
        if _builtin(writer):
            if writer == SEDP_PUBLICATIONS_WRITER and whole and flags & 0x04:
                ep = parse_sedp(body[start:])
                if ep is not None:
                    out.endpoints.append(ep)
            return Part("d:" + writer.hex(), overhead=size, samples=samples)
        payload = len(body) - start
        return Part("w:" + (src + writer).hex(), payload, size - payload, samples)
    if kind in TO_WRITER | FROM_WRITER:
        if len(body) < 8:
            raise Malformed(f"short {kind}")
        writer = body[4:8]
        if _builtin(writer) or _builtin(body[0:4]):
            return Part("d:" + (writer if _builtin(writer) else body[0:4]).hex(), overhead=size)
        prefix = dst if kind in TO_WRITER else src
        return Part("c:" + (prefix + writer).hex(), overhead=size)
    return Part("other_rtps", overhead=size)


def parse_udp(data: bytes, frames_bytes: int) -> Parsed:
    """A whole UDP datagram (header + payload) of ``frames_bytes`` on the wire."""
    if len(data) < 8:
        raise Malformed("short UDP datagram")
    payload = data[8:]
    if payload[:4] != b"RTPS":
        return Parsed([Part("non_rtps", overhead=frames_bytes)])
    return parse_rtps(payload, frames_bytes - len(payload))
