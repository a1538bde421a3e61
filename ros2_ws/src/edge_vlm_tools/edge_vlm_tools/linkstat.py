"""edge_vlm_linkstat: what crosses one network interface, per DDS topic (standard library
only; root: an ``AF_PACKET`` raw socket)::

    ip netns exec NS python -m edge_vlm_tools.linkstat -i DEV -o FILE.json [--duration S]

Counts every frame DEV sends (``tx``) and receives (``rx``) until ``--duration`` s or SIGINT /
SIGTERM, then writes FILE.json (``total``). SIGUSR1 / SIGUSR2 open / close a window: frames
stamped (kernel time) inside it are also counted under ``in_window``; ``window.device_bytes``:
the device's own counters (sysfs) over it. Per direction: ``protocols`` (frames and bytes;
whole frames, Ethernet header included, as ``ip -s link`` counts), ``submessages`` (RTPS, by
kind: count, bytes) and ``by_topic``: every byte in one row. A topic's row: ``payload_bytes``
(its writers' DATA / DATA_FRAG serialized payload, encapsulation included),
``overhead_bytes`` (the rest of those submessages, the INFO_* before them, the Fast DDS
statistics trailer and Ethernet + IPv4 (each fragment's) + UDP + RTPS headers of the
datagrams they lead), ``control_bytes`` (HEARTBEAT / GAP of its writers, ACKNACK / NACK_FRAG
to them, with the datagrams they lead). Other rows: ``discovery`` (the builtin entities:
SPDP, SEDP, participant messages, their heartbeats and acks), ``other_rtps``, ``non_rtps``,
``unparsed`` (malformed, truncated or incomplete: never an exception). Writers' topics come
from the SEDP publications seen (writer ``0x000003c2``: ``PID_ENDPOINT_GUID``,
``PID_TOPIC_NAME``, ``PID_TYPE_NAME``); one never announced is ``? <guid>``. IPv4 fragments
are reassembled (the wire format: :mod:`edge_vlm_tools.rtps_wire`). Exit code 0; 2 bad
arguments; 3 no raw socket (not root, no ``AF_PACKET``): one ``error:`` line.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):    # run as a script (netns.start_linkstat): its package's parent
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_vlm_tools.rtps_wire import (BUILTIN_WRITERS, Endpoint, Malformed, Parsed,  # noqa: E402
                                      Part, parse_udp)

PROG = "edge_vlm_linkstat"
ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4          # linux/if_ether.h, linux/if_packet.h
SO_TIMESTAMPNS = 35              # linux/asm-generic/socket.h (SCM_TIMESTAMPNS alike)
SOL_PACKET, PACKET_STATISTICS = 263, 6
ETH_HEADER = 14
MAX_PENDING_FRAGMENTS = 256
#: what a malformed frame raises in the parser (counted ``unparsed``)
PARSE_ERRORS = (Malformed, struct.error, IndexError, ValueError, UnicodeError)


@dataclass
class Frame:
    direction: str
    size: int
    ts_ns: int
    data: bytes


@dataclass
class Counted:
    """What a frame, or a reassembled datagram's frames, adds to the tallies."""

    proto: str
    direction: str
    ts_ns: int
    size: int
    parsed: Parsed
    packets: int = 1


def _unparsed(proto: str, direction: str, ts_ns: int, size: int, row: str = "unparsed"
              ) -> Counted:
    return Counted(proto, direction, ts_ns, size, Parsed([Part(row, overhead=size)]))


class Tally:
    """Counters of one span (the whole capture, or the window), per direction."""

    def __init__(self) -> None:
        self.d = {d: {"packets": 0, "bytes": 0, "protocols": {}, "submessages": {}, "rows": {}}
                  for d in ("tx", "rx")}

    def frame(self, direction: str, proto: str, size: int, packets: int = 1) -> None:
        t = self.d[direction]
        t["packets"] += packets
        t["bytes"] += size
        _bump(t["protocols"], proto, packets, size)

    def parsed(self, direction: str, parsed: Parsed) -> None:
        t = self.d[direction]
        for kind, size in parsed.submessages:
            _bump(t["submessages"], kind, 1, size)
        for part in parsed.parts:
            _bump(t["rows"], part.key, part.samples, part.payload, part.overhead)


