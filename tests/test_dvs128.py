"""Tests for edge_vlm.dvs128: AEDAT 3.1, labels CSV, split lists, dataset dir."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_vlm.datasets.dvs128_gesture import (GESTURE_CLASSES, Dvs128Dataset,
    Segment, class_label, class_name, labels_path, parse_trial_name, read_labels_csv,
    read_split_list, write_labels_csv, write_split_list, write_splits, write_trial)
from edge_vlm.io.formats.aedat31 import (PACKET_HEADER_SIZE, read_aedat31, write_aedat31,
    write_options)
from edge_vlm.events import EVENT_DTYPE, EventDecodeError, make_events

HDR = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality of every field (ignores the dtype's padding bytes)."""
    return a.dtype == b.dtype == EVENT_DTYPE and len(a) == len(b) and all(
        a[f].tobytes() == b[f].tobytes() for f in EVENT_DTYPE.names)


def _rand_events(rng: np.random.Generator, n: int, t0_us: int = 0) -> np.ndarray:
    us = t0_us + np.cumsum(rng.integers(0, 50, n))
    return make_events(us * 1000, rng.integers(0, 128, n), rng.integers(0, 128, n),
                       rng.integers(0, 2, n))


def _packet(etype: int, size: int, overflow: int, payload: bytes, cap: int, num: int,
            source: int = 1, tsoff: int = 4) -> bytes:
    return struct.pack("<hhiiiiii", etype, source, size, tsoff, overflow, cap, num, num) + payload


def _pol(x: int, y: int, p: int, ts: int, valid: int = 1) -> bytes:
    return struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | valid, ts)


def test_bit_layout_hand_built_file(tmp_path):
    """Decode a file built byte by byte from the libcaer layout."""
    pol = _pol(5, 7, 1, 100) + _pol(127, 0, 0, 200, valid=0) + _pol(0, 127, 0, 300)
    special = struct.pack("<Ii", 0, 150) * 2  # type 0, 8-byte events
    unused_slot = b"\xff" * 8  # capacity 4 > number 3: slot must be ignored
    data = (HDR + _packet(0, 8, 0, special, 2, 2)
            + _packet(1, 8, 0, pol + unused_slot, 4, 3)
            + _packet(1, 8, 1, _pol(1, 2, 1, 5), 1, 1))
    f = tmp_path / "hand.aedat"
    f.write_bytes(data)
    ev, info = read_aedat31(f)
    assert ev.dtype == EVENT_DTYPE
    assert ev["x"].tolist() == [5, 0, 1]
    assert ev["y"].tolist() == [7, 127, 2]
    assert ev["p"].tolist() == [1, 0, 1]
    assert ev["t"].tolist() == [100_000, 300_000, ((1 << 31) | 5) * 1000]
    assert info["source"] == "DVS128" and info["source_id"] == 1
    assert info["packets"] == 3 and info["polarity_packets"] == 2
    assert info["skipped_events"] == 2 and info["skipped_by_type"] == {0: 2}
    assert info["invalid_events"] == 1
    assert info["header"][0] == "#!AER-DAT3.1" and info["header"][-1] == "#!END-HEADER"


def test_round_trip_events_and_bytes(tmp_path):
    rng = np.random.default_rng(0)
    ev = _rand_events(rng, 20_000, t0_us=123_456)
    a = tmp_path / "a.aedat"
    write_aedat31(a, ev, packet_size=3000, start_time="2017-03-31 12:36:14 (TZ-0700)",
                  header_extra=["#comment one", "comment two"])
    back, info = read_aedat31(a)
    assert _same(back, ev)
    assert info["polarity_packets"] == 7 and info["packet_size"] == 3000
    assert info["start_time"] == "2017-03-31 12:36:14 (TZ-0700)"
    assert info["monotonic"]
    b = tmp_path / "b.aedat"
    write_aedat31(b, back, **write_options(info))
    assert b.read_bytes() == a.read_bytes()


