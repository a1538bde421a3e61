"""Streams per machine (edge_vlm.bench.multistream) and free ROS domains (edge_vlm.domains):
the real-time rule on a stream's figures, and distinct free domains for concurrent graphs."""
import socket

from edge_vlm.bench.multistream import MIN_FRAME_SHARE, stream_realtime
from edge_vlm.domains import DOMAIN_IDS, domain_in_use, free_domain_id, free_domain_ids


def _fig(**kw):
    base = {"frames_processed": 100, "frames_expected_approx": 100, "frames_dropped": 0,
            "backlog_grows": False}
    return {**base, **kw}


def test_realtime_rule():
    assert stream_realtime(_fig())
    assert not stream_realtime(_fig(frames_dropped=1))
    assert not stream_realtime(_fig(backlog_grows=True))
    assert stream_realtime(_fig(backlog_grows=None))       # too short to tell: not a failure
    short = int(MIN_FRAME_SHARE * 100) - 1
    assert not stream_realtime(_fig(frames_processed=short))
    assert not stream_realtime(_fig(frames_expected_approx=None))   # no events recorded


def test_free_domains_are_distinct_and_free():
    ids = free_domain_ids(5, seed=17)
    assert len(set(ids)) == 5 and all(d in DOMAIN_IDS for d in ids)
    assert not any(domain_in_use(d) for d in ids)
    assert free_domain_id(seed=17) == ids[0]


def test_held_domain_is_skipped():
    d = free_domain_id(seed=42)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 7410 + 250 * d))       # what a DDS participant of domain d holds
        assert domain_in_use(d)
        assert d not in free_domain_ids(3, seed=42)
    assert not domain_in_use(d)
