"""The link counter's parser (edge_vlm_tools.linkstat) on hand-built frames: Ethernet + IPv4 +
UDP + RTPS 2.3 as on the wire (RTPS header: "RTPS", version, vendor, guidPrefix; submessage
header: id, flags (bit 0: little-endian), octetsToNextHeader). A SEDP publication names a
writer's topic; that writer's DATA is then counted under the topic, payload apart from
overhead; every byte lands in exactly one row; malformed frames are ``unparsed``, never an
exception; IPv4 fragments are reassembled; the window counts only the frames inside it."""
import json
import struct
import subprocess
import sys
import types

from edge_vlm_tools import linkstat
from edge_vlm_tools.linkstat import Frame, LinkCounter
from edge_vlm_tools.rtps_wire import parse_sedp

PREFIX_DRONE = bytes(range(1, 13))
WRITER = bytes.fromhex("00000103")          # a user writer, no key
TOPIC = "rt/event_camera/events"
TYPE = "event_camera_msgs::msg::dds_::EventPacket_"
ETH = bytes(12) + b"\x08\x00"


def _frame(udp_payload: bytes, ident: int = 1, frag: int = 0, chunk: bytes | None = None,
           ) -> bytes:
    """Ethernet + IPv4 (+ UDP unless ``chunk``: a raw fragment's bytes)."""
    body = chunk if chunk is not None else struct.pack("!HHHH", 7410, 7411,
                                                      8 + len(udp_payload), 0) + udp_payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, frag, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ETH + ip + body


def _sub(sid: int, flags: int, body: bytes, le: bool = True) -> bytes:
    return struct.pack("<BBH" if le else ">BBH", sid, flags | int(le), len(body)) + body


def _rtps(*subs: bytes) -> bytes:
    return b"RTPS" + bytes([2, 3, 1, 15]) + PREFIX_DRONE + b"".join(subs)


def _data(writer: bytes, payload: bytes, reader: bytes = bytes(4), sn: int = 1) -> bytes:
    return _sub(0x15, 0x04, struct.pack("<HH", 0, 16) + reader + writer
                + struct.pack("<iI", 0, sn) + payload)


def _cdr_string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<I", len(raw)) + raw + bytes(-len(raw) % 4)


def _param(pid: int, value: bytes) -> bytes:
    return struct.pack("<HH", pid, len(value)) + value


def _sedp(guid: bytes, topic: str, type_name: str) -> bytes:
    """A SEDP publication DATA (PL_CDR_LE) announcing ``guid``, a vendor-specific parameter
    first (Fast DDS sends 0x8007: its id & 0x3fff is PID_TYPE_NAME's)."""
    params = (_param(0x8007, b"\x13\x00\x00\x00") + _param(0x005A, guid)
              + _param(0x0005, _cdr_string(topic))
              + _param(0x0007, _cdr_string(type_name)) + _param(0x0001, b""))
    return _data(bytes.fromhex("000003c2"), b"\x00\x03\x00\x00" + params,
                 reader=bytes.fromhex("000003c7"))


def _heartbeat(writer: bytes) -> bytes:
    return _sub(0x07, 0x00, bytes(4) + writer + struct.pack("<iIiIi", 0, 1, 0, 1, 1))


def _statistics() -> bytes:
    """Fast DDS's statistics trailer (0x80), last in every message when built with them."""
    return _sub(0x80, 0x00, bytes(56))


def _info_ts() -> bytes:
    return _sub(0x09, 0x00, struct.pack("<II", 1, 2))


def _counter(frames: list[bytes], t0: int = 1_000) -> LinkCounter:
    c = LinkCounter()
    for i, f in enumerate(frames):
        c.add(Frame("tx", len(f), t0 + i, f))
    return c


def _check_rows_add_up(direction: dict) -> None:
    assert sum(r["bytes"] for r in direction["by_topic"].values()) == direction["bytes"]
    assert direction["payload_bytes"] + direction["overhead_bytes"] == direction["bytes"]
    assert sum(p["bytes"] for p in direction["protocols"].values()) == direction["bytes"]


