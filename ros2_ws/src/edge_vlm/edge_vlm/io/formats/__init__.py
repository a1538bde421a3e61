"""Event file readers and writers (pure numpy; never imports rclpy).

* :func:`.detect.read_events` -- any supported file (or bag) -> ``(events, info)``, the
  reader picked by :func:`.detect.detect_format`;
* :mod:`.aedat2` -- jAER AEDAT 2.0 (DVS128, DAVIS240);
* :mod:`.aedat31` -- iniVation AEDAT 3.1 (the DVS128 Gesture files);
* :mod:`.aedat4` -- iniVation AEDAT 4.0 (through dv_processing);
* :mod:`.prophesee` -- Prophesee RAW (EVT 2.0 / 3.0) and DAT;
* :mod:`.rpg` -- RPG ``events.txt``;
* :mod:`.common` -- :class:`~.common.ReadResult` and the rules every reader shares.

EventPacket payloads are decoded by :mod:`edge_vlm.io.codecs`. All readers return
:data:`edge_vlm.events.EVENT_DTYPE` arrays (t in ns) and raise
:class:`edge_vlm.events.EventDecodeError` on malformed input. This package imports none of
its modules, so that reading one format (e.g. AEDAT 3.1 for the data set) does not load the
others nor the bag reader.
"""
