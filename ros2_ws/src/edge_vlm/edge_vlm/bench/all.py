"""`edge-vlm bench all` (`make bench`): every benchmark, flattened into one dict
(:data:`~edge_vlm.bench.report.SUMMARY_KEYS` at the top level, each part's figures under
``details``)."""
from __future__ import annotations

import time
from typing import Callable

from edge_vlm.bench.anc import bench_anc
from edge_vlm.bench.common import machine_info, utc_timestamp
from edge_vlm.bench.decode import bench_decode
from edge_vlm.bench.e2e import bench_e2e
from edge_vlm.bench.multihost import bench_multihost
from edge_vlm.bench.multistream import bench_streams
from edge_vlm.bench.peers import bench_peers
from edge_vlm.bench.report import SUMMARY_KEYS
from edge_vlm.bench.sttf import bench_sttf
from edge_vlm.evaluation.trust_report import plot_reliability
from edge_vlm.paths import docs_dir

__all__ = ["bench_all"]


#: the multi-host part's figures at the top level, as ``multihost_<key>``
MULTIHOST_KEYS = ("captions_per_frame", "caption_latency_ms_p95", "bytes_per_mev",
                  "recovery_s_partition", "recovery_s_restart", "recovery_s_crash",
                  "captions_per_s_2mbit", "captions_per_s_500kbit",
                  "captions_per_s_500kbit_active", "gesture_accuracy_500kbit",
                  "gesture_accuracy_500kbit_active", "link_overhead_bytes_per_s",
                  "recovery_s_rediscovery_restart", "recovery_s_rediscovery_crash",
                  "namespaces_left", "cameras", "cross_talk")


def _flat(parts: list[dict]) -> dict:
    """Every figure of :data:`SUMMARY_KEYS` from the first part that has it (None if none)."""
    out = {}
    for k in SUMMARY_KEYS:
        out[k] = next((part[k] for part in parts if k in part), None)
    return out


def _graph_parts(checkpoint: str, threads: int, quick: bool, packet_ms: float, say,
                 streams_part: bool, multihost_part: bool) -> dict[str, dict]:
    """The parts that run node graphs: end to end, streams per machine, drone + ground."""
    say("bench: end to end (node graph, 1x) ...")
    out = {"e2e": bench_e2e(checkpoint=checkpoint, threads=threads, quick=quick,
                            packet_ms=packet_ms)}
    out["streams"] = {"skipped": "disabled"}
    if streams_part:
        say("bench: streams per machine (one graph per camera, 1x) ...")
        out["streams"] = bench_streams(checkpoint=checkpoint, threads=threads, quick=quick,
                                       log=say)
    out["multihost"] = {"skipped": "disabled"}
    if multihost_part:
        say("bench: drone + ground over DDS (network namespaces) ...")
        mh = bench_multihost(quick=quick, log=say)
        out["multihost"] = mh
        out["multihost_flat"] = {f"multihost_{k}": mh.get(k) for k in MULTIHOST_KEYS
                                 if "skipped" not in mh}
    return out


def bench_all(checkpoint: str = "", threads: int = 1, repeats: int = 5, quick: bool = False,
              e2e: bool = True, log: Callable[[str], None] | None = None,
              packet_ms: float = 10.0, anc_part: bool = True, peers_part: bool = True,
              streams_part: bool = True, multihost_part: bool = True) -> dict:
    """Decode + bin, STTF vs dense, ANC vs Medium-only, the peers (ToMe, top-k) on the same
    frames, end to end, streams per machine, drone + ground over DDS; the figures of
    :data:`SUMMARY_KEYS` at the top level, details below."""
    say = log or (lambda *a, **k: None)
    t0 = time.perf_counter()
    say("bench: decode + bin ...")
    dec = bench_decode(repeats=repeats, quick=quick, threads=1)
    say("bench: STTF vs dense ...")
    sttf = bench_sttf(checkpoint=checkpoint, threads=threads, repeats=repeats, quick=quick)
    if not quick and sttf.get("reliability"):
        plot_reliability({"ece": sttf.get("ece"), "reliability": sttf["reliability"]},
                         str(docs_dir() / "reliability.png"))
    anc = {"skipped": "disabled"}
    if anc_part:
        say("bench: ANC vs Medium-only ...")
        try:
            anc = bench_anc(checkpoint=checkpoint, threads=threads, quick=quick,
                            plot=None if quick else str(docs_dir() / "anc_budget_sweep.png"))
        except ValueError as exc:       # an STTF-only checkpoint
            anc = {"skipped": str(exc)}
    peers = {"skipped": "disabled"}
    if peers_part:
        say("bench: peers (dense, ToMe, top-k, STTF, STTF+ANC) ...")
        peers = bench_peers(checkpoint=checkpoint, threads=threads, quick=quick,
                            plot=None if quick else str(docs_dir() / "peers.png"))
    graph = {"e2e": {"skipped": "disabled"}, "streams": {"skipped": "disabled"},
             "multihost": {"skipped": "disabled"}}
    if e2e:
        graph = _graph_parts(checkpoint, threads, quick, packet_ms, say, streams_part,
                             multihost_part)
    flat = graph.pop("multihost_flat", {})
    out = {"timestamp": utc_timestamp(), "machine": machine_info(threads),
           **_flat([dec, sttf, anc, peers, graph["e2e"], graph["streams"], flat])}
    out["budget_sweep"] = anc.get("budget_sweep")
    out["checkpoint"] = sttf["model"]
    out["details"] = {"decode": dec, "sttf": sttf, "anc": anc, "peers": peers, **graph}
    out["bench_wall_s"] = time.perf_counter() - t0
    return out