def test_header_is_deterministic(tmp_path):
    write_aedat31(tmp_path / "e.aedat", np.zeros(0, EVENT_DTYPE))
    assert (tmp_path / "e.aedat").read_bytes() == HDR
    ev, info = read_aedat31(tmp_path / "e.aedat")
    assert len(ev) == 0 and info["packets"] == 0 and info["start_time"] is None


def test_time_overflow_across_2_pow_31_us(tmp_path):
    us = np.array([2**31 - 2, 2**31 - 1, 2**31, 2**31 + 5, 3 * 2**31 + 7], np.int64)
    ev = make_events(us * 1000, [1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [1, 0, 1, 0, 1])
    f = tmp_path / "ovf.aedat"
    write_aedat31(f, ev)
    back, info = read_aedat31(f)
    assert _same(back, ev)
    assert info["polarity_packets"] == 3  # one per overflow value (0, 1, 3)
    raw = f.read_bytes()[len(HDR):]
    # second packet header: overflow 1, two events, timestamps 0 and 5
    second = raw[PACKET_HEADER_SIZE + 16:]
    assert struct.unpack("<hhiiiiii", second[:28])[4] == 1
    assert struct.unpack("<Ii", second[28:36])[1] == 0


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**15 - 1),
                          st.integers(0, 2**15 - 1), st.integers(0, 1)), max_size=60),
       st.integers(1, 7))
def test_round_trip_property(tmp_path, rows, packet_size):
    t, x, y, p = (np.array(c, np.int64) for c in zip(*rows)) if rows else ([], [], [], [])
    ev = make_events(np.asarray(t, np.int64) * 1000, x, y, p)  # any order, any times
    f = tmp_path / "prop.aedat"
    write_aedat31(f, ev, packet_size=packet_size)
    back, info = read_aedat31(f)
    assert _same(back, ev)
    g = tmp_path / "prop2.aedat"
    write_aedat31(g, back, **write_options(info))
    assert g.read_bytes() == f.read_bytes()


@pytest.mark.parametrize("bad", [
    make_events([1500], [0], [0], [1]),       # not whole microseconds
    make_events([-1000], [0], [0], [1]),      # negative
    make_events([1000], [40000], [0], [1]),   # x beyond 15 bits
    make_events([1000], [0], [0], [2]),       # polarity not 0/1
])
def test_write_rejects_unrepresentable(tmp_path, bad):
    with pytest.raises(ValueError):
        write_aedat31(tmp_path / "bad.aedat", bad)


def _good_file(tmp_path) -> bytes:
    f = tmp_path / "g.aedat"
    write_aedat31(f, _rand_events(np.random.default_rng(1), 100), packet_size=40)
    return f.read_bytes()


@pytest.mark.parametrize("cut", [1, 5, 27, 28, 29, 100])
def test_truncated_file_raises(tmp_path, cut):
    data = _good_file(tmp_path)
    f = tmp_path / "t.aedat"
    f.write_bytes(data[:-cut])
    with pytest.raises(EventDecodeError, match="truncated"):
        read_aedat31(f)


@pytest.mark.parametrize("data", [
    b"",
    b"\x00\x01garbage" * 10,
    b"#!AER-DAT2.0\r\n#!END-HEADER\r\n",
    b"#!AER-DAT3.1\r\n#Format: RAW\r\n",                  # no END-HEADER
    b"#!AER-DAT3.1\r\n#Format: RAW\r\n\x01\x00\x08\x00",  # binary before END-HEADER
    b"#!AER-DAT3.1\r\n#Format: RAW",                      # unterminated line
    b"#!AER-DAT3.1\r\n#Format: COMPRESSED\r\n#!END-HEADER\r\n",
    HDR + _packet(1, 8, 0, b"", 0, 5),                     # number > capacity
    HDR + _packet(1, 4, 0, b"\x00" * 4, 1, 1),             # bad polarity event size
    HDR + _packet(1, 8, -1, b"", 0, 0),                    # negative overflow
    HDR + _packet(1, -8, 0, b"", 1, 1),                    # negative event size
    HDR + _packet(1, 8, 0, _pol(1, 1, 1, -5), 1, 1),       # negative timestamp
])
def test_garbage_raises_decode_error(tmp_path, data):
    f = tmp_path / "x.aedat"
    f.write_bytes(data)
    with pytest.raises(EventDecodeError):
        read_aedat31(f)


