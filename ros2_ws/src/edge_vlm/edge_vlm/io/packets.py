"""EventPackets of a recording on the absolute time grid: packet ``k`` covers sensor time
``[k*P, (k+1)*P)`` (``P`` = ``packet_ns``), from the packet of the first event to the packet of
the last one, empty packets included. The one rule of the bag writer, the offline evaluation
of DvsGesture folders and the benchmarks' packet streams."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PacketGrid(NamedTuple):
    """``starts[i]``: the start (ns) of packet ``i``; its events are
    ``events[bounds[i]:bounds[i + 1]]`` (``len(bounds) == len(starts) + 1``)."""

    starts: np.ndarray
    bounds: np.ndarray


def packet_grid(t: np.ndarray, packet_ns: int) -> PacketGrid:
    """The packets over the time-ordered event times ``t`` (ns)."""
    if len(t) == 0:
        return PacketGrid(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
    k0, k1 = int(t[0]) // packet_ns, int(t[-1]) // packet_ns
    starts = np.arange(k0, k1 + 1, dtype=np.int64) * np.int64(packet_ns)
    bounds = np.searchsorted(t, np.append(starts, (k1 + 1) * np.int64(packet_ns)), side="left")
    return PacketGrid(starts, bounds)