def _bump(table: dict, key: str, *values: int) -> None:
    row = table.setdefault(key, [0] * len(values))
    for i, v in enumerate(values):
        row[i] += v


class LinkCounter:
    """The parser's state: totals, the window, IPv4 fragments in reassembly, the writers
    learned from SEDP."""

    def __init__(self, interface: str = "") -> None:
        self.interface = interface
        self.total, self.window = Tally(), Tally()
        self.window_ns: list[int | None] = [None, None]
        self.dev_bytes: list[dict | None] = [None, None]    # the device's counters at the marks
        self.writers: dict[str, Endpoint] = {}
        self.fragments: dict[tuple, dict] = {}
        self.last_ns: int | None = None

    def mark(self, i: int) -> None:
        """Open (0) or close (1) the window now; read the device's byte counters (sysfs)."""
        self.window_ns[i] = time.time_ns()
        stats = f"/sys/class/net/{self.interface}/statistics"
        try:
            self.dev_bytes[i] = {d: int(Path(f"{stats}/{d}_bytes").read_text())
                                 for d in ("tx", "rx")}
        except (OSError, ValueError):
            self.dev_bytes[i] = None

    def _tallies(self, ts_ns: int) -> list[Tally]:
        a, b = self.window_ns
        inside = a is not None and ts_ns >= a and (b is None or ts_ns < b)
        return [self.total, self.window] if inside else [self.total]

    def _count(self, c: Counted) -> None:
        for ep in c.parsed.endpoints:
            self.writers[ep.guid] = ep
        for t in self._tallies(c.ts_ns):
            t.frame(c.direction, c.proto, c.size, c.packets)
            t.parsed(c.direction, c.parsed)

    def add(self, f: Frame) -> None:
        """Count one frame (never raises on its content)."""
        self.last_ns = f.ts_ns
        try:
            c = self._classify(f)
        except PARSE_ERRORS:
            c = _unparsed("unparsed", f.direction, f.ts_ns, f.size)
        if c is not None:
            self._count(c)

    def _classify(self, f: Frame) -> Counted | None:
        """The frame's protocol and rows (None: a fragment waiting for the rest)."""
        buf = f.data
        if len(buf) < ETH_HEADER:
            raise Malformed("short frame")
        (etype,) = struct.unpack_from("!H", buf, 12)
        if etype != 0x0800:
            proto = {0x86DD: "ipv6", 0x0806: "arp"}.get(etype, "other")
            return _unparsed(proto, f.direction, f.ts_ns, f.size, "non_rtps")
        ihl = (buf[ETH_HEADER] & 0x0F) * 4
        total_len, ident, frag, ttl_proto = struct.unpack_from("!2xHHH2s", buf, ETH_HEADER)
        if buf[ETH_HEADER] >> 4 != 4 or ihl < 20 or total_len < ihl \
                or ETH_HEADER + total_len > len(buf):
            raise Malformed("bad IPv4 header")
        data = buf[ETH_HEADER + ihl:ETH_HEADER + total_len]
        if ttl_proto[1] != 17:
            return _unparsed("ipv4_other", f.direction, f.ts_ns, f.size, "non_rtps")
        offset, more = (frag & 0x1FFF) * 8, bool(frag & 0x2000)
        if offset or more:
            key = (buf[ETH_HEADER + 12:ETH_HEADER + 20], ident, f.direction)
            return self._fragment(key, offset, more, data, f)
        return Counted("ipv4_udp", f.direction, f.ts_ns, f.size, parse_udp(data, f.size))

    def _fragment(self, key: tuple, offset: int, more: bool, data: bytes,
                  f: Frame) -> Counted | None:
        """Keep a fragment; once the datagram is complete, its frames, counted at the first
        one's time (the window's edge moves by one datagram at most)."""
        e = self.fragments.setdefault(key, {"chunks": {}, "end": None, "size": 0, "n": 0,
                                            "ts": f.ts_ns})
        e["chunks"][offset] = data
        e["size"] += f.size
        e["n"] += 1
        if not more:
            e["end"] = offset + len(data)
        have, pos = e["chunks"], 0
        while pos in have:
            pos += len(have[pos])
        if e["end"] is None or pos < e["end"]:
            if len(self.fragments) > MAX_PENDING_FRAGMENTS:
                self._count(self._incomplete(next(iter(self.fragments))))
            return None
        del self.fragments[key]
        whole = b"".join(have[o] for o in sorted(have))[:e["end"]]
        try:
            parsed = parse_udp(whole, e["size"])
        except PARSE_ERRORS:
            parsed = Parsed([Part("unparsed", overhead=e["size"])])
        return Counted("ipv4_udp", f.direction, e["ts"], e["size"], parsed, e["n"])

    def _incomplete(self, key: tuple) -> Counted:
        e = self.fragments.pop(key)
        return Counted("ipv4_udp", key[2], e["ts"], e["size"],
                       Parsed([Part("unparsed", overhead=e["size"])]), e["n"])

    def flush(self) -> int:
        """Count the datagrams still in reassembly as ``unparsed``; how many they were."""
        keys = list(self.fragments)
        for key in keys:
            self._count(self._incomplete(key))
        return len(keys)

    def summary(self, duration_s: float) -> dict:
        """The JSON of the capture (see the module doc)."""
        a, b = self.window_ns
        win_s = ((b or self.last_ns or 0) - a) / 1e9 if a is not None else None
        return {"duration_s": round(duration_s, 3),
                "window": {"start_ns": a, "end_ns": b,
                           "s": round(win_s, 3) if win_s is not None else None,
                           "device_bytes": _delta(*self.dev_bytes)},
                "writers": {g: {"topic": e.topic, "type": e.type_name}
                            for g, e in sorted(self.writers.items())},
                "total": self._report(self.total, duration_s),
                "in_window": self._report(self.window, win_s) if win_s else None}

    def _report(self, tally: Tally, seconds: float) -> dict:
        return {d: _direction(t, self.writers, seconds) for d, t in tally.d.items()}


