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
from edge_vlm.bench.report import SUMMARY_KEYS
from edge_vlm.bench.sttf import bench_sttf
from edge_vlm.evaluation.trust_report import plot_reliability
from edge_vlm.paths import docs_dir

__all__ = ["bench_all"]


def _flat(parts: list[dict]) -> dict:
    """Every figure of :data:`SUMMARY_KEYS` from the first part that has it (None if none)."""
    out = {}
    for k in SUMMARY_KEYS:
        out[k] = next((part[k] for part in parts if k in part), None)
    return out


def bench_all(checkpoint: str = "", threads: int = 1, repeats: int = 5, quick: bool = False,
              e2e: bool = True, log: Callable[[str], None] | None = None,
              packet_ms: float = 10.0, anc_part: bool = True) -> dict:
    """Decode + bin, STTF vs dense, ANC vs Medium-only, end to end; the figures of
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
    ee = {"skipped": "disabled"}
    if e2e:
        say("bench: end to end (node graph, 1x) ...")
        ee = bench_e2e(checkpoint=checkpoint, threads=threads, quick=quick, packet_ms=packet_ms)
    out = {"timestamp": utc_timestamp(), "machine": machine_info(threads),
           **_flat([dec, sttf, anc, ee])}
    out["budget_sweep"] = anc.get("budget_sweep")
    out["checkpoint"] = sttf["model"]
    out["details"] = {"decode": dec, "sttf": sttf, "anc": anc, "e2e": ee}
    out["bench_wall_s"] = time.perf_counter() - t0
    return out