def test_sedp_names_the_writer_then_its_data_is_counted_under_the_topic():
    payload = b"\x00\x01\x00\x00" + bytes(range(100))          # CDR_LE + 100 bytes
    sedp = _frame(_rtps(_info_ts(), _sedp(PREFIX_DRONE + WRITER, TOPIC, TYPE)))
    data = _frame(_rtps(_info_ts(), _data(WRITER, payload), _heartbeat(WRITER), _statistics()))
    out = _counter([sedp, data]).summary(2.0)
    assert out["writers"] == {(PREFIX_DRONE + WRITER).hex(): {"topic": TOPIC, "type": TYPE}}
    tx = out["total"]["tx"]
    _check_rows_add_up(tx)
    row = tx["by_topic"][TOPIC]
    assert row["samples"] == 1 and row["payload_bytes"] == len(payload)
    heartbeat = 4 + 28
    assert row["control_bytes"] == heartbeat
    # the DATA leads its datagram: Ethernet + IPv4 + UDP + RTPS headers, INFO_TS, DATA header,
    # the statistics trailer
    assert row["overhead_bytes"] == 14 + 20 + 8 + 20 + 12 + (4 + 20) + 60
    assert row["bytes"] == len(data) and row["bytes_per_s"] == len(data) / 2.0
    assert tx["by_topic"]["discovery"]["bytes"] == len(sedp)
    assert tx["by_topic"]["discovery"]["payload_bytes"] == 0
    assert tx["discovery_by_writer"] == {"sedp_publications": {"samples": 1, "bytes": len(sedp)}}
    assert tx["submessages"]["DATA"] == {"count": 2, "bytes": len(_sedp(bytes(16), TOPIC, TYPE))
                                         + len(_data(WRITER, payload))}
    assert tx["submessages"]["HEARTBEAT"]["count"] == 1
    assert tx["submessages"]["FASTDDS_STATISTICS"] == {"count": 1, "bytes": 60}
    assert tx["protocols"] == {"ipv4_udp": {"packets": 2, "bytes": len(sedp) + len(data)}}
    assert out["total"]["rx"]["bytes"] == 0


def test_a_writer_never_announced_keeps_its_guid():
    data = _frame(_rtps(_data(WRITER, b"\x00\x01\x00\x00abcd")))
    tx = _counter([data]).summary(1.0)["total"]["tx"]
    assert list(tx["by_topic"]) == ["? " + (PREFIX_DRONE + WRITER).hex()]


def test_big_endian_submessages_and_acknacks_go_to_the_remote_writer():
    ground = bytes(range(20, 32))
    acknack = _sub(0x06, 0x00, bytes.fromhex("00000104") + WRITER
                   + struct.pack(">iIIi", 0, 1, 0, 1), le=False)
    frames = [_frame(b"RTPS" + bytes([2, 3, 1, 15]) + ground
                     + _sedp(PREFIX_DRONE + WRITER, TOPIC, TYPE)),
              _frame(_rtps(_sub(0x0E, 0, PREFIX_DRONE), acknack))]
    tx = _counter(frames).summary(1.0)["total"]["tx"]
    _check_rows_add_up(tx)
    assert tx["by_topic"][TOPIC]["control_bytes"] == len(frames[1])
    assert tx["by_topic"][TOPIC]["payload_bytes"] == 0


def test_truncated_and_malformed_frames_are_unparsed_never_raised():
    good = _frame(_rtps(_data(WRITER, b"\x00\x01\x00\x00" + bytes(40))))
    frames = [good[:len(good) - 30],                  # cut: IPv4 length past the frame
              good[:10],                              # not even an Ethernet header
              _frame(_rtps(_data(WRITER, bytes(8)))[:-3]),   # DATA past the datagram's end
              _frame(b"RTPS" + bytes(5)),             # short RTPS header
              _frame(_rtps(_sub(0x15, 0x06, struct.pack("<HH", 0, 16) + bytes(16)
                                + struct.pack("<HH", 0x0070, 200))))]   # QoS past the end
    c = _counter(frames)
    tx = c.summary(1.0)["total"]["tx"]
    _check_rows_add_up(tx)
    assert set(tx["by_topic"]) == {"unparsed"}
    assert tx["by_topic"]["unparsed"]["bytes"] == sum(map(len, frames))
    assert tx["packets"] == len(frames)


