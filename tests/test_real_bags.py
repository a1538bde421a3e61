"""Real ros-event-camera bags: evt3 oracles, bag reading, stats.

Oracles from ../shared/data/real/README.md.  Note on triggers of the 640x480
bag: it holds 4157 EXT_TRIGGER words -- 2079 with value 1 (rising) and 2078
with value 0 (falling).  The README's "2,078 rising and 2,078 falling" comes
from event_camera_py's tests, which count value 0 as "rise" and (a bug in
their check_count) compare the rise count twice, so the fall count is never
checked.  Their total ``sum_time`` (CD + trigger times in us,
2,885,601,049,874) includes all 4157 triggers and is reproduced exactly here.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edge_vlm.io.bag_reader import (EVENT_PACKET_TYPE, BagError, event_topics, iter_event_packets,
    iter_events, iter_messages, open_reader, typestore)
from edge_vlm.io.codecs import Evt3Decoder
from edge_vlm.events import concat_events
from edge_vlm.io.stats import STATS_KEYS, event_stats, stats_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real"))
B640 = os.path.join(REAL, "evt3_prophesee_640x480")
B1280 = os.path.join(REAL, "evt3_prophesee_1280x720_trigger")
BCAER = os.path.join(REAL, "libcaer_cmp_davis346")

pytestmark = pytest.mark.skipif(not os.path.isdir(REAL), reason="real bags not available")

ORACLES = {
    B640: dict(width=640, height=480, events=343_474, on=125_183, off=218_291,
               sum_x=116_731_888, sum_y=80_879_209, packets=517,
               triggers_rising=2079, triggers_falling=2078),
    B1280: dict(width=1280, height=720, events=82_469, on=41_439, off=41_030,
                sum_x=42_078_718, sum_y=31_656_267, packets=105,
                sum_t_ns=1_222_326_831_810_000),
}


@pytest.fixture(scope="module", params=[B640, B1280], ids=["640x480", "1280x720"])
def bag(request):
    msgs = list(iter_event_packets(request.param))
    return request.param, msgs


def test_evt3_oracles_packet_by_packet(bag):
    path, msgs = bag
    o = ORACLES[path]
    dec = Evt3Decoder()
    ev = concat_events(dec.decode(m.events, m.width, m.height, m.time_base) for m in msgs)
    assert len(ev) == o["events"]
    assert int(np.count_nonzero(ev["p"] == 1)) == o["on"]
    assert int(np.count_nonzero(ev["p"] == 0)) == o["off"]
    assert int(ev["x"].sum(dtype=np.int64)) == o["sum_x"]
    assert int(ev["y"].sum(dtype=np.int64)) == o["sum_y"]
    assert int(ev["x"].max()) < o["width"] and int(ev["y"].max()) < o["height"]
    assert bool(np.all(np.diff(ev["t"]) >= 0))
    if "sum_t_ns" in o:
        assert sum(int(t) for t in ev["t"]) == o["sum_t_ns"]
    if path == B640:
        assert (dec.triggers_rising, dec.triggers_falling) == (2079, 2078)
        # event_camera_py test_1.py: sum of CD + trigger times in us
        assert int((ev["t"] // 1000).sum()) + _trigger_sum_us(msgs) == 2_885_601_049_874


def _trigger_sum_us(msgs) -> int:
    dec, total = Evt3Decoder(), 0
    for m in msgs:
        dec.decode(m.events)
        total += int((dec.last_triggers["t"] // 1000).sum())
    return total


def test_evt3_arbitrary_packet_boundaries(bag):
    _, msgs = bag
    stream = b"".join(m.events.tobytes() for m in msgs)
    whole = Evt3Decoder().decode(stream)
    rng = np.random.default_rng(7)
    cuts = np.sort(rng.integers(0, len(stream) // 2, 300)) * 2
    bounds = [0, *cuts.tolist(), len(stream)]
    dec = Evt3Decoder()
    parts = concat_events(dec.decode(stream[a:b]) for a, b in zip(bounds, bounds[1:]))
    np.testing.assert_array_equal(parts, whole)


def test_iter_events_matches_oracle(bag):
    path, _ = bag
    decs: dict = {}
    ev = concat_events(iter_events(path, decoders=decs))
    assert len(ev) == ORACLES[path]["events"]
    assert list(decs) == ["/event_camera/events"]


def test_stats_path(bag):
    path, _ = bag
    o = ORACLES[path]
    s = stats_path(path)
    assert list(s)[:len(STATS_KEYS)] == list(STATS_KEYS)
    for k, v in o.items():
        assert s[k] == v, k
    assert s["encoding"] == "evt3"
    assert all(type(s[k]) is int for k in STATS_KEYS if k != "encoding")
    json.dumps(s)
    assert s["t_first_ns"] <= s["t_last_ns"]
    # the same numbers from metadata.yaml / the storage file / event_stats
    s2 = stats_path(os.path.join(path, "metadata.yaml"))
    assert s2 == s
    s3 = event_stats(iter_events(path), s["width"], s["height"], "evt3")
    assert {k: s3[k] for k in STATS_KEYS} == {k: s[k] for k in STATS_KEYS}


def test_first_sensor_time_640():
    assert stats_path(B640)["t_first_ns"] == 7_139_845_000   # event_camera_py t0


def test_libcaer_bag_opens_and_matches_oracle():
    assert event_topics(BCAER) == ["/event_camera/events"]     # opens despite empty storage id
    m = next(iter_event_packets(BCAER))
    assert (m.encoding, m.width, m.height) == ("libcaer_cmp", 346, 260)
    st = stats_path(BCAER)
    assert (st["events"], st["on"], st["off"]) == (571_266, 211_043, 360_223)
    assert st["t_first_ns"] == 1_744_227_144_732_712 * 1000


def test_bag_reading_api(tmp_path):
    assert EVENT_PACKET_TYPE in typestore().types
    assert event_topics(B640) == ["/event_camera/events"]
    topic, msgtype, t_ns, raw = next(iter_messages(B640))
    assert (topic, msgtype) == ("/event_camera/events", EVENT_PACKET_TYPE)
    assert isinstance(t_ns, int) and isinstance(raw, bytes) and len(raw) > 100
    assert list(iter_messages(B640, topics=["/nope"])) == []
    db3 = [f for f in os.listdir(B1280) if f.endswith(".db3")][0]
    assert sum(1 for _ in iter_messages(os.path.join(B1280, db3))) == 105
    with open_reader(B640) as r:
        assert r.message_count == 517
    with pytest.raises(BagError, match="not found"):
        open_reader(tmp_path / "missing")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(BagError):
        open_reader(tmp_path / "junk.txt")
    with pytest.raises(BagError):
        open_reader(tmp_path)                  # a directory that is not a bag
    with pytest.raises(BagError):
        next(iter_event_packets(B640, topic="/nope"))
