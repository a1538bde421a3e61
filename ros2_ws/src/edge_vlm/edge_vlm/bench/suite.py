"""Benchmarks of the core library (no rclpy; the end-to-end run imports the ROS adapter lazily).

* :func:`bench_decode` -- EventPacket decode + frame binning throughput (Mev/s, one
  thread): ``mono`` on simulated streams (10 ms packets, ``edge-vlm synth``'s default),
  ``evt3`` on the real Prophesee bags packet by packet as recorded, and on simulated
  streams encoded with :func:`encode_evt3`. "decode + bin" is what a node does with
  every packet: :class:`~edge_vlm.binner.FrameBinner` (stateful decode, the
  :class:`~edge_vlm.pipeline.FrameClock` rules, the event histogram of every closed
  frame on the 128x128 model grid), fed packet by packet.
* :func:`bench_sttf` -- the token memory (``StreamingCaptioner(sparse=True)``) against
  the dense baseline (``sparse=False``) on the same frames of a simulated held-out
  recording: encoder time (first frame / steady state), speedups, active-token
  fraction, FLOPs, caption agreement, per-frame gesture accuracy, token deviation.
* :func:`bench_e2e` -- the node graph on a simulated DVS128 bag played at 1x
  (``edge_vlm_ros.demo.run_on_bag``): per-frame processing and packet->caption latency,
  and whether a backlog builds up.
* :func:`bench_all` -- all three, flattened into one dict (:data:`SUMMARY_KEYS`), and
  :func:`markdown` for ``docs/benchmarks.md``.

Timings: a warm-up run first, then ``repeats`` runs; the median is reported.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from edge_vlm.paths import repo_root


__all__ = ["machine_info", "encode_evt3", "packetize_mono", "packetize_evt3", "real_evt3_bags",
           "decode_bin", "decode_bin_per_packet", "bench_decode", "bench_sttf", "bench_e2e", "bench_all", "markdown",
           "SUMMARY_KEYS", "PACKET_NS"]

#: packet length of simulated streams: 10 ms, ``edge-vlm synth``'s default (``--packet-ms``)
PACKET_NS = 10_000_000
#: seed of the simulated recordings (this one holds a low-motion gesture)
SIM_SEED = 1
#: time compression of the "dense" simulated stream: the simulator's ~10 kev/s become
#: ~200 kev/s, the event rate of the real 640x480 Prophesee bag (165 kev/s)
DENSE_FACTOR = 20
_ROOT = repo_root()
#: the flat figures of :func:`bench_all` (``edge-vlm bench all --json``), in table order
SUMMARY_KEYS = ("mono_mev_per_s", "evt3_mev_per_s", "evt3_sim_mev_per_s", "mono_dense_mev_per_s",
                "evt3_sim_dense_mev_per_s", "evt3_decode_us_per_packet",
                "frame_latency_ms_p95", "caption_latency_ms_p50", "caption_latency_ms_p95", "backlog_grows",
                "accuracy_dense", "accuracy_sparse", "active_token_fraction", "active_token_fraction_low_motion",
                "speedup_steady", "speedup_limit", "flops_ratio", "caption_agreement", "token_deviation_max",
                "encoder_ms_first_sparse", "encoder_ms_first_dense", "encoder_ms_steady_sparse",
                "encoder_ms_steady_dense", "segment_accuracy_dense", "segment_accuracy_sparse",
                "accuracy_sparse_rgb_events",
                "flops_reduction_low_motion", "walltime_reduction_low_motion", "accuracy_medium_high_motion",
                "accuracy_anc_high_motion", "router_cost_fraction_of_tiny")


# ----------------------------------------------------------------------------- helpers
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict:
    """CPU model, cores, threads used, library versions, timestamp (UTC)."""
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(), "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        info["torch"] = None
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        pass
    return info


def _median(xs):
    return float(statistics.median(xs)) if xs else None


def _mean(xs):
    xs = [float(x) for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _timed(fn, repeats: int, warmup: int = 1) -> tuple[list[float], list[float], object]:
    """(wall times, CPU times of this thread) in s of ``repeats`` calls of ``fn`` after ``warmup``
    calls, and the last result. The CPU time is what one core spent: on a busy machine it
    excludes the time the thread waited for a core."""
    out = None
    for _ in range(warmup):
        out = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.thread_time(), time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return wall, cpu, out


def _set_threads(threads: int | None) -> None:
    if threads:
        try:
            import torch

            torch.set_num_threads(int(threads))
        except ImportError:  # pragma: no cover
            pass


# ----------------------------------------------------------------------------- streams
def simulated_events(labels=range(1, 12), clip_s: float = 1.5, gap_s: float = 0.3, seed: int = 1,
                     lighting: str = "lab", subject: int | None = None, with_frames: bool = False):
    """A simulated DVS128 recording (events; RGB frames too with ``with_frames``) of a held-out
    subject: ``Recording``."""
    from edge_vlm.sim import simulate_recording, split_subjects

    if subject is None:
        _, held_out = split_subjects(20, 6, 0)
        subject = int(held_out[-1])
    return simulate_recording(subject, lighting, seed=seed, labels=list(labels), clip_duration_s=clip_s,
                              gap_s=gap_s, with_frames=with_frames)


def _packet_bounds(t: np.ndarray, packet_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(packet start times, event index bounds) of the absolute ``packet_ns`` grid, empty packets included."""
    if len(t) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    k0, k1 = int(t[0]) // packet_ns, int(t[-1]) // packet_ns
    starts = np.arange(k0, k1 + 1, dtype=np.int64) * packet_ns
    bounds = np.searchsorted(t, np.append(starts, (k1 + 1) * packet_ns), side="left")
    return starts, bounds


def compress_time(events: np.ndarray, factor: int) -> np.ndarray:
    """The same events played ``factor`` times faster (a denser stream with the same content)."""
    out = np.array(events, copy=True)
    if len(out):
        t0 = int(out["t"][0])
        out["t"] = t0 + (out["t"] - t0) // int(factor)
    return out


def packetize_mono(events: np.ndarray, width: int = 128, height: int = 128,
                   packet_ns: int = PACKET_NS) -> list[tuple]:
    """``(payload, width, height, time_base)`` mono packets of ``packet_ns`` (as the bag writer cuts them)."""
    from edge_vlm.io.codecs import encode_mono

    starts, bounds = _packet_bounds(events["t"], packet_ns)
    return [(encode_mono(events[bounds[i]:bounds[i + 1]], int(s)), width, height, int(s))
            for i, s in enumerate(starts)]


