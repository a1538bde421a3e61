"""The bringup's Fast DDS profile for fast rediscovery after a restart (docs/deploy.md) and the
multihost runs that measure it (their plan and figures; the runs themselves are in the full
profile of `edge-vlm bench multihost`)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edge_vlm.bench.link_topics import discovery_bytes_per_s, rediscovery_figures
from edge_vlm.bench.multihost import PARTITION_S, make_plan

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "ros2_ws" / "src" / "edge_vlm_bringup" / "config" / "fastdds_rediscovery.xml"
NS = {"d": "http://www.eprosima.com"}


def _seconds(el) -> float:
    return float(el.findtext("d:sec", "0", NS)) + float(el.findtext("d:nanosec", "0", NS)) / 1e9


def test_profile_announces_every_second_and_outlives_a_partition():
    root = ET.parse(PROFILE).getroot()
    part = root.find("d:profiles/d:participant", NS)
    assert part is not None and part.get("is_default_profile") == "true"
    disc = part.find("d:rtps/d:builtin/d:discovery_config", NS)
    announce = _seconds(disc.find("d:leaseAnnouncement", NS))
    lease = _seconds(disc.find("d:leaseDuration", NS))
    assert announce == 1.0
    # a participant is not dropped during the bench's partition (5 s), and the lease covers
    # several missed announcements
    assert lease > PARTITION_S and lease >= 3 * announce


def test_profile_installed_with_the_bringup():
    setup = (ROOT / "ros2_ws" / "src" / "edge_vlm_bringup" / "setup.py").read_text()
    assert 'glob("config/*.xml")' in setup


def test_plan_repeats_restart_and_crash_with_the_profile():
    plan = make_plan({"libcaer_cmp": "/tmp/a", "mono": "/tmp/b"}, quick=False, work="/tmp/w")
    runs = {r["name"]: r for r in plan}
    for name in ("restart", "crash"):
        again = runs[f"{name}_rediscovery"]
        assert again["dds_profile"] == "rediscovery" and "dds_profile" not in runs[name]
        assert {k: v for k, v in again.items() if k not in ("name", "dds_profile")} == \
            {k: v for k, v in runs[name].items() if k != "name"}
    quick = make_plan({"libcaer_cmp": "/tmp/a", "mono": "/tmp/b"}, quick=True, work="/tmp/w")
    assert not [r for r in quick if r.get("dds_profile")]


def _run(recovery: float | None, ready: float | None, name: str, disc: float) -> dict:
    row = {"payload": 0.0, "overhead": disc, "control": 0.0, "samples_per_s": 1.0}
    return {"recovery_s": recovery, f"{name}_ready_s": ready,
            "link_by_topic": {"rows": {"discovery": row}}}


def test_rediscovery_figures():
    runs = {"restart": _run(4.6, 3.8, "restart", 6000.0),
            "crash": _run(5.2, 2.8, "crash", 6100.0),
            "restart_rediscovery": _run(4.1, 3.7, "restart", 12000.0),
            "crash_rediscovery": _run(3.0, 2.7, "crash", 12500.5)}
    f = rediscovery_figures(runs)
    assert f["recovery_s_rediscovery_restart"] == 4.1
    assert f["recovery_s_rediscovery_crash"] == 3.0 and f["recovery_s_rediscovery"] == 4.1
    assert f["crash_ready_s_rediscovery"] == 2.7
    assert f["discovery_bytes_per_s_restart"] == 6000.0
    assert f["discovery_bytes_per_s_crash_rediscovery"] == 12500.5
    # a run that did not happen (quick profile) gives None, not a figure
    g = rediscovery_figures({"restart": runs["restart"]})
    assert g["recovery_s_rediscovery"] is None and g["recovery_s_rediscovery_crash"] is None
    assert discovery_bytes_per_s({}) is None
