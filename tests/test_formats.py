"""Readers and the libcaer_cmp codec: real-bag oracle, bit layouts, round trips,
format detection, ``edge-vlm stats`` and ``edge-vlm convert``."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from conftest import SHARED_REAL
from edge_vlm.io.codecs import SUPPORTED_ENCODINGS, decode_packet, make_decoder
from edge_vlm.io.codecs.libcaer_cmp import LibcaerCmpDecoder, encode_libcaer_cmp
from edge_vlm.events import EVENT_DTYPE, EventDecodeError, make_events
from edge_vlm.io.formats.detect import detect_format, read_events
from edge_vlm.io.formats.aedat2 import decode_aedat2, read_aedat2, write_aedat2
from edge_vlm.io.formats.prophesee import (decode_dat, decode_raw, write_dat, write_raw_evt2,
    write_raw_evt3)
from edge_vlm.io.formats.rpg import decode_rpg, write_rpg
from edge_vlm.io.stats import stats_path

CAER = os.path.join(SHARED_REAL, "libcaer_cmp_davis346")
B640 = os.path.join(SHARED_REAL, "evt3_prophesee_640x480")
need_real = pytest.mark.skipif(not os.path.isdir(SHARED_REAL), reason="real bags not available")


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(a[f], b[f]) for f in "txyp")


def _rand(n, w=128, h=128, seed=0, t0_us=1_000_000):
    rng = np.random.default_rng(seed)
    us = t0_us + np.cumsum(rng.integers(0, 300, n))
    return make_events(us * 1000, rng.integers(0, w, n), rng.integers(0, h, n),
                       rng.integers(0, 2, n))


def _w16(*words) -> bytes:
    return struct.pack(f"<{len(words)}H", *words)


# ------------------------------------------------------------------ libcaer_cmp
@need_real
def test_libcaer_cmp_real_bag_oracle():
    """README oracle: 571,266 CD events, 211,043 ON, 360,223 OFF, first
    1,744,227,144,732,712 us."""
    from edge_vlm.io.bag_reader import iter_events
    chunks = list(iter_events(CAER))
    ev = np.concatenate(chunks)
    assert len(chunks) == 100
    assert len(ev) == 571_266
    assert int(ev["p"].sum()) == 211_043
    assert int((ev["p"] == 0).sum()) == 360_223
    assert int(ev["t"][0]) == 1_744_227_144_732_712 * 1000
    assert int(ev["x"].max()) < 346 and int(ev["y"].max()) < 260
    assert np.all(np.diff(ev["t"]) >= 0)
    st = stats_path(CAER)
    assert (st["events"], st["on"], st["off"]) == (571_266, 211_043, 360_223)
    assert st["t_first_ns"] // 1000 == 1_744_227_144_732_712
    assert (st["encoding"], st["width"], st["height"]) == ("libcaer_cmp", 346, 260)


def test_libcaer_cmp_registered():
    assert "libcaer_cmp" in SUPPORTED_ENCODINGS
    assert isinstance(make_decoder("libcaer_cmp"), LibcaerCmpDecoder)


def test_libcaer_cmp_hand_built_words():
    # ADDR_X 5 | ADDR_Y y=7 ON | TIME_LOW 3 | VECT_BASE_Y 8 OFF | VECT_8 0b101 |
    # VECT_8 0b1 (base now 16) | TIME_HIGH 1 | ADDR_X 9 | ADDR_Y y=2 OFF
    data = _w16(0x2005, 0x3807, 0x1003, 0x4008, 0x5005, 0x5001, 0x0001, 0x2009, 0x3002)
    ev = decode_packet("libcaer_cmp", data, 346, 260, 1_000_000_000)
    assert ev.dtype == EVENT_DTYPE
    assert ev["x"].tolist() == [5, 5, 5, 5, 9]
    assert ev["y"].tolist() == [7, 8, 10, 16, 2]
    assert ev["p"].tolist() == [1, 0, 0, 0, 0]
    assert ev["t"].tolist() == [10**9, 10**9 + 3000, 10**9 + 3000, 10**9 + 3000,
                                10**9 + ((1 << 12) | 3) * 1000]


def test_libcaer_cmp_state_carries_x_and_vector_base():
    dec = LibcaerCmpDecoder()
    dec.decode(_w16(0x2007, 0x4810), 64, 64, 0)           # x=7, base 16 ON, no events
    ev = dec.decode(_w16(0x5003, 0x5080), 64, 64, 5000)   # time restarts at time_base
    assert ev["x"].tolist() == [7, 7, 7]
    assert ev["y"].tolist() == [16, 17, 31]
    assert ev["p"].tolist() == [1, 1, 1]
    assert ev["t"].tolist() == [5000] * 3
    dec.reset()
    assert dec.decode(_w16(0x3001), 64, 64, 0)["x"].tolist() == [0]


@pytest.mark.parametrize("data,msg", [
    (b"\x01", "16-bit"), (_w16(0x7000), "code 7"), (_w16(0x6000), "code 6"),
    (_w16(0x2100, 0x3000), "x=256"), (_w16(0x3100), "y=256"),
    (_w16(0x40F8, 0x5080), "y=255"),
])
def test_libcaer_cmp_errors(data, msg):
    dec = LibcaerCmpDecoder()
    with pytest.raises(EventDecodeError, match=msg.split("=")[0]):
        dec.decode(data, 255, 255, 0)
    assert (dec.x, dec.base_y, dec.pol, dec.packets) == (0, 0, 0, 0)   # state untouched


def test_libcaer_cmp_round_trip_and_split():
    ev = _rand(4000, 346, 260, seed=3, t0_us=0)
    tb = 123_000_000
    ev["t"] += tb
    payload = encode_libcaer_cmp(ev, tb)
    assert _same(LibcaerCmpDecoder().decode(payload, 346, 260, tb), ev)
    # vertical runs compress to VECT_8
    col = make_events(np.full(8, tb), np.full(8, 3), np.arange(8, 16), np.ones(8))
    words = np.frombuffer(encode_libcaer_cmp(col, tb), "<u2")
    assert (words >> 12).tolist() == [2, 4, 5]
    assert _same(LibcaerCmpDecoder().decode(words.tobytes(), 16, 16, tb), col)


# ------------------------------------------------------------------ AEDAT 2.0
def _aedat2_bytes(pairs,
                  header=b"#!AER-DAT2.0\r\n# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128\r\n"):
    return header + b"".join(struct.pack(">II", a, t) for a, t in pairs)


def test_aedat2_dvs128_bit_layout():
    # raw x=3, y=5, bit0=0 (jAER ON); raw x=127 y=0 bit0=1 (OFF); a special event (bit 15)
    buf = _aedat2_bytes([((5 << 8) | (3 << 1), 10), ((127 << 1) | 1, 20), (0x8000, 30)])
    ev, info = decode_aedat2(buf)
    assert info["camera"] == "DVS128" and info["camera_from_header"] == "DVS128"
    assert (info["width"], info["height"], info["special_events"]) == (128, 128, 1)
    assert ev["x"].tolist() == [124, 0] and ev["y"].tolist() == [122, 127]
    assert ev["p"].tolist() == [1, 0] and ev["t"].tolist() == [10_000, 20_000]
    raw, _ = decode_aedat2(buf, orientation="raw")
    assert raw["x"].tolist() == [3, 127] and raw["y"].tolist() == [5, 0]


def test_aedat2_davis240_layout_and_wrap():
    a_on = (10 << 22) | (20 << 12) | (1 << 11)
    a_off = (179 << 22) | (239 << 12)
    pairs = [(a_on, 0xFFFFFFF0), (a_off, 5), (0x80000000 | 7, 6), (0x400, 7)]
    buf = _aedat2_bytes(pairs,
                        b"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C\r\n")
    ev, info = decode_aedat2(buf)
    assert (info["camera"], info["width"], info["height"]) == ("DAVIS240", 240, 180)
    assert ev["x"].tolist() == [219, 0] and ev["y"].tolist() == [169, 0]
    assert ev["p"].tolist() == [1, 0]
    assert ev["t"].tolist() == [0xFFFFFFF0 * 1000, (5 + (1 << 32)) * 1000]
    assert info["special_events"] == 2
    ev2, info2 = decode_aedat2(buf, camera="DVS128")     # explicit camera wins
    assert info2["camera"] == "DVS128"


@pytest.mark.parametrize("camera,size", [("DVS128", (128, 128)), ("DAVIS240", (240, 180))])
def test_aedat2_round_trip(tmp_path, camera, size):
    ev = _rand(3000, *size, seed=1)
    p = tmp_path / "rec.aedat"
    write_aedat2(p, ev, camera=camera)
    back, info = read_aedat2(p)
    assert _same(back, ev) and info["camera"] == camera
    # DAVIS240 raw y=140 puts '#' (0x23) in the first data byte; the explicit
    # end-of-header line keeps it from being read as a header line (y = 179 - 140)
    ev2 = make_events([1000], [0], [39], [1])
    write_aedat2(tmp_path / "h.aedat", ev2, camera="DAVIS240")
    assert _same(read_aedat2(tmp_path / "h.aedat")[0], ev2)


def test_aedat2_errors():
    with pytest.raises(EventDecodeError, match="truncated"):
        decode_aedat2(_aedat2_bytes([(0, 1)]) + b"\x00")
    with pytest.raises(EventDecodeError, match="AER-DAT2.0"):
        decode_aedat2(b"#!AER-DAT3.1\r\n")


# ------------------------------------------------------------------ Prophesee
def test_evt2_hand_built():
    words = [0x1000_0000 | (3 << 22) | (5 << 11) | 6,     # CD before TIME_HIGH: dropped
             0x8000_0002,                                 # time high 2 -> 128 us
             0x1000_0000 | (3 << 22) | (5 << 11) | 6,     # ON x5 y6 t=131
             0x0000_0000 | (63 << 22) | (639 << 11) | 479,  # OFF t=191
             0xA000_0000 | (1 << 22) | 1,                 # trigger rising
             0xE000_0000, 0xF000_0000]
    buf = b"% format EVT2;height=480;width=640\n% end\n" + struct.pack("<7I", *words)
    ev, info = decode_raw(buf)
    assert ev["t"].tolist() == [131_000, 191_000]
    assert ev["x"].tolist() == [5, 639] and ev["y"].tolist() == [6, 479]
    assert ev["p"].tolist() == [1, 0]
    assert (info["width"], info["height"], info["triggers_rising"]) == (640, 480, 1)
    assert info["dropped_before_time"] == 1
    with pytest.raises(EventDecodeError, match="0x3"):
        decode_raw(b"% evt 2.0\n" + struct.pack("<I", 0x3000_0000))
    with pytest.raises(EventDecodeError, match="outside"):
        decode_raw(b"% evt 2.0\n% geometry 10x10\n" + struct.pack("<2I", 0x8000_0000, 20 << 11))


def test_evt2_round_trip(tmp_path):
    ev = _rand(5000, 640, 480, seed=4)
    write_raw_evt2(tmp_path / "a.raw", ev, 640, 480)
    back, info = read_events(tmp_path / "a.raw")
    assert _same(back, ev) and info["format"] == "prophesee_raw_evt2"


@need_real
@pytest.mark.parametrize("style", ["format", "legacy"])
def test_evt3_raw_from_real_bag_matches_oracle(tmp_path, style):
    from edge_vlm.io.bag_reader import iter_event_packets
    payload = b"".join(bytes(m.events) for m in iter_event_packets(B640))
    write_raw_evt3(tmp_path / "r.raw", payload, 640, 480, header_style=style)
    ev, info = read_events(tmp_path / "r.raw")
    assert (info["format"], info["width"], info["height"]) == ("prophesee_raw_evt3", 640, 480)
    assert len(ev) == 343_474 and int(ev["p"].sum()) == 125_183
    assert int(ev["x"].sum()) == 116_731_888 and int(ev["y"].sum()) == 80_879_209
    st = stats_path(tmp_path / "r.raw")
    assert st["events"] == 343_474 and st["source"] == "prophesee_raw_evt3"


def test_dat_hand_built_and_round_trip(tmp_path):
    d = 7 | (9 << 14) | (1 << 28)
    buf = (b"% Version 2\n% Width 304\n% Height 240\n" + bytes([0x0C, 8])
           + struct.pack("<II", 42, d))
    ev, info = decode_dat(buf)
    assert ev.tolist() == make_events([42_000], [7], [9], [1]).tolist()
    assert (info["width"], info["height"], info["size_source"]) == (304, 240, "header")
    ev2, info2 = decode_dat(b"% no size\n" + bytes([0, 8]) + struct.pack("<II", 1, d))
    assert (info2["width"], info2["height"], info2["size_source"]) == (8, 10, "inferred")
    with pytest.raises(EventDecodeError, match="size"):
        decode_dat(b"% x\n" + bytes([0, 16]))
    big = _rand(4000, 1280, 720, seed=5)
    write_dat(tmp_path / "a.dat", big, 1280, 720)
    back, info = read_events(tmp_path / "a.dat")
    assert _same(back, big) and (info["width"], info["height"]) == (1280, 720)


# ------------------------------------------------------------------ RPG events.txt
def test_rpg_exact_ns_and_header(tmp_path):
    ev, info = decode_rpg(b"240 180\n1468941032.229165635 33 39 1\n1468941032.2291657 0 0 0\n"
                          b"0.5 239 179 -1\n")
    assert ev["t"].tolist() == [1468941032_229165635, 1468941032_229165700, 500_000_000]
    assert ev["x"].tolist() == [33, 0, 239] and ev["p"].tolist() == [1, 0, 0]
    assert (info["width"], info["height"], info["size_source"]) == (240, 180, "header")
    ev2, info2 = decode_rpg("1e-3 1 2 1\n")
    assert ev2["t"].tolist() == [1_000_000] and (info2["width"], info2["height"]) == (2, 3)
    big = _rand(2000, 240, 180, seed=6)
    big["t"] += 7                                      # odd ns survive
    write_rpg(tmp_path / "events.txt", big, 240, 180)
    back, info3 = read_events(tmp_path / "events.txt")
    assert _same(back, big) and info3["format"] == "rpg_txt"


@pytest.mark.parametrize("text", ["1 2 3\n", "0.1 1 2 5\n", "0.1 -1 2 1\n", "10 10\n0.1 10 2 1\n",
                                  "nan 1 1 1\n", "0.1 a 1 1\n", b"\xff\xfe"])
def test_rpg_errors(text):
    with pytest.raises(EventDecodeError):
        decode_rpg(text)


# ------------------------------------------------------------------ AEDAT 4.0
def test_aedat4_round_trip_and_corruption(tmp_path):
    pytest.importorskip("dv_processing")
    from edge_vlm.io.formats.aedat4 import read_aedat4, write_aedat4
    ev = _rand(500, 346, 260, seed=7)
    p = tmp_path / "a.aedat4"
    write_aedat4(p, ev, 346, 260)
    back, info = read_events(p)
    assert _same(back, ev)
    assert (info["format"], info["width"], info["height"]) == ("aedat4", 346, 260)
    assert _same(read_aedat4(p, isolate=False)[0], ev)
    bad = tmp_path / "bad.aedat4"
    bad.write_bytes(p.read_bytes()[:200])
    with pytest.raises(EventDecodeError):
        read_aedat4(bad, timeout=20)


# ------------------------------------------------------------------ detect / stats / convert
def test_detect_dispatch(tmp_path):
    ev = _rand(100)
    write_aedat2(tmp_path / "a.aedat", ev)
    write_dat(tmp_path / "b.dat", ev, 128, 128)
    write_raw_evt2(tmp_path / "c.raw", ev, 128, 128)
    write_rpg(tmp_path / "d.txt", ev)
    from edge_vlm.io.formats.aedat31 import write_aedat31
    write_aedat31(tmp_path / "e.aedat", ev)
    kinds = {n: detect_format(tmp_path / n)
             for n in ("a.aedat", "b.dat", "c.raw", "d.txt", "e.aedat")}
    assert kinds == {"a.aedat": "aedat2", "b.dat": "dat", "c.raw": "raw", "d.txt": "rpg",
                     "e.aedat": "aedat3.1"}
    for n in kinds:
        back, info = read_events(tmp_path / n)
        assert _same(back, ev), n
        st = stats_path(tmp_path / n)
        assert st["events"] == 100 and st["on"] == int(ev["p"].sum()), n
    (tmp_path / "x.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(EventDecodeError):
        read_events(tmp_path / "x.bin")


def _convert(argv):
    from edge_vlm.cli import main
    return main(["convert", *argv])


def test_convert_keeps_sensor_size(tmp_path, capsys):
    ev = _rand(3000, 640, 480, seed=8)
    write_raw_evt2(tmp_path / "in.raw", ev, 640, 480)
    assert _convert([str(tmp_path / "in.raw"), str(tmp_path / "bag"), "--storage", "mcap",
                     "--packet-ms", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["events"], out["width"], out["height"]) == (3000, 640, 480)
    back, info = read_events(tmp_path / "bag")
    assert _same(back, ev) and (info["width"], info["height"]) == (640, 480)
    assert _convert([str(tmp_path / "missing.raw"), str(tmp_path / "bag2")]) == 2


def test_convert_dvs_gesture_ground_truth(tmp_path, capsys):
    from edge_vlm.io.bag_reader import iter_messages
    from edge_vlm.io.bag_writer import STRING_TYPE
    from edge_vlm.io.bag_reader import typestore
    from edge_vlm.datasets.dvs128_gesture import Segment, write_splits, write_trial
    ev = _rand(4000, seed=9, t0_us=0)
    root = tmp_path / "DvsGesture"
    segs = [Segment(3, 100_000, 300_000), Segment(11, 400_000, 600_000)]
    trial = write_trial(root, "user02_led.aedat", ev, segs)
    write_splits(root, [], ["user02_led.aedat"])
    assert _convert([str(trial), str(tmp_path / "bag")]) == 0
    ts = typestore()
    gts = [json.loads(ts.deserialize_cdr(raw, STRING_TYPE).data)
           for _, typ, _, raw in iter_messages(tmp_path / "bag", ["/edge_vlm/ground_truth"])]
    assert [g["label"] for g in gts] == [3, 11]
    assert gts[0]["class_name"] == "left_hand_wave" and gts[0]["t_start_ns"] == 100_000_000
    assert gts[0]["t_end_ns"] == 300_000_000 and len(gts[0]["references"]) >= 5
    assert gts[0]["attributes"]["subject"] == 2 and gts[0]["clip_id"] == "user02_led_00"
    capsys.readouterr()
    assert _convert([str(root), str(tmp_path / "bags"), "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["trials"] == 1
    assert stats_path(tmp_path / "bags" / "user02_led")["events"] == 4000
