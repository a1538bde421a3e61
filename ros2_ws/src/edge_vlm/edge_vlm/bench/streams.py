"""Event streams of the benchmarks: simulated recordings, EventPacket payloads cut from them
(``mono``, ``evt3``) and the packets of recorded bags.

A packet is the tuple ``(payload, width, height, time_base)`` of an EventPacket message
(:data:`Packet`): the decode + bin loops unpack it per packet, so it stays a plain tuple.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge_vlm.io.bag_reader import iter_event_packets
from edge_vlm.io.codecs import encode_mono
from edge_vlm.paths import shared_real_data
from edge_vlm.sim import Recording, simulate_recording, split_subjects
from edge_vlm.io.packets import packet_grid

__all__ = ["PACKET_NS", "SIM_SEED", "Packet", "BagPackets", "Evt3Words",
           "simulated_events", "compress_time", "packetize_mono", "encode_evt3",
           "packetize_evt3", "real_evt3_bags", "bag_packets"]

#: packet length of simulated streams: 10 ms, ``edge-vlm synth``'s default (``--packet-ms``)
PACKET_NS = 10_000_000
#: seed of the simulated recordings (this one holds a low-motion gesture)
SIM_SEED = 1
#: ``(payload, width, height, time_base)`` of one EventPacket
Packet = tuple[bytes, int, int, int]


class BagPackets(NamedTuple):
    """The EventPackets of a bag, in bag order, and their encoding."""

    encoding: str
    packets: list[Packet]


class Evt3Words(NamedTuple):
    """EVT 3.0 words (``<u2``) and, per event, the word index after it."""

    words: np.ndarray
    end: np.ndarray


def simulated_events(labels=range(1, 12), clip_s: float = 1.5, gap_s: float = 0.3, seed: int = 1,
                     lighting: str = "lab", subject: int | None = None,
                     with_frames: bool = False) -> Recording:
    """A simulated DVS128 recording (events; RGB frames too with ``with_frames``) of a
    held-out subject."""
    if subject is None:
        _, held_out = split_subjects(20, 6, 0)
        subject = int(held_out[-1])
    return simulate_recording(subject, lighting, seed=seed, labels=list(labels),
                              clip_duration_s=clip_s, gap_s=gap_s, with_frames=with_frames)


def compress_time(events: np.ndarray, factor: int) -> np.ndarray:
    """The same events played ``factor`` times faster (a denser stream with the same content)."""
    out = np.array(events, copy=True)
    if len(out):
        t0 = int(out["t"][0])
        out["t"] = t0 + (out["t"] - t0) // int(factor)
    return out


def packetize_mono(events: np.ndarray, width: int = 128, height: int = 128,
                   packet_ns: int = PACKET_NS) -> list[Packet]:
    """``mono`` packets of ``packet_ns`` (as the bag writer cuts them)."""
    starts, bounds = packet_grid(events["t"], packet_ns)
    return [(encode_mono(events[bounds[i]:bounds[i + 1]], int(s)), width, height, int(s))
            for i, s in enumerate(starts)]


def encode_evt3(events: np.ndarray) -> Evt3Words:
    """Encode time-ordered events as EVT 3.0 words (single CD events, like the real bags).

    Per event: EVT_TIME_HIGH when the high 12 bits of the microsecond time changed,
    EVT_TIME_LOW when the time changed, EVT_ADDR_Y when y changed, then EVT_ADDR_X with
    the polarity. Times are truncated to microseconds (EVT 3.0's resolution) and must
    not decrease. ``end[i]`` is the word index after event ``i`` (to cut packets at event
    boundaries).
    """
    ev = np.asarray(events)
    n = len(ev)
    if n == 0:
        return Evt3Words(np.zeros(0, dtype="<u2"), np.zeros(0, dtype=np.int64))
    us = ev["t"].astype(np.int64) // 1000
    if (np.diff(us) < 0).any():
        raise ValueError("encode_evt3: event times must not decrease")
    hi, lo = (us >> 12) & 0xFFF, us & 0xFFF
    y, x = ev["y"].astype(np.int64), ev["x"].astype(np.int64)
    p = (ev["p"] != 0).astype(np.int64)
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
    return Evt3Words(w[keep].astype("<u2"), np.cumsum(keep.sum(axis=1)))


def packetize_evt3(events: np.ndarray, width: int = 128, height: int = 128,
                   packet_ns: int = PACKET_NS) -> list[Packet]:
    """``evt3`` packets holding ``packet_ns`` of events each."""
    words, end = encode_evt3(events)
    starts, bounds = packet_grid(events["t"], packet_ns)
    wb = np.concatenate(([0], end))[bounds]
    return [(words[wb[i]:wb[i + 1]].tobytes(), width, height, int(s))
            for i, s in enumerate(starts)]


def real_evt3_bags() -> list[Path]:
    """The real evt3 bags under ``../shared/data/real`` (EDGE_VLM_REAL_DATA overrides), if
    present."""
    base = shared_real_data()
    names = ("evt3_prophesee_640x480", "evt3_prophesee_1280x720_trigger")
    return [base / n for n in names if (base / n / "metadata.yaml").is_file()]


def bag_packets(path: str | os.PathLike) -> BagPackets:
    """The EventPackets of a bag, in bag order."""
    pk, enc = [], None
    for m in iter_event_packets(path):
        enc = enc or str(m.encoding)
        pk.append((bytes(m.events), int(m.width), int(m.height), int(m.time_base)))
    return BagPackets(enc or "evt3", pk)
