"""The link counter's figures (``linkstat.json``, written by ``edge_vlm_linkstat`` of the ROS
workspace's ``edge_vlm_tools`` beside a multihost run's ``run.json``): what crossed the
drone -> ground link per DDS topic, as rates. Reads JSON only (the core never imports ROS).
"""
from __future__ import annotations

import json
import os

__all__ = ["link_by_topic", "discovery_bytes_per_s", "rediscovery_figures"]


def link_by_topic(run_dir: str, state: dict) -> dict | None:
    """Drone -> ground bytes/s per row of the link counter (``linkstat.json`` beside
    ``run.json``, its window: the bag's play, marked right before the veth counters are read):
    each topic's ``payload`` (serialized DDS payload), ``overhead`` (its share of the headers:
    Ethernet, IPv4, UDP, RTPS, submessage headers, INFO_TS / INFO_DST, the Fast DDS statistics
    trailer), ``control`` (HEARTBEAT / GAP / ACKNACK about its writers) and
    ``samples_per_s``; rows ``discovery`` (SPDP, SEDP, ...), ``other_rtps``, ``non_rtps``,
    ``unparsed`` (``discovery_bytes_per_s``: by builtin writer: ``spdp``,
    ``sedp_publications``, ...); ``bytes`` captured and ``device_bytes`` (the veth's own
    counter over the same window). None when the counter did not run (not root, no
    AF_PACKET)."""
    name = state.get("linkstat")
    try:
        with open(os.path.join(run_dir, name)) as fh:
            data = json.load(fh)
        tx, seconds = data["in_window"]["tx"], float(data["window"]["s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

    def rate(n: int) -> float:
        return round(n / seconds, 1)

    rows = {k: {"payload": rate(r["payload_bytes"]), "overhead": rate(r["overhead_bytes"]),
                "control": rate(r["control_bytes"]), "samples_per_s": rate(r["samples"])}
            for k, r in tx["by_topic"].items() if r["bytes"]}
    return {"window_s": seconds, "bytes": tx["bytes"],
            "device_bytes": (data["window"].get("device_bytes") or {}).get("tx"),
            "socket_drops": data.get("socket_drops"), "bytes_per_s": rate(tx["bytes"]),
            "payload_bytes_per_s": rate(tx["payload_bytes"]),
            "overhead_bytes_per_s": rate(tx["overhead_bytes"]), "rows": rows,
            "submessages_bytes_per_s": {k: rate(v["bytes"]) for k, v in tx["submessages"].items()},
            "discovery_bytes_per_s": {k: rate(v["bytes"])
                                      for k, v in tx.get("discovery_by_writer", {}).items()}}


def discovery_bytes_per_s(run: dict) -> float | None:
    """Drone -> ground discovery traffic (SPDP, SEDP) of a run, from the link counter."""
    row = ((run.get("link_by_topic") or {}).get("rows") or {}).get("discovery") or {}
    return None if not row else round(row["payload"] + row["overhead"] + row["control"], 1)


def rediscovery_figures(runs: dict[str, dict]) -> dict:
    """The restart and crash runs again with the bringup's Fast DDS profile that announces
    every participant every 1 s (``recovery_s_rediscovery_<run>``, ``*_ready_s_rediscovery``),
    and what that costs on the link (``discovery_bytes_per_s`` of the default restart run and
    of the profile's, drone -> ground)."""
    out: dict = {}
    for name in ("restart", "crash"):
        r = runs.get(f"{name}_rediscovery") or {}
        out[f"recovery_s_rediscovery_{name}"] = r.get("recovery_s")
        out[f"{name}_ready_s_rediscovery"] = r.get(f"{name}_ready_s")
        out[f"discovery_bytes_per_s_{name}"] = discovery_bytes_per_s(runs.get(name) or {})
        out[f"discovery_bytes_per_s_{name}_rediscovery"] = discovery_bytes_per_s(r)
    rec = [out[f"recovery_s_rediscovery_{n}"] for n in ("restart", "crash")]
    out["recovery_s_rediscovery"] = max(rec) if None not in rec else None
    return out