def encode_evt3(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode time-ordered events as EVT 3.0 words (single CD events, like the real bags).

    Per event: EVT_TIME_HIGH when the high 12 bits of the microsecond time changed,
    EVT_TIME_LOW when the time changed, EVT_ADDR_Y when y changed, then EVT_ADDR_X with
    the polarity. Times are truncated to microseconds (EVT 3.0's resolution) and must
    not decrease. Returns ``(words <u2, end)`` where ``end[i]`` is the word index
    after event ``i`` (to cut packets at event boundaries).
    """
    ev = np.asarray(events)
    n = len(ev)
    if n == 0:
        return np.zeros(0, dtype="<u2"), np.zeros(0, dtype=np.int64)
    us = ev["t"].astype(np.int64) // 1000
    if (np.diff(us) < 0).any():
        raise ValueError("encode_evt3: event times must not decrease")
    hi, lo = (us >> 12) & 0xFFF, us & 0xFFF
    y, x, p = ev["y"].astype(np.int64), ev["x"].astype(np.int64), (ev["p"] != 0).astype(np.int64)
    if int(x.max()) > 0x7FF or int(y.max()) > 0x7FF:
        raise ValueError("encode_evt3: coordinates must fit in 11 bits")
    first = np.zeros(n, dtype=bool)
    first[0] = True
    new_hi = first.copy()
    new_hi[1:] = (us[1:] >> 12) != (us[:-1] >> 12)
    new_t = first.copy()
    new_t[1:] = us[1:] != us[:-1]
    new_y = first.copy()
    new_y[1:] = y[1:] != y[:-1]
    w = np.stack([(0x8 << 12) | hi, (0x6 << 12) | lo, y, (0x2 << 12) | (p << 11) | x], axis=1)
    keep = np.stack([new_hi, new_t | new_hi, new_y, np.ones(n, dtype=bool)], axis=1)
    return w[keep].astype("<u2"), np.cumsum(keep.sum(axis=1))


def packetize_evt3(events: np.ndarray, width: int = 128, height: int = 128,
                   packet_ns: int = PACKET_NS) -> list[tuple]:
    """``(payload, width, height, time_base)`` evt3 packets holding ``packet_ns`` of events each."""
    words, end = encode_evt3(events)
    starts, bounds = _packet_bounds(events["t"], packet_ns)
    wb = np.concatenate(([0], end))[bounds]
    return [(words[wb[i]:wb[i + 1]].tobytes(), width, height, int(s)) for i, s in enumerate(starts)]


def real_evt3_bags() -> list[Path]:
    """The real evt3 bags under ``../shared/data/real`` (EDGE_VLM_REAL_DATA overrides), if present."""
    base = os.environ.get("EDGE_VLM_REAL_DATA") or str(_ROOT.parent / "shared" / "data" / "real")
    names = ("evt3_prophesee_640x480", "evt3_prophesee_1280x720_trigger")
    return [Path(base) / n for n in names if (Path(base) / n / "metadata.yaml").is_file()]


def bag_packets(path) -> tuple[str, list[tuple]]:
    """(encoding, ``(payload, width, height, time_base)`` per EventPacket) of a bag, in bag order."""
    from edge_vlm.io.bag_reader import iter_event_packets

    pk, enc = [], None
    for m in iter_event_packets(path):
        enc = enc or str(m.encoding)
        pk.append((bytes(m.events), int(m.width), int(m.height), int(m.time_base)))
    return enc or "evt3", pk


# ----------------------------------------------------------------------------- decode + bin
def decode_bin(packets: list[tuple], encoding: str, period_ns: int = 33_333_333, model_size: int = 128,
               bin_frames: bool = True) -> tuple[int, int]:
    """What a node does with ``packets``: :class:`~edge_vlm.binner.FrameBinner`, packet by packet.

    ``bin_frames=False``: decode only, packet by packet with one stateful decoder.
    Returns (events, frames binned).
    """
    if not bin_frames:
        from edge_vlm.io.codecs import make_decoder

        dec = make_decoder(encoding)
        return sum(len(dec.decode(data, w, h, tb)) for data, w, h, tb in packets), 0
    from edge_vlm.stream.binner import FrameBinner

    binner = FrameBinner(period_ns, model_size, model_size)
    n_ev = n_fr = 0
    for data, w, h, tb in packets:
        for f in binner.push(encoding, data, w, h, tb):
            n_ev += f.count
            n_fr += 1
    for f in binner.flush():
        n_ev += f.count
        n_fr += 1
    return n_ev, n_fr


def decode_bin_per_packet(packets: list[tuple], encoding: str, period_ns: int = 33_333_333,
                          model_size: int = 128) -> tuple[int, int]:
    """The per-packet reference of :func:`decode_bin`: decoder -> FrameClock.push -> event_histogram."""
    from edge_vlm.io.codecs import make_decoder
    from edge_vlm.stream.frames import FrameClock
    from edge_vlm.stream.histogram import event_histogram

    dec = make_decoder(encoding)
    clock = FrameClock(period_ns)
    n_ev = n_fr = 0
    for data, w, h, tb in packets:
        for f in clock.push(dec.decode(data, w, h, tb), w, h):
            event_histogram(f.events, f.t_start, f.t_end, f.width, f.height, model_size, model_size)
            n_ev += len(f.events)
            n_fr += 1
    for f in clock.flush():
        event_histogram(f.events, f.t_start, f.t_end, f.width, f.height, model_size, model_size)
        n_ev += len(f.events)
        n_fr += 1
    return n_ev, n_fr


def batch_packets(packets: list[tuple], k: int) -> list[tuple]:
    """Payloads of ``k`` consecutive packets joined (valid for evt3: a stream may be cut anywhere)."""
    return [(b"".join(bytes(p[0]) for p in packets[i:i + k]),) + tuple(packets[i][1:])
            for i in range(0, len(packets), k)]


def _stream_figures(packets: list[tuple], encoding: str, repeats: int, batch: int = 0) -> dict:
    """Decode + bin figures of one stream, each the median of ``repeats`` timed runs after a warm-up.

    ``mev_per_s``: events / CPU time of the benchmarking thread (``time.thread_time``: one
    core's work, robust to other load on the machine) of :func:`decode_bin`;
    ``mev_per_s_wall``: the same over wall time; ``per_packet_mev_per_s``: the per-packet
    reference path (:func:`decode_bin_per_packet`, same results); ``decode_only_*``: the
    decoder alone, packet by packet.
    """
    wall, cpu, (n_ev, n_fr) = _timed(lambda: decode_bin(packets, encoding), repeats)
    dwall, dcpu, (n_dec, _) = _timed(lambda: decode_bin(packets, encoding, bin_frames=False), repeats)
    _, pcpu, ref = _timed(lambda: decode_bin_per_packet(packets, encoding), repeats)
    if ref != (n_ev, n_fr) or n_dec != n_ev:
        raise AssertionError(f"decode_bin {(n_ev, n_fr)} != per-packet {ref} (decoded {n_dec})")
    t, td, tw, tp = _median(cpu), _median(dcpu), _median(wall), _median(pcpu)
    nbytes = sum(len(p[0]) for p in packets)
    out = {"encoding": encoding, "packets": len(packets), "events": int(n_ev), "frames": int(n_fr),
           "bytes_per_packet_mean": nbytes / max(1, len(packets)),
           "events_per_packet_mean": n_ev / max(1, len(packets)),
           "events_per_frame_mean": n_ev / max(1, n_fr),
           "mev_per_s": n_ev / t / 1e6 if t else None,
           "mev_per_s_wall": n_ev / tw / 1e6 if tw else None,
           "per_packet_mev_per_s": n_ev / tp / 1e6 if tp else None,
           "decode_only_mev_per_s": n_ev / td / 1e6 if td else None,
           "decode_us_per_packet": td / max(1, len(packets)) * 1e6 if td else None,
           "seconds_median": t, "seconds_cpu_runs": cpu, "seconds_wall_runs": wall}
    if batch > 1 and packets:
        big = batch_packets(packets, batch)
        _, bcpu, _ = _timed(lambda: decode_bin(big, encoding, bin_frames=False), repeats)
        tb = _median(bcpu)
        out[f"decode_only_batched{batch}_mev_per_s"] = n_ev / tb / 1e6 if tb else None
    return out


def _aggregate(parts: list[dict]) -> float | None:
    """Mev/s over several streams (total events / total median time)."""
    t = sum(p["seconds_median"] for p in parts if p.get("seconds_median"))
    return sum(p["events"] for p in parts) / t / 1e6 if t else None


def bench_decode(repeats: int = 5, quick: bool = False, threads: int | None = 1) -> dict:
    """Decode + bin throughput on one thread (numpy is single-threaded), median of ``repeats`` runs
    after a warm-up; per stream see :func:`_stream_figures`.

    Streams: ``simulated`` -- a simulated DVS128 recording (~10 kev/s, ~300 events per 33 ms
    frame) cut into ``mono`` / ``evt3`` packets of :data:`PACKET_NS` (10 ms); ``simulated_dense``
    -- the same played :data:`DENSE_FACTOR` times faster (~200 kev/s, the real 640x480 bag's
    rate); ``real`` -- the real Prophesee evt3 bags, packet by packet as recorded. Headline
    figures: ``mono_mev_per_s`` (simulated mono), ``evt3_mev_per_s`` (the real bags: total
    events / total CPU time), ``evt3_sim_mev_per_s``, ``mono_dense_mev_per_s``,
    ``evt3_sim_dense_mev_per_s``, ``evt3_decode_us_per_packet`` (decoder alone, real bags).
    At ~300 events per frame the fixed cost of a frame (the 4x128x128 float32 histogram
    alone costs tens of microseconds) bounds the rate, whatever the decoder.
    """
    from edge_vlm.stream.native_evbin import backend

    _set_threads(threads)
    labels, clip_s = ((1, 8), 0.3) if quick else (range(1, 12), 1.5)
    rec = simulated_events(labels=labels, clip_s=clip_s, gap_s=0.3 if not quick else 0.1, seed=SIM_SEED)
    ev = rec.events
    span = (int(ev["t"][-1]) - int(ev["t"][0])) / 1e9
    fast = compress_time(ev, DENSE_FACTOR)
    out: dict = {"repeats": repeats, "threads": threads,
                 # FrameBinner's decode + bin path: "native" (edge_vlm/_native/libevbin.so, built by
                 # scripts/setup.sh) or "numpy" (no library, or EDGE_VLM_NO_NATIVE=1); same results
                 "decode_backend": backend(),
                 "measured": "FrameBinner fed packet by packet (decode + FrameClock rules + 4x128x128 "
                             "histogram of every closed 33.3 ms frame); rates = events / median CPU "
                             "time of the thread (time.thread_time) after a warm-up run",
                 "simulated": {"recording": rec.name, "duration_s": span, "packet_ms": PACKET_NS / 1e6,
                               "events_per_s": len(ev) / span if span else None,
                               "mono": _stream_figures(packetize_mono(ev), "mono", repeats),
                               "evt3": _stream_figures(packetize_evt3(ev), "evt3", repeats)},
                 "simulated_dense": {"time_compression": DENSE_FACTOR, "packet_ms": PACKET_NS / 1e6,
                                     "events_per_s": len(ev) / span * DENSE_FACTOR if span else None,
                                     "mono": _stream_figures(packetize_mono(fast), "mono", repeats),
                                     "evt3": _stream_figures(packetize_evt3(fast), "evt3", repeats)},
                 "real": {}}
    for path in real_evt3_bags():
        enc, pk = bag_packets(path)
        if quick:
            pk = pk[:20]
        out["real"][path.name] = _stream_figures(pk, enc, repeats, batch=8 if enc == "evt3" else 0)
    sim = out["simulated"]
    out["mono_mev_per_s"] = sim["mono"]["mev_per_s"]
    out["evt3_sim_mev_per_s"] = sim["evt3"]["mev_per_s"]
    out["mono_dense_mev_per_s"] = out["simulated_dense"]["mono"]["mev_per_s"]
    out["evt3_sim_dense_mev_per_s"] = out["simulated_dense"]["evt3"]["mev_per_s"]
    real = list(out["real"].values())
    out["evt3_mev_per_s"] = _aggregate(real) if real else None
    out["evt3_decode_us_per_packet"] = (
        sum(r["decode_us_per_packet"] * r["packets"] for r in real) / sum(r["packets"] for r in real)
        if real else None)
    return out


# ----------------------------------------------------------------------------- STTF vs dense
def _model(checkpoint: str = "", vocab_source=None):
    """(model, description): the checkpoint (default: the shipped one) or, when missing, an
    untrained model saved/loaded through save_checkpoint (fp16 round trip like a shipped one)."""
    from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint

    path = checkpoint or DEFAULT_CHECKPOINT
    if os.path.isfile(path):
        model, meta = load_checkpoint(path)
        return model, {"checkpoint": os.path.abspath(path), "trained": True,
                       "model_id": str(meta.get("model_id", "captioner")),
                       "layer_thresholds": list(meta.get("layer_thresholds", []))}
    if checkpoint:
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    import torch

    from edge_vlm.model.sttf import CaptionModel, ModelConfig, init_weights
    from edge_vlm.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.build(list(vocab_source or ["a person waves the right hand"]))
    model = CaptionModel(ModelConfig(vocab=tok.vocab))
    init_weights(model)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(os.path.join(tmp, "untrained.pt"), model)
        model, _ = load_checkpoint(os.path.join(tmp, "untrained.pt"))
    return model, {"checkpoint": None, "trained": False, "model_id": "untrained", "layer_thresholds": []}


def clip_phase(clip, t_ns: int) -> str:
    """Where ``t_ns`` lies in a simulated gesture clip: ``blend_in`` / ``blend_out`` while the
    arm moves from / back to the rest pose (the simulator's ramps at both ends of the labelled
    clip), else ``full``."""
    from edge_vlm.sim.dataset import blend_ramp_s

    ramp_ns = blend_ramp_s((clip.t_end_ns - clip.t_start_ns) / 1e9) * 1e9
    if t_ns - clip.t_start_ns <= ramp_ns:
        return "blend_in"
    return "blend_out" if clip.t_end_ns - t_ns < ramp_ns else "full"


def sim_frames(rec, params: dict) -> list[dict]:
    """Frames of a simulated recording as the nodes cut them: histogram + ground truth (+ the
    latest RGB frame at or before the frame's end when the recording has frames)."""
    from edge_vlm.stream.frames import FrameClock, frame_histogram, period_ns

    clock = FrameClock(period_ns(params))
    frames = []
    starts, bounds = _packet_bounds(rec.events["t"], PACKET_NS)
    fs = []
    for i in range(len(starts)):
        fs += clock.push(rec.events[bounds[i]:bounds[i + 1]], 128, 128)
    fs += clock.flush()
    clips = sorted(rec.clips, key=lambda c: c.t_start_ns)
    for f in fs:
        clip = next((c for c in clips if c.t_start_ns < f.t_end <= c.t_end_ns), None)
        frames.append({"index": f.index, "t_end": f.t_end, "events": len(f.events),
                       "hist": frame_histogram(f, params), "gt": clip.label if clip else None,
                       "motion": (clip.attributes.get("motion") if clip else "static"),
                       "phase": clip_phase(clip, f.t_end) if clip else None})
        if rec.frames is not None:
            j = int(np.searchsorted(rec.frame_stamps_ns, f.t_end, side="right")) - 1
            frames[-1]["rgb"] = rec.frames[max(0, min(j, len(rec.frames) - 1))]
    return frames


def _engine(model, params: dict, sparse: bool, minfo: dict | None = None):
    """The captioner engine; for a joint STTF+ANC checkpoint the STTF figures use its Medium
    branch on every frame (the model the paper's STTF compares with: dense Medium)."""
    from edge_vlm.inference.engine import engine_from_params

    eng = engine_from_params(model, params, minfo or {}, sparse=sparse)
    if hasattr(model, "acfg"):
        eng.force_level = 2
    return eng


def test_recordings(quick: bool = False, lightings: tuple | None = None, with_frames: bool = False) -> list:
    """The STTF test set: every held-out *test* subject of ``edge-vlm train`` (defaults: 20
    subjects, validation = the first 3 held-out, test = the last 3) under every lighting
    (or ``lightings``), events only (RGB frames too with ``with_frames``), all 11 gestures.
    ``quick``: one short recording."""
    from edge_vlm.training.train import LIGHTINGS, TrainConfig
    from edge_vlm.sim import split_subjects

    tc = TrainConfig()
    _, held = split_subjects(tc.subjects, tc.val_subjects + tc.test_subjects, tc.seed)
    test_ids = held[tc.val_subjects:]
    if quick:
        return [simulated_events(labels=(2, 8), clip_s=0.4, gap_s=0.3, seed=SIM_SEED, subject=int(test_ids[-1]),
                                 with_frames=with_frames)]
    return [simulated_events(labels=range(1, 12), clip_s=tc.clip_s, gap_s=tc.gap_s, seed=SIM_SEED + 10 * s + i,
                             lighting=light, subject=int(s), with_frames=with_frames)
            for s in test_ids for i, light in enumerate(LIGHTINGS) if lightings is None or light in lightings]


def rgb_mode_accuracy(model, params: dict, minfo: dict, quick: bool = False) -> dict:
    """The two input modes on the same recordings (each test subject under ``lab`` light, with
    RGB frames), sparse engine: per-frame and per-clip gesture accuracy events only vs RGB + events."""
    recs = test_recordings(quick, lightings=("lab",), with_frames=True)
    out: dict = {"recordings": [r.name for r in recs]}
    for mode in ("events_only", "rgb_events"):
        pred, gt, clip_id = [], [], []
        for ri, rec in enumerate(recs):
            eng = _engine(model, params, True, minfo)
            for f in sim_frames(rec, params):
                r = eng.process(f["hist"], f.get("rgb") if mode == "rgb_events" else None)
                if f["gt"] is not None:
                    pred.append(r.label)
                    gt.append(f["gt"])
                    clip_id.append((ri, f["gt"]))
        pred_a, gt_a = np.array(pred), np.array(gt)
        clips = sorted(set(clip_id))
        ci = np.array([clips.index(c) for c in clip_id])
        votes = [np.bincount(pred_a[ci == k], minlength=13).argmax() == gt_a[ci == k][0] for k in range(len(clips))]
        out[mode] = {"accuracy": float((pred_a == gt_a).mean()) if len(gt) else None,
                     "segment_accuracy": float(np.mean(votes)) if votes else None, "frames": int(len(gt)),
                     "clips": len(clips)}
    return out


def bench_sttf(checkpoint: str = "", threads: int = 1, repeats: int = 3, quick: bool = False) -> dict:
    """STTF (sparse token memory) vs the dense model on the same frames, batch 1, ``threads`` threads.

    Quality (accuracy, active tokens, caption agreement, token deviation) over the whole test
    set (:func:`test_recordings`), the two engines in lock step. Wall time of the encoder
    stage (memory update + ViT) on the first test recording: a warm-up pass, then
    ``repeats`` passes per engine alternating the order, per-frame median; the first frame
    (dense in both) is reported apart from the steady state (every later frame, periodic
    dense refreshes included)."""
    import torch

    from edge_vlm.evaluation.evaluate import node_params

    _set_threads(threads)
    _, params, _ = node_params(graph=None)
    recs = test_recordings(quick)
    model, minfo = _model(checkpoint, [r for rec in recs for c in rec.clips for r in c.references])
    res_s, res_d, dev, gt, motion, phase = [], [], [], [], [], []
    with torch.no_grad():
        for rec in recs:
            frames = sim_frames(rec, params)
            es, ed = _engine(model, params, True, minfo), _engine(model, params, False, minfo)
            for j, f in enumerate(frames):
                res_s.append(es.process(f["hist"]))
                res_d.append(ed.process(f["hist"]))
                dev.append(float((es.memory - ed.memory).abs().max()))
                gt.append(f["gt"])
                phase.append(f["phase"])
                motion.append(f["motion"] if j else "first")     # each recording starts dense
    # timing on the first recording
    hists = [f["hist"] for f in sim_frames(recs[0], params)]
    n = len(hists)
    warm = _engine(model, params, True, minfo)
    for h in hists[: min(10, n)]:
        warm.process(h)
    # both encoder backends (the fused native kernel, the PyTorch calls): the speedup divides
    # the faster dense one by the default (native when built) sparse one
    native_on = _native_vit_available()
    backends = (True, False) if native_on else (False,)
    enc = {(s, b): [] for s in (True, False) for b in backends}
    mem = {True: [], False: []}
    tot = {True: [], False: []}
    refreshed = None
    for r in range(max(1, repeats)):
        order = [(s, b) for s in (False, True) for b in backends]
        for sparse, nat in (order if r % 2 == 0 else order[::-1]):
            with _encoder_backend(model, nat):
                e = _engine(model, params, sparse, minfo)
                rs = [e.process(h) for h in hists]
            enc[sparse, nat].append([x.latency_ms["encoder"] for x in rs])
            if nat != backends[0]:
                continue
            mem[sparse].append([x.latency_ms["memory"] + x.latency_ms["encoder"] for x in rs])
            tot[sparse].append([x.latency_ms["total"] for x in rs])
            if sparse:
                refreshed = np.array([x.refreshed for x in rs])
    med = {k: np.median(np.asarray(v), axis=0) for k, v in
           (("tot_s", tot[True]), ("tot_d", tot[False]), ("mem_s", mem[True]), ("mem_d", mem[False]))}
    st = slice(1, None)
    per_frame = {("native" if nat else "torch"): (np.median(np.asarray(enc[False, nat]), axis=0),
                                                  np.median(np.asarray(enc[True, nat]), axis=0))
                 for nat in backends}
    by_backend = {k: {"dense_ms_first": float(d[0]), "sparse_ms_first": float(s[0]),
                      "dense_ms_steady": float(d[st].mean()), "sparse_ms_steady": float(s[st].mean()),
                      "speedup_steady": float(d[st].mean() / s[st].mean())} for k, (d, s) in per_frame.items()}
    dense_backend = min(by_backend, key=lambda k: by_backend[k]["dense_ms_steady"])
    med["enc_d"] = per_frame[dense_backend][0]
    med["enc_s"] = per_frame["native" if native_on else "torch"][1]
    es_mean, ed_mean = float(med["enc_s"][st].mean()), float(med["enc_d"][st].mean())
    frac = np.array([r.active_tokens / r.total_tokens for r in res_s])
    layer_frac = np.array([[t / r.total_tokens for t in r.layer_tokens] for r in res_s])
    change = np.array([r.change_tokens / r.total_tokens for r in res_s])
    first = np.array([m == "first" for m in motion])
    steady = ~first
    # the timing recording's own active fraction (the speedup limit of the timed frames)
    timed_frac = frac[:n][1:].mean()
    fl_s = np.array([r.flops_executed for r in res_s])
    fl_d = np.array([r.flops_executed for r in res_d])
    enc_fl_s = np.array([r.flops.get("encoder", 0.0) for r in res_s])
    enc_fl_d = np.array([r.flops.get("encoder", 0.0) for r in res_d])
    scored = [i for i in range(len(gt)) if gt[i] is not None]

    def acc(res, idx=None):
        idx = scored if idx is None else [i for i in idx if gt[i] is not None]
        return (sum(res[i].label == gt[i] for i in idx) / len(idx)) if idx else None

    def seg_acc(res):
        """Per gesture clip: majority vote of its frames."""
        out, i = [], 0
        while i < len(gt):
            if gt[i] is None:
                i += 1
                continue
            j = i
            j = i + 1
            while j < len(gt) and gt[j] == gt[i] and not first[j]:
                j += 1
            votes = np.bincount([res[k].label for k in range(i, j)], minlength=13)
            out.append(int(np.argmax(votes)) == gt[i])
            i = j
        return (sum(out) / len(out)) if out else None

    def sel(kind):
        return [i for i in range(len(motion)) if motion[i] == kind]

    low, high, static = sel("low"), sel("high"), sel("static")
    phases = {k: [i for i in range(len(phase)) if phase[i] == k] for k in ("blend_in", "full", "blend_out")}
    mean_frac = lambda idx: float(frac[idx].mean()) if len(idx) else None  # noqa: E731
    a_d, a_s = acc(res_d), acc(res_s)
    curve = vit_speedup_curve(model, quick=quick)
    rgb_modes = rgb_mode_accuracy(model, params, minfo, quick=quick)
    return {
        "model": minfo, "threads": threads, "repeats": repeats,
        "recordings": [r.name for r in recs], "frames": len(res_s), "frames_scored": len(scored),
        "timing_recording": recs[0].name, "timing_frames": n,
        "params": {k: params[k] for k in ("mask_method", "refresh_period", "drift_bound", "layer_threshold_scale",
                                          "decoding", "beam_size", "max_caption_tokens", "frame_period_ms")},
        "encoder_ms_first_sparse": float(med["enc_s"][0]), "encoder_ms_first_dense": float(med["enc_d"][0]),
        "encoder_ms_steady_sparse": es_mean, "encoder_ms_steady_dense": ed_mean,
        "encoder_ms_steady_sparse_no_refresh": (float(med["enc_s"][1:][~refreshed[1:]].mean())
                                                if (~refreshed[1:]).any() else None),
        "sparse_cost_fit": _cost_fit(med["enc_s"], med["enc_d"], frac[:n] * res_s[0].total_tokens, refreshed,
                                     res_s[0].total_tokens),
        "total_ms_steady_sparse": float(med["tot_s"][st].mean()), "total_ms_steady_dense": float(med["tot_d"][st].mean()),
        "speedup_first": float(med["enc_d"][0] / med["enc_s"][0]),
        "memory_encoder_ms_steady_sparse": float(med["mem_s"][st].mean()),
        "memory_encoder_ms_steady_dense": float(med["mem_d"][st].mean()),
        "speedup_memory_encoder_steady": float(med["mem_d"][st].mean() / med["mem_s"][st].mean()),
        "speedup_steady": ed_mean / es_mean if es_mean else None,
        "encoder_backend": "native" if native_on else "torch", "dense_backend": dense_backend,
        "encoder_backends": by_backend,
        "speedup_limit": float(1.0 / timed_frac) if timed_frac else None,
        "speedup_total_steady": float(med["tot_d"][st].mean() / med["tot_s"][st].mean()),
        "active_token_fraction": float(frac[steady].mean()),
        "active_token_fraction_p95": float(np.percentile(frac[steady], 95)),
        "active_tokens_mean": float(frac[steady].mean() * res_s[0].total_tokens),
        "total_tokens": int(res_s[0].total_tokens),
        "layer_token_fraction": [float(x) for x in layer_frac[steady].mean(axis=0)],
        "change_token_fraction": float(change[steady].mean()),
        "active_token_fraction_low_motion": mean_frac(low), "active_token_fraction_high_motion": mean_frac(high),
        "active_token_fraction_static": mean_frac(static),
        "frames_low_motion": len(low), "frames_high_motion": len(high), "frames_static": len(static),
        "refresh_frames": int(sum(r.refreshed for r in res_s)),
        "flops_executed_mean": float(fl_s.mean()), "flops_dense_mean": float(fl_d.mean()),
        "flops_ratio": float(fl_s.sum() / fl_d.sum()) if fl_d.sum() else None,
        "encoder_flops_ratio": float(enc_fl_s.sum() / enc_fl_d.sum()) if enc_fl_d.sum() else None,
        "caption_agreement": float(np.mean([x.text == y.text for x, y in zip(res_s, res_d)])),
        "label_agreement": float(np.mean([x.label == y.label for x, y in zip(res_s, res_d)])),
        "accuracy_dense": a_d, "accuracy_sparse": a_s,
        "accuracy_retained": (a_s / a_d) if a_d else None,
        "accuracy_dense_low_motion": acc(res_d, low), "accuracy_sparse_low_motion": acc(res_s, low),
        "accuracy_dense_high_motion": acc(res_d, high), "accuracy_sparse_high_motion": acc(res_s, high),
        "segment_accuracy_dense": seg_acc(res_d), "segment_accuracy_sparse": seg_acc(res_s),
        "accuracy_by_clip_phase": {k: {"frames": len(idx), "dense": acc(res_d, idx), "sparse": acc(res_s, idx)}
                                   for k, idx in phases.items()},
        "token_deviation_max": float(max(dev)) if dev else None,
        "token_deviation_mean": float(np.mean(dev)) if dev else None,
        "speedup_by_active_tokens": curve,
        "input_modes": rgb_modes,
        "accuracy_sparse_rgb_events": rgb_modes["rgb_events"]["accuracy"],
    }


def _cost_fit(sparse_ms: np.ndarray, dense_ms: np.ndarray, tokens: np.ndarray, refreshed: np.ndarray,
              total_tokens: int) -> dict | None:
    """Least-squares ``ms = fixed + per_token * active tokens`` over the timed sparse frames that
    were not refreshes (the first frame excluded), beside the dense frames' cost per token: where
    a sparse frame's time goes (a per-frame fixed cost vs its tokens)."""
    keep = ~np.asarray(refreshed, dtype=bool)
    keep[0] = False
    if keep.sum() < 3 or np.ptp(tokens[keep]) == 0:
        return None
    a = np.vstack([np.ones(int(keep.sum())), tokens[keep]]).T
    (fixed, per_token), *_ = np.linalg.lstsq(a, sparse_ms[keep], rcond=None)
    return {"frames": int(keep.sum()), "fixed_ms": float(fixed), "per_token_ms": float(per_token),
            "dense_per_token_ms": float(dense_ms[1:].mean() / total_tokens), "tokens_mean": float(tokens[keep].mean())}


def vit_speedup_curve(model, sizes=(8, 16, 32, 64, 128), quick: bool = False) -> list[dict]:
    """The encoder (ViT) alone: dense pass vs sparse recompute of ``n`` random tokens, per n
    (median of repeated calls on the same memory): how close the sparse path gets to its ideal
    N/n speedup as the active-token count grows (small matmuls run below peak on a CPU)."""
    import torch

    vit = model.branches[2] if hasattr(model, "branches") else model.vit
    n_all = vit.pos.shape[0]
    mem = vit.new_memory()
    e = torch.randn(n_all, vit.pos.shape[1])
    rng = np.random.default_rng(0)
    reps = 3 if quick else 30

    def med(fn, k):
        ts = []
        for _ in range(k):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    out = []
    backends = (True, False) if _native_vit_available() else (False,)
    idxs = [torch.from_numpy(np.sort(rng.choice(n_all, n, replace=False))) for n in sizes]
    dense, sparse = {}, {}
    with torch.no_grad():
        for nat in backends:
            with _encoder_backend(model, nat):
                vit.dense_infer(e, mem)
                dense[nat] = med(lambda: vit.dense_infer(e, mem), max(3, reps // 3))
                for n, idx in zip(sizes, idxs):
                    vit.sparse_infer(e, idx, mem, [])
                    sparse[n, nat] = med(lambda: vit.sparse_infer(e, idx, mem, []), reps)
    d = min(dense.values())                       # the faster dense backend
    for n in sizes:
        sp = sparse[n, backends[0]]
        row = {"tokens": int(n), "dense_ms": d * 1e3, "sparse_ms": sp * 1e3, "speedup": d / sp,
               "limit": n_all / n, "efficiency": d / sp / (n_all / n)}
        if backends[0]:
            row.update({"dense_ms_native": dense[True] * 1e3, "dense_ms_torch": dense[False] * 1e3,
                        "sparse_ms_torch": sparse[n, False] * 1e3})
        out.append(row)
    return out


def _native_vit_available() -> bool:
    from edge_vlm.inference import native_vit

    return native_vit.load() is not None


@contextlib.contextmanager
def _encoder_backend(model, native: bool):
    """Every ViT of ``model`` runs its inference passes on the native kernel (``True``, when
    built) or on PyTorch calls (``False``) inside the block; the previous choice is restored."""
    vits = list(model.branches) if hasattr(model, "branches") else [model.vit]
    before = [v.native for v in vits]
    for v in vits:
        v.native = native
    try:
        yield
    finally:
        for v, b in zip(vits, before):
            v.native = b


def e2e_bag(out_dir: str | os.PathLike, labels=range(1, 12), clip_s: float = 1.0, gap_s: float = 0.3,
            seed: int = 11, packet_ms: float = 10.0) -> str:
    """A simulated DVS128 bag (events + ground truth, no RGB) of a held-out subject, EventPackets of
    ``packet_ms`` (10 ms: ``edge-vlm synth``'s default); made once, then reused."""
    from edge_vlm.io.bag_writer import write_bag

    labels = [int(x) for x in labels]
    path = Path(out_dir) / f"bag_s{seed}_c{clip_s:g}_g{gap_s:g}_p{packet_ms:g}_l{'-'.join(map(str, labels))}"
    if (path / "metadata.yaml").is_file():
        return str(path)
    rec = simulated_events(labels=labels, clip_s=clip_s, gap_s=gap_s, seed=seed)
    write_bag(path, events=rec.events, ground_truth=[c.ground_truth() for c in rec.clips], overwrite=True,
              packet_ns=int(round(packet_ms * 1e6)))
    return str(path)


def _trend(ts: list[float], vs: list[float]) -> dict:
    """Slope (per s) of ``vs`` over ``ts`` and the medians of its first and last quarter."""
    if len(vs) < 8:
        return {"slope_per_s": None, "first_quarter_p50": None, "last_quarter_p50": None}
    t, v = np.asarray(ts, dtype=float), np.asarray(vs, dtype=float)
    q = len(v) // 4
    slope = float(np.polyfit(t - t[0], v, 1)[0]) if t[-1] > t[0] else None
    return {"slope_per_s": slope, "first_quarter_p50": float(np.median(v[:q])),
            "last_quarter_p50": float(np.median(v[-q:]))}


def _shutdown_counters(log_path: str) -> dict:
    """``key=value`` integers of the node's last ``shutdown:`` log line ({} when absent)."""
    try:
        with open(log_path, errors="replace") as fh:
            lines = [ln for ln in fh if "shutdown:" in ln]
    except OSError:
        return {}
    out = {}
    for tok in (lines[-1].split("shutdown:", 1)[1].split() if lines else []):
        k, _, v = tok.partition("=")
        if v.lstrip("-").isdigit():
            out[k] = int(v)
    return out


def bench_e2e(bag: str | None = None, checkpoint: str = "", threads: int = 1, rate: float = 1.0,
              work_dir: str | None = None, quick: bool = False, log=None, packet_ms: float = 10.0) -> dict:
    """Play a simulated DVS128 bag at ``rate`` (1 = real time) through the node graph.

    Needs the ROS 2 workspace (``source env.sh``); returns ``{"skipped": reason}`` without it.
    """
    try:
        from edge_vlm_ros.demo import run_on_bag
        from edge_vlm.evaluation.records import read_jsonl, summarize
    except ImportError as exc:
        return {"skipped": f"ROS 2 workspace not available ({exc}); run `source env.sh`"}
    work = Path(work_dir or (_ROOT / "data" / "bench"))
    work.mkdir(parents=True, exist_ok=True)
    bag_default = bag is None
    if bag is None:
        bag = e2e_bag(work, labels=(2, 8) if quick else range(1, 12), clip_s=0.5 if quick else 1.0,
                      packet_ms=packet_ms)
    overrides = {"vlm_captioner.num_threads": int(threads)}
    if checkpoint:
        overrides["vlm_captioner.checkpoint"] = os.path.abspath(checkpoint)
    out_dir = str(work / "e2e_last")          # records and node logs of the latest run
    shutil.rmtree(out_dir, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_on_bag(bag, out_dir, overrides=overrides, rate=rate, drain=3.0,
                     log=log or (lambda *a, **k: None))
    wall = time.perf_counter() - t0
    records = read_jsonl(res["records"])
    rows, summary = summarize(records)
    # wait stage (frame close -> processing start) and packet->caption latency over time
    waits = []
    for r in records:
        if r.get("stream") == "compute_cost":
            d = r.get("data") or {}
            stages = dict(zip(d.get("stage_names", []), d.get("stage_latency_ms", [])))
            if "wait" in stages:
                waits.append((r["recv_ns"] / 1e9, float(stages["wait"])))
    caps = sorted((r for r in records if r.get("stream") == "caption"), key=lambda r: r["recv_ns"])
    recv = {r["stamp_ns"]: r["recv_ns"] / 1e9 for r in caps}
    p2c = [(recv.get(r.stamp_ns), r.packet_to_caption_ms) for r in rows
           if r.packet_to_caption_ms is not None and r.stamp_ns in recv]
    p2c_trend = _trend([a for a, _ in p2c], [b for _, b in p2c])
    wait_trend = _trend([a for a, _ in waits], [b for _, b in waits])
    counters = _shutdown_counters(os.path.join(res["logs"], "vlm_captioner.log"))
    dropped = counters.get("dropped")
    grows = None
    if p2c_trend["slope_per_s"] is not None:
        f, last = p2c_trend["first_quarter_p50"], p2c_trend["last_quarter_p50"]
        grows = bool(last > 1.5 * f and last - f > 20.0)
    if dropped:          # the bounded queue was full: the backlog hit its cap (latency then plateaus)
        grows = True
    # frames the graph should have captioned: the bag's sensor span / period
    ev_stamps = sorted(r["stamp_ns"] for r in records if r.get("stream") == "events" and r.get("stamp_ns"))
    expected = None
    if ev_stamps:
        expected = int((ev_stamps[-1] - ev_stamps[0]) // 33_333_333) + 1
    return {
        "bag": str(bag), "rate": rate, "threads": threads, "packet_ms": packet_ms if bag_default else None, "wall_s": wall, "out_dir": out_dir,
        "exit_codes": res["exit_codes"], "player_rc": res["player_rc"],
        "frames_processed": summary.frames_processed, "frames_expected_approx": expected,
        "frame_latency_ms_p50": summary.latency_ms_p50, "frame_latency_ms_p95": summary.latency_ms_p95,
        "caption_latency_ms_p50": summary.packet_to_caption_ms_p50,
        "caption_latency_ms_p95": summary.packet_to_caption_ms_p95,
        "caption_latency_trend": p2c_trend, "wait_ms_trend": wait_trend,
        "wait_ms_p95": float(np.percentile([w for _, w in waits], 95)) if waits else None,
        "backlog_grows": grows,
        "backlog_rule": "frames dropped by the captioner's backpressure, or the last quarter's median "
                        "packet->caption latency > 1.5x the first quarter's and +20 ms",
        "frames_dropped": dropped, "captioner_counters": counters,
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "gesture_accuracy": summary.gesture_accuracy,
        "mean_active_token_fraction": summary.mean_active_token_fraction,
        "flops_saved_fraction": summary.flops_saved_fraction,
    }


# ----------------------------------------------------------------------------- all
def bench_all(checkpoint: str = "", threads: int = 1, repeats: int = 5, quick: bool = False,
              e2e: bool = True, log=None, packet_ms: float = 10.0, anc_part: bool = True) -> dict:
    """Every benchmark; the figures of :data:`SUMMARY_KEYS` at the top level, details below."""
    say = log or (lambda *a, **k: None)
    t0 = time.perf_counter()
    say("bench: decode + bin ...")
    dec = bench_decode(repeats=repeats, quick=quick, threads=1)
    say("bench: STTF vs dense ...")
    sttf = bench_sttf(checkpoint=checkpoint, threads=threads, repeats=repeats, quick=quick)
    anc = {"skipped": "disabled"}
    if anc_part:
        from edge_vlm.bench.anc import bench_anc

        say("bench: ANC vs Medium-only ...")
        try:
            anc = bench_anc(checkpoint=checkpoint, threads=threads, quick=quick,
                            plot=None if quick else str(_ROOT / "docs" / "anc_budget_sweep.png"))
        except ValueError as exc:       # an STTF-only checkpoint
            anc = {"skipped": str(exc)}
    ee = {"skipped": "disabled"}
    if e2e:
        say("bench: end to end (node graph, 1x) ...")
        ee = bench_e2e(checkpoint=checkpoint, threads=threads, quick=quick, packet_ms=packet_ms)
    out = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(threads)}
    for k in SUMMARY_KEYS:
        for part in (dec, sttf, anc, ee):
            if k in part:
                out[k] = part[k]
                break
        else:
            out[k] = None
    out["budget_sweep"] = anc.get("budget_sweep")
    out["checkpoint"] = sttf["model"]
    out["details"] = {"decode": dec, "sttf": sttf, "anc": anc, "e2e": ee}
    out["bench_wall_s"] = time.perf_counter() - t0
    return out


_DESCRIPTIONS = {
    "mono_mev_per_s": "mono decode + bin (FrameBinner), simulated DVS128 stream (~10 kev/s), 10 ms packets, "
                      "1 thread (Mev/s)",
    "evt3_mev_per_s": "evt3 decode + bin, the two real Prophesee bags packet by packet as recorded (Mev/s)",
    "evt3_sim_mev_per_s": "evt3 decode + bin, simulated stream encoded as EVT 3.0, 10 ms packets (Mev/s)",
    "mono_dense_mev_per_s": f"mono decode + bin, the simulated stream played {DENSE_FACTOR}x faster (~200 kev/s, "
                            "the real 640x480 bag's rate), 10 ms packets (Mev/s)",
    "evt3_sim_dense_mev_per_s": f"evt3 decode + bin, the simulated stream played {DENSE_FACTOR}x faster, "
                                "10 ms packets (Mev/s)",
    "evt3_decode_us_per_packet": "evt3 decode only, real bags: time per packet (us)",
    "frame_latency_ms_p95": "node graph, simulated DVS128 bag (10 ms packets) at 1x: per-frame processing "
                            "(captioner total stage), p95 (ms)",
    "caption_latency_ms_p50": "node graph at 1x: packet -> caption, p50 (ms)",
    "caption_latency_ms_p95": "node graph at 1x: packet -> caption, p95 (ms)",
    "backlog_grows": "node graph at 1x: does packet -> caption latency grow over the run",
    "accuracy_dense": "per-frame gesture accuracy, dense encoder (the 3 held-out test subjects x 3 lightings, "
                      "events only)",
    "accuracy_sparse": "per-frame gesture accuracy, STTF sparse encoder (same frames)",
    "segment_accuracy_dense": "per-clip gesture accuracy (majority vote of the clip's frames), dense encoder",
    "segment_accuracy_sparse": "per-clip gesture accuracy (majority vote of the clip's frames), STTF sparse",
    "accuracy_sparse_rgb_events": "per-frame gesture accuracy, STTF sparse, RGB + events input (each test "
                                  "subject under lab light; events only on the same recordings in "
                                  "details.sttf.input_modes)",
    "active_token_fraction": "mean fraction of tokens recomputed per frame (steady state, refreshes included)",
    "active_token_fraction_low_motion": "same, frames of low-motion gestures",
    "speedup_steady": "encoder wall time dense / sparse, steady state (frames after the first; timing "
                      "recording); dense = the faster of the native-kernel and PyTorch backends",
    "speedup_limit": "total / active tokens on the timing recording (the encoder's ideal speedup)",
    "flops_reduction_low_motion": "1 - FLOPs(STTF+ANC) / FLOPs(Medium-only dense), low-motion + static frames "
                                  "(all stages)",
    "walltime_reduction_low_motion": "1 - wall time(STTF+ANC) / wall time(Medium-only dense), same frames",
    "accuracy_medium_high_motion": "per-frame accuracy of Medium-only dense on high-motion frames",
    "accuracy_anc_high_motion": "per-frame accuracy of STTF+ANC on the same frames",
    "router_cost_fraction_of_tiny": "FLOPs of estimator + router / FLOPs of the Tiny branch (dense)",
    "flops_ratio": "FLOPs executed sparse / dense (whole model, per frame)",
    "caption_agreement": "fraction of frames whose sparse caption equals the dense one",
    "token_deviation_max": "max over frames of abs(sparse token memory - dense re-encode), per element",
    "encoder_ms_first_sparse": "encoder time, first frame (dense refresh), sparse engine (ms)",
    "encoder_ms_first_dense": "encoder time, first frame, dense engine (ms)",
    "encoder_ms_steady_sparse": "encoder time per frame, steady state, sparse (ms)",
    "encoder_ms_steady_dense": "encoder time per frame, steady state, dense (ms)",
}


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def markdown(result: dict, command: str) -> str:
    """``docs/benchmarks.md``: the figures, the command that produced them and the machine."""
    m = result.get("machine", {})
    d = result.get("details", {})
    lines = ["# edge_vlm benchmarks", "",
             f"Produced by `{command}` at {result.get('timestamp')} "
             f"(took {result.get('bench_wall_s', 0):.0f} s).", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch threads {m.get('threads')}, "
             f"torch {m.get('torch')}, numpy {m.get('numpy')}, Python {m.get('python')} "
             f"(load average at the end: {m.get('load_avg_1m')}).", "",
             f"Checkpoint: {(result.get('checkpoint') or {}).get('checkpoint') or 'untrained model'}", "",
             "| figure | value | what |", "|---|---|---|"]
    for k in SUMMARY_KEYS:
        lines.append(f"| `{k}` | {_fmt(result.get(k))} | {_DESCRIPTIONS.get(k, '')} |")
    dec = d.get("decode") or {}
    if dec:
        lines += ["", "## Decode + bin per stream (1 thread, median of "
                  f"{dec.get('repeats')} runs after a warm-up)", "",
                  "Rates use the decoding thread's CPU time (`time.thread_time`: one core's work, robust to "
                  "other load); the wall-clock rate is given too. Decode + bin = one stateful decoder, the "
                  "nodes' FrameClock and `event_histogram` of every closed 33 ms frame on the 128x128 grid "
                  f"(FrameBinner, `{dec.get('decode_backend', 'numpy')}` backend).", "",
                  "| stream | encoding | packets | events | bytes/packet | decode+bin Mev/s | (wall) | "
                  "decode-only Mev/s | decode us/packet | decode-only, 8 packets joined |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        rows = [(f"simulated {k}", v) for k, v in (dec.get("simulated") or {}).items() if isinstance(v, dict)]
        rows += [(f"simulated, 10 ms packets {k}", v) for k, v in (dec.get("simulated_10ms") or {}).items()
                 if isinstance(v, dict)]
        rows += [(f"simulated x{DENSE_FACTOR} {k}", v) for k, v in (dec.get("simulated_dense") or {}).items()
                 if isinstance(v, dict)]
        rows += [(f"real `{k}`", v) for k, v in (dec.get("real") or {}).items()]
        for name, v in rows:
            lines.append(f"| {name} | {v['encoding']} | {v['packets']} | {v['events']:,} | "
                         f"{v['bytes_per_packet_mean']:.0f} | {_fmt(v['mev_per_s'])} | "
                         f"{_fmt(v.get('mev_per_s_wall'))} | {_fmt(v['decode_only_mev_per_s'])} | "
                         f"{_fmt(v['decode_us_per_packet'])} | {_fmt(v.get('decode_only_batched8_mev_per_s'))} |")
    st = d.get("sttf") or {}
    if st:
        lines += ["", f"## STTF vs dense ({st.get('frames')} frames of {len(st.get('recordings') or [])} test "
                  f"recordings, batch 1, {st.get('threads')} torch thread(s); timing on "
                  f"`{st.get('timing_recording')}`, per-frame median of {st.get('repeats')} passes)", "",
                  "| figure | value |", "|---|---|"]
        for k in ("accuracy_dense", "accuracy_sparse", "accuracy_retained", "accuracy_sparse_rgb_events",
                  "segment_accuracy_dense",
                  "segment_accuracy_sparse", "accuracy_dense_low_motion", "accuracy_sparse_low_motion",
                  "accuracy_dense_high_motion", "accuracy_sparse_high_motion", "caption_agreement",
                  "label_agreement", "token_deviation_max", "token_deviation_mean",
                  "active_token_fraction", "active_tokens_mean", "active_token_fraction_p95",
                  "change_token_fraction", "layer_token_fraction", "active_token_fraction_low_motion",
                  "active_token_fraction_high_motion", "active_token_fraction_static", "refresh_frames",
                  "encoder_ms_first_sparse", "encoder_ms_first_dense", "speedup_first",
                  "encoder_ms_steady_sparse", "encoder_ms_steady_dense", "encoder_ms_steady_sparse_no_refresh",
                  "speedup_steady", "speedup_limit", "memory_encoder_ms_steady_sparse",
                  "memory_encoder_ms_steady_dense", "speedup_memory_encoder_steady", "total_ms_steady_sparse",
                  "total_ms_steady_dense", "speedup_total_steady", "flops_ratio", "encoder_flops_ratio",
                  "frames_scored"):
            lines.append(f"| `{k}` | {_fmt(st.get(k))} |")
        ph = st.get("accuracy_by_clip_phase") or {}
        if ph:
            lines += ["", "Per-frame accuracy by where the frame lies in its clip (`accuracy_by_clip_phase`; the "
                      "simulated arm blends in from and out to the rest pose over the clip's first and last "
                      "0.2 s):", "", "| phase | frames | dense | sparse |", "|---|---|---|---|"]
            for k, r in ph.items():
                lines.append(f"| {k} | {r['frames']} | {_fmt(r['dense'])} | {_fmt(r['sparse'])} |")
        eb = st.get("encoder_backends") or {}
        if eb:
            lines += ["", "Encoder stage per backend, same frames (`encoder_backends`; `speedup_steady` divides "
                      f"the faster dense backend, here `{st.get('dense_backend')}`, by the sparse "
                      f"`{st.get('encoder_backend')}` one):", "",
                      "| backend | dense ms, first | sparse ms, first | dense ms, steady | sparse ms, steady | "
                      "speedup, steady |", "|---|---|---|---|---|---|"]
            for k, r in eb.items():
                lines.append(f"| {k} | {_fmt(r['dense_ms_first'])} | {_fmt(r['sparse_ms_first'])} | "
                             f"{_fmt(r['dense_ms_steady'])} | {_fmt(r['sparse_ms_steady'])} | "
                             f"{_fmt(r['speedup_steady'])} |")
        fit = st.get("sparse_cost_fit")
        if fit:
            lines += ["", f"Where a sparse frame's encoder time goes (`sparse_cost_fit`: least squares over the "
                      f"{fit['frames']} timed sparse frames that were not refreshes): "
                      f"{_fmt(fit['fixed_ms'])} ms per frame + {_fmt(fit['per_token_ms'])} ms per active token "
                      f"(mean {_fmt(fit['tokens_mean'])} tokens), against {_fmt(fit['dense_per_token_ms'])} ms "
                      "per token of a dense frame."]
        curve = st.get("speedup_by_active_tokens") or []
        if curve:
            lines += ["", "Encoder (ViT) alone, random active sets: sparse speedup vs its ideal N/n "
                      "(`speedup_by_active_tokens`; dense = the faster backend):", "",
                      "| active tokens | dense ms | sparse ms | speedup | ideal | efficiency | "
                      "dense ms, torch | sparse ms, torch |", "|---|---|---|---|---|---|---|---|"]
            for c in curve:
                lines.append(f"| {c['tokens']} | {_fmt(c['dense_ms'])} | {_fmt(c['sparse_ms'])} | "
                             f"{_fmt(c['speedup'])} | {_fmt(c['limit'])} | {_fmt(c['efficiency'])} | "
                             f"{_fmt(c.get('dense_ms_torch'))} | {_fmt(c.get('sparse_ms_torch'))} |")
    an = d.get("anc") or {}
    if an:
        lines += ["", "## ANC: the joint STTF+ANC checkpoint against Medium-only (same frames, batch 1)", ""]
        if "skipped" in an:
            lines.append(f"Skipped: {an['skipped']}")
        else:
            lines += [f"{an.get('frames')} frames of {', '.join(f'`{r}`' for r in an.get('recordings', []))} "
                      f"({an.get('frames_low_motion')} low-motion/static, {an.get('frames_high_motion')} "
                      "high-motion). FLOPs per frame over all stages (analytic), wall = engine total latency.", "",
                      "| mode | accuracy | acc. low motion | acc. high motion | GFLOPs/frame | GFLOPs low | "
                      "ms/frame | ms low | params active | low-motion branches (tiny/small/medium) |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for mode, r in (an.get("ablation") or {}).items():
                sh = r.get("branch_share_low_motion") or {}
                lines.append(f"| {mode} | {_fmt(r['accuracy'])} | {_fmt(r['accuracy_low_motion'])} | "
                             f"{_fmt(r['accuracy_high_motion'])} | {_fmt(r['gflops'])} | "
                             f"{_fmt(r['gflops_low_motion'])} | {_fmt(r['ms'])} | {_fmt(r['ms_low_motion'])} | "
                             f"{_fmt(r['params_active_mean'])} | "
                             f"{' / '.join(_fmt(sh.get(k)) for k in ('tiny', 'small', 'medium'))} |")
            lines += ["", "Budget sweep (STTF+ANC, same frames; plot `docs/anc_budget_sweep.png`):", "",
                      "| budget | GFLOPs/frame | accuracy | branch share tiny/small/medium |", "|---|---|---|---|"]
            for b in an.get("budget_sweep") or []:
                sh = b.get("branch_share") or {}
                lines.append(f"| {b['budget']} | {_fmt(b['gflops'])} | {_fmt(b['accuracy'])} | "
                             f"{' / '.join(_fmt(sh.get(k)) for k in ('tiny', 'small', 'medium'))} |")
            cg = an.get("caption_gate") or {}
            if cg:
                lines += ["", f"Caption gate (`caption_reuse_threshold` = {_fmt(cg.get('caption_reuse_threshold'))}, "
                          f"STTF+ANC): text decoded on {_fmt(cg.get('decoded_fraction'))} of the frames "
                          f"({_fmt(cg.get('decoded_fraction_low_motion'))} of the low-motion ones); published text "
                          f"equal to that of an engine decoding every frame on "
                          f"{_fmt(cg.get('text_agreement_with_decoding_every_frame'))} of the frames."]
    ee = d.get("e2e") or {}
    if ee:
        lines += ["", f"## End to end (node graph, simulated DVS128 bag, {_fmt(ee.get('packet_ms'))} ms "
                  "EventPackets, played at 1x)", ""]
        if "skipped" in ee:
            lines.append(f"Skipped: {ee['skipped']}")
        else:
            lines += ["| figure | value |", "|---|---|"]
            cc = ee.get("captioner_counters") or {}
            ee = {**ee, "missing_packets": cc.get("missing_packets"), "forced_refreshes": cc.get("forced_refreshes")}
            for k in ("frames_processed", "frames_expected_approx", "frames_dropped", "missing_packets",
                      "forced_refreshes", "frame_latency_ms_p50", "frame_latency_ms_p95",
                      "caption_latency_ms_p50", "caption_latency_ms_p95", "wait_ms_p95", "backlog_grows",
                      "gesture_accuracy", "mean_active_token_fraction", "flops_saved_fraction",
                      "load_avg_1m_after"):
                lines.append(f"| `{k}` | {_fmt(ee.get(k))} |")
            tr = ee.get("caption_latency_trend") or {}
            lines += ["", f"packet->caption trend: slope {_fmt(tr.get('slope_per_s'))} ms/s, median first quarter "
                      f"{_fmt(tr.get('first_quarter_p50'))} ms, last quarter {_fmt(tr.get('last_quarter_p50'))} ms "
                      f"(backlog rule: {ee.get('backlog_rule')})."]
    lines.append("")
    return "\n".join(lines)


def write_markdown(result: dict, path: str | os.PathLike, command: str) -> str:
    """Write the Markdown report and, next to it, the full JSON (``<name>.json``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(markdown(result, command))
    p.with_suffix(".json").write_text(json.dumps({"command": command, **json.loads(to_json(result))}, indent=1))
    return str(p)


def to_json(result: dict) -> str:
    from edge_vlm.evaluation.metrics import json_safe

    return json.dumps(json_safe(result))


if __name__ == "__main__":  # pragma: no cover
    print(to_json(bench_all(quick="--quick" in sys.argv)))
