"""EventPacket decode + frame binning throughput (Mev/s, one thread).

``mono`` on simulated streams (10 ms packets, ``edge-vlm synth``'s default), ``evt3`` on the
real Prophesee bags packet by packet as recorded, and on simulated streams encoded with
:func:`~edge_vlm.bench.streams.encode_evt3`. "decode + bin" is what a node does with every
packet: :class:`~edge_vlm.stream.binner.FrameBinner` (stateful decode, the
:class:`~edge_vlm.stream.frames.FrameClock` rules, the event histogram of every closed frame
on the 128x128 model grid), fed packet by packet.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edge_vlm.bench.common import median, set_threads, timed
from edge_vlm.bench.streams import (PACKET_NS, SIM_SEED, Packet, bag_packets, compress_time,
                                    packetize_evt3, packetize_mono, real_evt3_bags,
                                    simulated_events)
from edge_vlm.io.codecs import make_decoder
from edge_vlm.stream.binner import FrameBinner
from edge_vlm.stream.frames import FrameClock
from edge_vlm.stream.histogram import event_histogram
from edge_vlm.stream.native_evbin import backend

__all__ = ["DENSE_FACTOR", "BinCounts", "decode_bin", "decode_bin_per_packet", "batch_packets",
           "stream_figures", "bench_decode"]

#: time compression of the "dense" simulated stream: about the event rate of the real 640x480
#: Prophesee bag
DENSE_FACTOR = 20
_MEASURED = ("FrameBinner fed packet by packet (decode + FrameClock rules + 4x128x128 histogram "
             "of every closed 33.3 ms frame); rates = events / median CPU time of the thread "
             "(time.thread_time) after a warm-up run")


class BinCounts(NamedTuple):
    """Events decoded and frames binned."""

    events: int
    frames: int


def decode_bin(packets: list[Packet], encoding: str, period_ns: int = 33_333_333,
               model_size: int = 128, bin_frames: bool = True) -> BinCounts:
    """What a node does with ``packets``: :class:`~edge_vlm.stream.binner.FrameBinner`,
    packet by packet.

    ``bin_frames=False``: decode only, packet by packet with one stateful decoder.
    """
    if not bin_frames:
        dec = make_decoder(encoding)
        return BinCounts(sum(len(dec.decode(data, w, h, tb)) for data, w, h, tb in packets), 0)
    binner = FrameBinner(period_ns, model_size, model_size)
    n_ev = n_fr = 0
    for data, w, h, tb in packets:
        for f in binner.push(encoding, data, w, h, tb):
            n_ev += f.count
            n_fr += 1
    for f in binner.flush():
        n_ev += f.count
        n_fr += 1
    return BinCounts(n_ev, n_fr)


def decode_bin_per_packet(packets: list[Packet], encoding: str, period_ns: int = 33_333_333,
                          model_size: int = 128) -> BinCounts:
    """The per-packet reference of :func:`decode_bin`: decoder -> FrameClock.push ->
    event_histogram."""
    dec = make_decoder(encoding)
    clock = FrameClock(period_ns)
    n_ev = n_fr = 0
    for data, w, h, tb in packets:
        for f in clock.push(dec.decode(data, w, h, tb), w, h):
            event_histogram(f.events, f.t_start, f.t_end, f.width, f.height, model_size,
                            model_size)
            n_ev += len(f.events)
            n_fr += 1
    for f in clock.flush():
        event_histogram(f.events, f.t_start, f.t_end, f.width, f.height, model_size, model_size)
        n_ev += len(f.events)
        n_fr += 1
    return BinCounts(n_ev, n_fr)


def batch_packets(packets: list[Packet], k: int) -> list[Packet]:
    """Payloads of ``k`` consecutive packets joined (valid for evt3: a stream may be cut
    anywhere)."""
    return [(b"".join(bytes(p[0]) for p in packets[i:i + k]),) + tuple(packets[i][1:])
            for i in range(0, len(packets), k)]


def _rate(events: int, seconds: float | None) -> float | None:
    return events / seconds / 1e6 if seconds else None


def stream_figures(packets: list[Packet], encoding: str, repeats: int, batch: int = 0) -> dict:
    """Decode + bin figures of one stream, each the median of ``repeats`` timed runs after a
    warm-up.

    ``mev_per_s``: events / CPU time of the benchmarking thread (``time.thread_time``: one
    core's work, robust to other load on the machine) of :func:`decode_bin`;
    ``mev_per_s_wall``: the same over wall time; ``per_packet_mev_per_s``: the per-packet
    reference path (:func:`decode_bin_per_packet`, same results); ``decode_only_*``: the
    decoder alone, packet by packet.
    """
    wall, cpu, (n_ev, n_fr) = timed(lambda: decode_bin(packets, encoding), repeats)
    _, dcpu, (n_dec, _) = timed(lambda: decode_bin(packets, encoding, bin_frames=False),
                                repeats)
    _, pcpu, ref = timed(lambda: decode_bin_per_packet(packets, encoding), repeats)
    if ref != (n_ev, n_fr) or n_dec != n_ev:
        raise AssertionError(f"decode_bin {(n_ev, n_fr)} != per-packet {tuple(ref)} "
                             f"(decoded {n_dec})")
    t, td, tw, tp = median(cpu), median(dcpu), median(wall), median(pcpu)
    n_pk = max(1, len(packets))
    out = {"encoding": encoding, "packets": len(packets), "events": int(n_ev),
           "frames": int(n_fr),
           "bytes_per_packet_mean": sum(len(p[0]) for p in packets) / n_pk,
           "events_per_packet_mean": n_ev / n_pk,
           "events_per_frame_mean": n_ev / max(1, n_fr),
           "mev_per_s": _rate(n_ev, t), "mev_per_s_wall": _rate(n_ev, tw),
           "per_packet_mev_per_s": _rate(n_ev, tp), "decode_only_mev_per_s": _rate(n_ev, td),
           "decode_us_per_packet": td / n_pk * 1e6 if td else None,
           "seconds_median": t, "seconds_cpu_runs": cpu, "seconds_wall_runs": wall}
    if batch > 1 and packets:
        big = batch_packets(packets, batch)
        bcpu = timed(lambda: decode_bin(big, encoding, bin_frames=False), repeats).cpu
        out[f"decode_only_batched{batch}_mev_per_s"] = _rate(n_ev, median(bcpu))
    return out


def _aggregate(parts: list[dict]) -> float | None:
    """Mev/s over several streams (total events / total median time)."""
    t = sum(p["seconds_median"] for p in parts if p.get("seconds_median"))
    return sum(p["events"] for p in parts) / t / 1e6 if t else None


def _simulated(events: np.ndarray, repeats: int) -> dict:
    """``mono`` and ``evt3`` figures of one simulated stream, mono first."""
    return {"mono": stream_figures(packetize_mono(events), "mono", repeats),
            "evt3": stream_figures(packetize_evt3(events), "evt3", repeats)}


def _real(repeats: int, quick: bool) -> dict:
    """Figures of every real bag (:func:`~edge_vlm.bench.streams.real_evt3_bags`), by name."""
    out = {}
    for path in real_evt3_bags():
        enc, pk = bag_packets(path)
        if quick:
            pk = pk[:20]
        out[path.name] = stream_figures(pk, enc, repeats, batch=8 if enc == "evt3" else 0)
    return out


def _headline(out: dict) -> None:
    """The flat figures of :func:`bench_decode` from its per-stream ones."""
    sim, dense = out["simulated"], out["simulated_dense"]
    out["mono_mev_per_s"] = sim["mono"]["mev_per_s"]
    out["evt3_sim_mev_per_s"] = sim["evt3"]["mev_per_s"]
    out["mono_dense_mev_per_s"] = dense["mono"]["mev_per_s"]
    out["evt3_sim_dense_mev_per_s"] = dense["evt3"]["mev_per_s"]
    real = list(out["real"].values())
    out["evt3_mev_per_s"] = _aggregate(real) if real else None
    out["evt3_decode_us_per_packet"] = (
        sum(r["decode_us_per_packet"] * r["packets"] for r in real)
        / sum(r["packets"] for r in real) if real else None)


def bench_decode(repeats: int = 5, quick: bool = False, threads: int | None = 1) -> dict:
    """Decode + bin throughput on one thread (numpy is single-threaded), median of ``repeats``
    runs after a warm-up; per stream see :func:`stream_figures`.

    Streams: ``simulated`` -- a simulated DVS128 recording (~10 kev/s, ~300 events per 33 ms
    frame) cut into ``mono`` / ``evt3`` packets of :data:`~edge_vlm.bench.streams.PACKET_NS`
    (10 ms); ``simulated_dense`` -- the same played :data:`DENSE_FACTOR` times faster
    (~200 kev/s, the real 640x480 bag's rate); ``real`` -- the real Prophesee evt3 bags,
    packet by packet as recorded. Headline figures: ``mono_mev_per_s`` (simulated mono),
    ``evt3_mev_per_s`` (the real bags: total events / total CPU time), ``evt3_sim_mev_per_s``,
    ``mono_dense_mev_per_s``, ``evt3_sim_dense_mev_per_s``, ``evt3_decode_us_per_packet``
    (decoder alone, real bags).
    """
    set_threads(threads)
    labels, clip_s = ((1, 8), 0.3) if quick else (range(1, 12), 1.5)
    rec = simulated_events(labels=labels, clip_s=clip_s, gap_s=0.3 if not quick else 0.1,
                           seed=SIM_SEED)
    ev = rec.events
    span = (int(ev["t"][-1]) - int(ev["t"][0])) / 1e9
    fast = compress_time(ev, DENSE_FACTOR)
    rate = len(ev) / span if span else None
    out: dict = {"repeats": repeats, "threads": threads,
                 # FrameBinner's decode + bin path: "native" (edge_vlm/_native/libevbin.so, built
                 # by scripts/setup.sh) or "numpy" (no library, or EDGE_VLM_NO_NATIVE=1)
                 "decode_backend": backend(), "measured": _MEASURED,
                 "simulated": {"recording": rec.name, "duration_s": span,
                               "packet_ms": PACKET_NS / 1e6, "events_per_s": rate,
                               **_simulated(ev, repeats)},
                 "simulated_dense": {"time_compression": DENSE_FACTOR,
                                     "packet_ms": PACKET_NS / 1e6,
                                     "events_per_s": rate * DENSE_FACTOR if span else None,
                                     **_simulated(fast, repeats)},
                 "real": _real(repeats, quick)}
    _headline(out)
    return out
