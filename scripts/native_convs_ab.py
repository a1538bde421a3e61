"""The native small conv nets (change-mask net, motion head trunk, ANC estimator) against their
PyTorch code, lock-step on the same frames (docs/design.md, "Native small conv nets"; issue 19).

    python scripts/native_convs_ab.py [--recordings 2] [--threads 1]

Streams the first N STTF test recordings (the bench's ``test_recordings``) through four engines
of the shipped checkpoint, STTF (Medium, sparse) and STTF+ANC (routed), each once with the
three nets in PyTorch and once native, the four taking every frame in turn: machine noise hits
both paths alike, so the ratios hold on a loaded machine. Prints the mean and median whole-frame
ms after five warm-up frames, and the STTF+ANC frames of low motion apart (the bench's
``walltime_reduction_low_motion`` frames).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recordings", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    from edge_vlm.bench.anc import _anc_model, _engine
    from edge_vlm.bench.recordings import sim_frames, test_recordings
    from edge_vlm.cores.graph import replay_params
    from edge_vlm.inference import native_convs as nm
    torch.set_num_threads(args.threads)
    lib = nm.load()
    if lib is None:
        print(f"error: the native conv nets are not loaded: {nm.why()}", file=sys.stderr)
        return 1
    params = replay_params(graph=None).captioner
    ck = _anc_model("")
    keys = [(mode, path) for mode in ("STTF", "STTF+ANC") for path in ("torch", "native")]
    total: dict = {k: [] for k in keys}
    low: dict = {k: [] for k in keys}
    for rec in test_recordings(False)[:max(1, args.recordings)]:
        engines = {k: _engine(ck.model, params, ck.meta, 2 if k[0] == "STTF" else None, True)
                   for k in keys}
        for j, f in enumerate(sim_frames(rec, params)):
            for k, eng in engines.items():
                nm._State.lib = lib if k[1] == "native" else None
                ms = eng.process(f.hist).latency_ms["total"]
                if j >= 5:
                    total[k].append(ms)
                    if f.motion in ("low", "static"):
                        low[k].append(ms)
    nm._State.lib = lib
    print("| engine | small nets | frames | mean ms | median ms | low-motion frames | "
          "low-motion mean ms |")
    print("|---|---|---|---|---|---|---|")
    for k in keys:
        print(f"| {k[0]} | {k[1]} | {len(total[k])} | {np.mean(total[k]):.3f} | "
              f"{np.median(total[k]):.3f} | {len(low[k])} | {np.mean(low[k]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