def _delta(a: dict | None, b: dict | None) -> dict | None:
    """What the device's own counters (``ip -s link``'s) counted in the window."""
    return {d: b[d] - a[d] for d in a} if a and b else None


def _direction(t: dict, writers: dict[str, Endpoint], seconds: float) -> dict:
    """One direction's figures: totals, protocols, submessages, rows by topic."""
    rows: dict[str, dict] = {}
    discovery: dict[str, dict] = {}
    for key, (samples, payload, overhead) in t["rows"].items():
        name = key if key[:2] not in ("w:", "c:") else (
            writers[key[2:]].topic if key[2:] in writers else f"? {key[2:]}")
        if key.startswith("d:"):
            name = "discovery"
            _bump(discovery, BUILTIN_WRITERS.get(key[2:], key[2:]), samples, overhead)
        r = rows.setdefault(name, {"samples": 0, "payload_bytes": 0, "overhead_bytes": 0,
                                   "control_bytes": 0})
        r["samples"] += samples
        r["payload_bytes"] += payload
        r["control_bytes" if key.startswith("c:") else "overhead_bytes"] += overhead
    for r in rows.values():
        r["bytes"] = r["payload_bytes"] + r["overhead_bytes"] + r["control_bytes"]
        r["bytes_per_s"] = round(r["bytes"] / seconds, 1) if seconds else None
    payload = sum(r["payload_bytes"] for r in rows.values())
    return {"packets": t["packets"], "bytes": t["bytes"],
            "bytes_per_s": round(t["bytes"] / seconds, 1) if seconds else None,
            "payload_bytes": payload, "overhead_bytes": t["bytes"] - payload,
            "protocols": {k: {"packets": v[0], "bytes": v[1]} for k, v in t["protocols"].items()},
            "submessages": {k: {"count": v[0], "bytes": v[1]}
                            for k, v in sorted(t["submessages"].items())},
            "by_topic": dict(sorted(rows.items(), key=lambda kv: -kv[1]["bytes"])),
            "discovery_by_writer": {k: {"samples": v[0], "bytes": v[1]}
                                    for k, v in sorted(discovery.items())}}