def test_labels_csv_round_trip(tmp_path):
    segs = [Segment(1, 80048267, 85092665), Segment(11, 90000000, 95000000), Segment(5, 0, 0)]
    f = tmp_path / "user01_lab_labels.csv"
    write_labels_csv(f, segs)
    assert f.read_text().splitlines()[0] == "class,startTime_usec,endTime_usec"
    assert read_labels_csv(f) == segs
    f.write_bytes(b"class,startTime_usec,endTime_usec\r\n1,10,20\r\n\r\n")  # CRLF + blank line
    assert read_labels_csv(f) == [Segment(1, 10, 20)]
    for bad in ("label,a,b\n1,2,3\n", "class,startTime_usec,endTime_usec\n12,1,2\n",
                "class,startTime_usec,endTime_usec\n1,5,2\n",
                "class,startTime_usec,endTime_usec\n1,x,2\n"):
        f.write_text(bad)
        with pytest.raises(EventDecodeError):
            read_labels_csv(f)


def test_split_list_round_trip(tmp_path):
    names = ["user01_fluorescent.aedat", "user01_fluorescent_led.aedat", "user02_natural.aedat"]
    f = tmp_path / "trials_to_train.txt"
    write_split_list(f, names)
    assert read_split_list(f) == names
    f.write_bytes(b"user01_fluorescent.aedat\r\n\r\nuser02_lab.aedat  \r\n")
    assert read_split_list(f) == ["user01_fluorescent.aedat", "user02_lab.aedat"]


def test_classes_and_names():
    assert len(GESTURE_CLASSES) == 11 and len(set(GESTURE_CLASSES)) == 11
    assert class_name(1) == "hand_clapping" and class_name(11) == "other_gestures"
    assert class_label("air_guitar") == 10
    assert parse_trial_name("/d/DvsGesture/user07_fluorescent_led.aedat") == (7, "fluorescent_led")
    with pytest.raises(ValueError):
        parse_trial_name("foo.aedat")
    assert labels_path("/d/user01_lab.aedat").name == "user01_lab_labels.csv"


def test_dataset_directory(tmp_path):
    root = tmp_path / "DvsGesture"
    rng = np.random.default_rng(2)
    expected = {}
    for user in (1, 2):
        name = f"user{user:02d}_natural"
        ev = _rand_events(rng, 5000, t0_us=1_000_000 * user)
        t_us = ev["t"] // 1000
        s1 = Segment(user, int(t_us[100]), int(t_us[2000]))
        s2 = Segment(user + 5, int(t_us[2500]), int(t_us[4900]))
        write_trial(root, name, ev, [s1, s2])
        for s in (s1, s2):
            m = (ev["t"] >= s.start_ns) & (ev["t"] < s.end_ns)
            expected[(name + ".aedat", s)] = ev[m]
    write_splits(root, ["user01_natural"], ["user02_natural.aedat"])

    ds = Dvs128Dataset(root)
    assert [p.split("/")[-1] for p in ds.trials("train")] == ["user01_natural.aedat"]
    assert [p.split("/")[-1] for p in ds.trials("test")] == ["user02_natural.aedat"]
    assert len(ds.trials("all")) == 2
    assert ds.segments("user01_natural.aedat")[0].class_name == "hand_clapping"
    ev, segs = ds.load(ds.trials("test")[0])
    assert len(ev) == 5000 and len(segs) == 2

    samples = list(ds.iter_samples("all"))
    assert len(samples) == 4
    for trial, seg, sev in samples:
        want = expected[(trial.split("/")[-1], seg)]
        assert _same(sev, want) and len(sev) > 0
        assert sev["t"].min() >= seg.start_ns and sev["t"].max() < seg.end_ns
    with pytest.raises(ValueError):
        ds.trials("val")  # type: ignore[arg-type]
