"""EventPackets of the camera nodes: events cut on the packet grid, encoded ``mono``."""
from __future__ import annotations

import array

import numpy as np
from event_camera_msgs.msg import EventPacket

from edge_vlm.io.codecs.mono import encode_mono
from edge_vlm_ros.conversions import ns_to_time


def split_packets(events: np.ndarray, period_ns: int) -> list[np.ndarray]:
    """Split time-ordered events on the absolute grid k*period_ns (one packet per occupied
    cell)."""
    if len(events) == 0:
        return []
    k = events["t"] // int(period_ns)
    cuts = np.flatnonzero(np.diff(k)) + 1
    return np.split(events, cuts)


def make_packet(events: np.ndarray, width: int, height: int, seq: int, frame_id: str,
                stamp_ns: int) -> EventPacket:
    """EventPacket ``mono`` of time-ordered ``events`` (time_base = first event time)."""
    time_base = int(events["t"][0]) if len(events) else 0
    m = EventPacket()
    m.header.stamp = ns_to_time(stamp_ns)
    m.header.frame_id = frame_id
    m.width, m.height = int(width), int(height)
    m.seq = int(seq)
    m.time_base = time_base
    m.encoding = "mono"
    m.is_bigendian = False
    m.events = array.array("B", encode_mono(events, time_base))
    return m