class _Stop:
    """SIGINT / SIGTERM / SIGHUP stop the capture; SIGUSR1 / SIGUSR2 open / close the window
    (installed at once: the orchestrator signals only after ``capturing`` was printed)."""

    def __init__(self, counter: LinkCounter) -> None:
        self.stop = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: setattr(self, "stop", True))
        for i, sig in enumerate((signal.SIGUSR1, signal.SIGUSR2)):
            signal.signal(sig, lambda *_, i=i: counter.mark(i))


def open_socket(interface: str) -> socket.socket:
    """A raw packet socket on ``interface`` with kernel receive timestamps (ns)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        with contextlib.suppress(OSError):      # SO_RCVBUFFORCE (33; root): past rmem_max
            sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((interface, ETH_P_ALL))
        sock.settimeout(0.2)
    except OSError:
        sock.close()
        raise
    return sock


def _frame(sock: socket.socket, interface: str) -> Frame | None:
    data, anc, _flags, addr = sock.recvmsg(1 << 18, socket.CMSG_SPACE(16))
    if addr[0] != interface:                 # before bind(), any interface's frames arrive
        return None
    ts = time.time_ns()
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack_from("qq", raw)
            ts = sec * 1_000_000_000 + nsec
    return Frame("tx" if addr[2] == PACKET_OUTGOING else "rx", len(data), ts, data)


def capture(sock: socket.socket, interface: str, counter: LinkCounter, stop: _Stop,
            duration: float) -> float:
    """Count frames until ``stop`` or ``duration`` seconds (0: no limit); the seconds spent."""
    t0 = time.monotonic()
    while not stop.stop and not (duration and time.monotonic() - t0 >= duration):
        try:
            f = _frame(sock, interface)
        except (socket.timeout, InterruptedError):
            continue
        except OSError as exc:        # the link down (a partition): wait; the device gone: stop
            if exc.errno != errno.ENETDOWN:
                break
            time.sleep(0.05)
            continue
        if f is not None:
            counter.add(f)
    return time.monotonic() - t0


def socket_drops(sock: socket.socket) -> int | None:
    """Frames the kernel dropped for a full socket buffer (None if unknown)."""
    try:
        return struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--interface", "-i", required=True, help="network interface (veth end)")
    ap.add_argument("--out", "-o", required=True, help="JSON file written at the end")
    ap.add_argument("--duration", type=float, default=0.0,
                    help="seconds to capture (default 0: until SIGINT / SIGTERM)")
    args = ap.parse_args(argv)
    if args.duration < 0:
        print(f"{PROG}: error: --duration must be >= 0", file=sys.stderr)
        return 2
    counter = LinkCounter(args.interface)
    stop = _Stop(counter)
    try:
        sock = open_socket(args.interface)
    except (OSError, AttributeError) as exc:     # AttributeError: no AF_PACKET on this OS
        print(f"{PROG}: error: raw socket on {args.interface}: {exc}", file=sys.stderr)
        return 3
    print(f"{PROG}: capturing on {args.interface}", flush=True)
    seconds = capture(sock, args.interface, counter, stop, args.duration)
    out = {"interface": args.interface, "socket_drops": socket_drops(sock),
           "fragments_incomplete": counter.flush(), **counter.summary(seconds)}
    sock.close()
    with open(args.out + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(f"{PROG}: {out['total']['tx']['bytes']} bytes sent, "
          f"{out['total']['rx']['bytes']} received in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