def test_non_rtps_traffic_has_its_own_row():
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    udp = _frame(b"not rtps at all")
    tx = _counter([arp, udp]).summary(1.0)["total"]["tx"]
    assert tx["by_topic"]["non_rtps"]["bytes"] == len(arp) + len(udp)
    assert set(tx["protocols"]) == {"arp", "ipv4_udp"}


def test_ipv4_fragments_are_reassembled():
    payload = b"\x00\x01\x00\x00" + bytes(3000)
    dgram = struct.pack("!HHHH", 7410, 7411, 0, 0) + _rtps(_data(WRITER, payload))
    cut = 1480                                         # a multiple of 8
    frames = [_frame(b"", ident=9, frag=0x2000, chunk=dgram[:cut]),
              _frame(b"", ident=9, frag=cut // 8, chunk=dgram[cut:])]
    c = _counter(frames)
    tx = c.summary(1.0)["total"]["tx"]
    _check_rows_add_up(tx)
    row = tx["by_topic"]["? " + (PREFIX_DRONE + WRITER).hex()]
    assert row["payload_bytes"] == len(payload) and row["samples"] == 1
    assert row["bytes"] == sum(map(len, frames))
    assert tx["by_topic"].get("unparsed", {"bytes": 0})["bytes"] == 0
    assert not c.fragments


def test_a_fragment_never_completed_is_unparsed_at_the_end():
    frames = [_frame(b"", ident=5, frag=0x2000, chunk=bytes(1480))]
    c = _counter(frames)
    assert c.summary(1.0)["total"]["tx"]["bytes"] == 0          # waits for the rest
    assert c.flush() == 1
    tx = c.summary(1.0)["total"]["tx"]
    assert tx["by_topic"]["unparsed"]["bytes"] == tx["bytes"] == len(frames[0])
    assert tx["packets"] == 1


def test_a_datagram_across_the_window_edge_is_counted_once_by_its_first_fragment():
    payload = b"\x00\x01\x00\x00" + bytes(3000)
    dgram = struct.pack("!HHHH", 7410, 7411, 0, 0) + _rtps(_data(WRITER, payload))
    frames = [_frame(b"", ident=9, frag=0x2000, chunk=dgram[:1480]),
              _frame(b"", ident=9, frag=1480 // 8, chunk=dgram[1480:])]
    c = LinkCounter()
    c.window_ns = [2_000, None]          # opens between the two fragments
    for t, f in zip((1_000, 3_000), frames):
        c.add(Frame("tx", len(f), t, f))
    out = c.summary(1.0)
    for span, n in (("total", 2), ("in_window", 0)):
        tx = out[span]["tx"]
        assert tx["packets"] == n
        assert sum(r["bytes"] for r in tx["by_topic"].values()) == tx["bytes"]


def test_the_window_counts_the_frames_inside_it():
    data = _frame(_rtps(_data(WRITER, b"\x00\x01\x00\x00abcd")))
    c = LinkCounter()
    c.window_ns = [10**9, 3 * 10**9]
    for t in (0.5, 1.0, 1.5, 3.0, 3.5):
        c.add(Frame("tx", len(data), int(t * 1e9), data))
    out = c.summary(4.0)
    assert out["total"]["tx"]["packets"] == 5
    assert out["in_window"]["tx"]["packets"] == 2           # 1.0 and 1.5: [start, end)
    assert out["window"]["s"] == 2.0
    assert out["in_window"]["tx"]["bytes_per_s"] == 2 * len(data) / 2.0


def test_sedp_without_a_topic_is_ignored():
    assert parse_sedp(b"\x00\x03\x00\x00" + _param(0x0001, b"")) is None
    assert parse_sedp(b"\x00\x01\x00\x00") is None                 # plain CDR: not a PL


def test_bad_arguments_give_one_error_line():
    # as a module, and as the script the orchestration runs (no PYTHONPATH: its own folder)
    script = [sys.executable, linkstat.__file__]
    for cmd, args, rc in (
            ([sys.executable, "-m", "edge_vlm_tools.linkstat"],
             ["-i", "lo", "-o", "/dev/null", "--duration", "-1"], 2),
            (script, ["-i", "lo", "-o", "/dev/null", "--duration", "-1"], 2),
            (script, ["-i", "no-such-if0", "-o", "/dev/null", "--duration", "0.1"], 3)):
        env = {"PYTHONPATH": ":".join(sys.path)} if "-m" in cmd else {}
        res = subprocess.run(cmd + args, capture_output=True, text=True, timeout=30, env=env)
        assert res.returncode == rc, res.stderr
        assert res.stderr.count("error:") == 1 and "Traceback" not in res.stderr


def test_the_bench_reads_the_counters_json(tmp_path):
    """edge_vlm.bench.link_topics (the multihost figures) on a JSON the counter wrote."""
    from edge_vlm.bench.link_topics import link_by_topic
    payload = b"\x00\x01\x00\x00" + bytes(96)
    frames = [_frame(_rtps(_sedp(PREFIX_DRONE + WRITER, TOPIC, TYPE))),
              _frame(_rtps(_info_ts(), _data(WRITER, payload)))]
    c = LinkCounter()
    c.window_ns = [10**8, 10**8 + 4 * 10**9]
    for i, f in enumerate(frames):
        c.add(Frame("tx", len(f), 10**9 + i, f))
    (tmp_path / "linkstat.json").write_text(json.dumps(c.summary(5.0)))
    by = link_by_topic(str(tmp_path), {"linkstat": "linkstat.json"})
    assert by["window_s"] == 4.0 and by["bytes"] == sum(map(len, frames))
    assert by["rows"][TOPIC]["payload"] == len(payload) / 4.0
    assert by["rows"][TOPIC]["samples_per_s"] == 0.2
    assert by["rows"]["discovery"]["overhead"] == len(frames[0]) / 4.0
    assert by["overhead_bytes_per_s"] == (by["bytes"] - len(payload)) / 4.0
    # no counter (not root, no AF_PACKET) or an unreadable file: no figure, no exception
    assert link_by_topic(str(tmp_path), {}) is None
    (tmp_path / "bad.json").write_text("{")
    assert link_by_topic(str(tmp_path), {"linkstat": "bad.json"}) is None


def test_a_counter_that_cannot_start_is_left_out(tmp_path):
    """start_linkstat returns None (the run goes on) when the counter cannot capture: here its
    namespace does not exist, as the socket would fail without root."""
    from edge_vlm_tools.netns import Host, Link, mark_linkstat, start_linkstat
    link = Link("evlm-no-such-ns-211", "evlm-no-such-ns-211g", ("evdx", "evgx"),
                ("10.213.250.1", "10.213.250.2"))
    host = Host(link, "drone", str(tmp_path), 211)
    assert start_linkstat(host, "evdx", str(tmp_path / "linkstat.json")) is None
    assert "linkstat" not in host.procs and not (tmp_path / "linkstat.json").exists()
    mark_linkstat(None, False)                         # no counter: marks do nothing


def test_capture_waits_while_the_link_is_down_and_stops_when_the_device_goes():
    """A partition takes the interface down (recvmsg: ENETDOWN): the capture goes on; a device
    that disappears ends it (the JSON is still written by main)."""
    import errno
    errors = [OSError(errno.ENETDOWN, "down"), OSError(errno.ENETDOWN, "down"),
              OSError(errno.ENODEV, "gone")]

    class Sock:
        calls = 0

        def recvmsg(self, *_):
            Sock.calls += 1
            raise errors[Sock.calls - 1]

    c = LinkCounter()
    stop = types.SimpleNamespace(stop=False)       # _Stop's flag, without its signal handlers
    linkstat.capture(Sock(), "evdx", c, stop, 5.0)
    assert Sock.calls == 3 and not stop.stop
