"""A native kernel against its PyTorch code, lock-step on the same frames (issue 19):
``--kernel convs``, the small conv nets (change-mask net, motion head trunk, ANC estimator;
docs/design.md, "Native small conv nets"), ``--kernel decoder``, the caption decoder's
teacher-forced pass (docs/design.md, "The decoder's pass on the encoder's kernel"), or
``--kernel stages``, the token memory update and the fusion stage (docs/design.md, "The memory
update and the fusion stage in one call each").

    python scripts/native_convs_ab.py [--kernel convs|decoder|stages] [--recordings 2]
                                      [--threads 1]

Streams the first N STTF test recordings (the bench's ``test_recordings``) through four engines
of the shipped checkpoint, STTF (Medium, sparse) and STTF+ANC (routed), each once with the
kernel's part in PyTorch and once native, the four taking every frame in turn: machine noise
hits both paths alike, so the ratios hold on a loaded machine. Prints the mean and median
whole-frame and decoder-stage ms (``stages``: memory and fusion stages) after five warm-up
frames, the STTF+ANC frames of low motion
apart (the bench's ``walltime_reduction_low_motion`` frames), and on how many frames the two
paths' captions differ.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", choices=("convs", "decoder", "stages"), default="convs")
    ap.add_argument("--recordings", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    from edge_vlm.bench.anc import anc_model, level_engine
    from edge_vlm.bench.recordings import sim_frames, test_recordings
    from edge_vlm.cores.graph import replay_params
    from edge_vlm.inference import native_convs as nm
    from edge_vlm.inference import native_decoder, native_stages, native_vit
    torch.set_num_threads(args.threads)
    lib = nm.load() if args.kernel == "convs" else native_vit.load()
    if lib is None:
        why = nm.why() if args.kernel == "convs" else native_vit.why()
        print(f"error: the {args.kernel} kernel is not loaded: {why}", file=sys.stderr)
        return 1

    def use(native: bool) -> None:
        if args.kernel == "convs":
            nm._State.lib = lib if native else None
        elif args.kernel == "decoder":
            native_decoder.State.enabled = native
        else:               # read when an engine makes its native views (its first frame)
            native_stages.State.enabled = native
    params = replay_params(graph=None).captioner
    ck = anc_model("")
    keys = [(mode, path) for mode in ("STTF", "STTF+ANC") for path in ("torch", "native")]
    total: dict = {k: [] for k in keys}
    low: dict = {k: [] for k in keys}
    dec: dict = {k: [] for k in keys}
    texts: dict = {k: [] for k in keys}
    for rec in test_recordings(False)[:max(1, args.recordings)]:
        engines = {k: level_engine(ck.model, params, ck.meta, 2 if k[0] == "STTF" else None, True)
                   for k in keys}
        for j, f in enumerate(sim_frames(rec, params)):
            for k, eng in engines.items():
                use(k[1] == "native")
                r = eng.process(f.hist)
                texts[k].append(r.text)
                if j >= 5:
                    total[k].append(r.latency_ms["total"])
                    dec[k].append(r.latency_ms["decoder"] if args.kernel != "stages" else
                                  r.latency_ms["memory"] + r.latency_ms["fusion"])
                    if f.motion in ("low", "static"):
                        low[k].append(r.latency_ms["total"])
    use(True)
    stage = "memory + fusion stages" if args.kernel == "stages" else "decoder stage"
    print(f"| engine | {args.kernel} | frames | mean ms | median ms | {stage} mean ms | "
          "low-motion frames | low-motion mean ms | captions differing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        other = texts[(k[0], "torch")]
        differ = sum(a != b for a, b in zip(texts[k], other))
        print(f"| {k[0]} | {k[1]} | {len(total[k])} | {np.mean(total[k]):.3f} | "
              f"{np.median(total[k]):.3f} | {np.mean(dec[k]):.3f} | {len(low[k])} | "
              f"{np.mean(low[k]):.3f} | {differ} of {len(texts[k])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
