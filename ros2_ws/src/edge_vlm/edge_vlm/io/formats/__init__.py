"""Event file readers (pure numpy; never imports rclpy).

* :func:`read_events` (``formats.detect``) -- any supported file -> ``(events, info)``;
* ``formats.aedat2`` -- jAER AEDAT 2.0 (DVS128, DAVIS240);
* ``formats.aedat4`` -- iniVation AEDAT 4.0 (through dv_processing);
* ``formats.prophesee`` -- Prophesee RAW (EVT 2.0 / 3.0) and DAT;
* ``formats.rpg`` -- RPG ``events.txt``;
* AEDAT 3.1 lives in :mod:`edge_vlm.dvs128`, EventPacket payloads in
  :mod:`edge_vlm.codecs`.

All readers return :data:`edge_vlm.events.EVENT_DTYPE` arrays (t in ns) and
raise :class:`edge_vlm.events.EventDecodeError` on malformed input.
"""
from __future__ import annotations

from edge_vlm.io.formats.detect import KNOWN_SENSORS, detect_format, read_events

__all__ = ["read_events", "detect_format", "KNOWN_SENSORS"]
