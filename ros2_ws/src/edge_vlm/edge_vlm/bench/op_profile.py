"""Where a steady sparse frame's time goes inside its stages, per PyTorch operator.

The per-stage table (``stage_ms_steady_sparse``) says which stage costs what; this says which
calls inside them do. One more sparse pass over the timing recording runs under
``torch.profiler``: a fresh engine, its first frame (dense) unprofiled, every later frame
profiled. Each operator's *self* CPU time (per input shapes) per frame; the time of a frame
outside every PyTorch operator (Python, numpy, the native encoder kernel) is its own line.
The profiler adds its own cost per call, so the profiled frame is slower than an unprofiled
one (both are reported); compare the lines with each other, not with the stage table.
"""
from __future__ import annotations

import time

import numpy as np
from torch.profiler import ProfilerActivity, profile, record_function

from edge_vlm.bench.engines import sttf_engine
from edge_vlm.model.sttf import CaptionModel

__all__ = ["op_profile", "FRAME_SCOPE"]

#: the profiler scope around one frame (its self time: outside every PyTorch operator)
FRAME_SCOPE = "frame (outside PyTorch operators)"


def op_profile(model: CaptionModel, params: dict, minfo: dict, hists: list[np.ndarray],
               top: int = 15) -> dict:
    """The ``top`` operators (with input shapes) by self CPU time per steady sparse frame, the
    frame scope's own time, the rest summed; ms per frame."""
    eng = sttf_engine(model, params, True, minfo)
    if len(hists) < 2:
        return {"frames": 0, "ops": []}
    eng.process(hists[0])
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for h in hists[1:]:
            with record_function(FRAME_SCOPE):
                eng.process(h)
    wall = time.perf_counter() - t0
    n = len(hists) - 1
    rows = [{"op": e.key, "shapes": str(e.input_shapes) if e.key != FRAME_SCOPE else "",
             "calls_per_frame": e.count / n, "self_ms_per_frame": e.self_cpu_time_total / n / 1e3}
            for e in prof.key_averages(group_by_input_shape=True)]
    rows.sort(key=lambda r: -r["self_ms_per_frame"])
    kept = rows[:top]
    if not any(r["op"] == FRAME_SCOPE for r in kept):
        kept += [r for r in rows if r["op"] == FRAME_SCOPE]
    rest = sum(r["self_ms_per_frame"] for r in rows if r not in kept)
    return {"frames": n, "profiled_ms_per_frame": wall / n * 1e3,
            "self_ms_per_frame": sum(r["self_ms_per_frame"] for r in rows),
            "ops": kept, "other_ops_ms_per_frame": rest}
