"""One entry point for every event file this project reads.

:func:`read_events` ``(path, **options) -> (events, info)`` picks the reader by
magic bytes first and file extension second:

==========================  ===================================  ==============
magic / extension           reader                               info["format"]
==========================  ===================================  ==============
``#!AER-DAT2.0``            :func:`.aedat2.read_aedat2`          aedat2
``#!AER-DAT3.1``            :func:`.aedat31.read_aedat31`        aedat3.1
``#!AER-DAT4.0``            :func:`.aedat4.read_aedat4`          aedat4
``%`` header, ``.raw``      :func:`.prophesee.read_raw`          prophesee_raw_evt2/evt3
``%`` header, ``.dat``      :func:`.prophesee.read_dat`          prophesee_dat
``.txt`` (text)             :func:`.rpg.read_rpg`                rpg_txt
bag dir / .db3 / .mcap      ``io.bag_reader.event_stream``       rosbag2
==========================  ===================================  ==============

``info`` always has ``format``, ``encoding``, ``width``, ``height`` (the
sensor size, kept as recorded: it is not rescaled to 128x128 here) and
``path``.  Options: ``camera`` / ``orientation`` (AEDAT 2.0), ``topic`` (bags).
Malformed files raise :class:`~edge_vlm.events.EventDecodeError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge_vlm.events import EventDecodeError, check_in_sensor, concat_events
from edge_vlm.io.bag_reader import event_stream
from edge_vlm.io.formats.aedat2 import read_aedat2
from edge_vlm.io.formats.aedat4 import read_aedat4
from edge_vlm.io.formats.aedat31 import read_aedat31
from edge_vlm.io.formats.common import ReadResult
from edge_vlm.io.formats.prophesee import read_dat, read_raw
from edge_vlm.io.formats.rpg import read_rpg

__all__ = ["read_events", "detect_format", "KNOWN_SENSORS"]

#: AEDAT 3.1 ``#Source`` names -> sensor size
KNOWN_SENSORS: dict[str, tuple[int, int]] = {
    "DVS128": (128, 128), "DAVIS240": (240, 180), "DAVIS240C": (240, 180),
    "DAVIS346": (346, 260), "DAVIS346B": (346, 260), "DVXPLORER": (640, 480),
    "DVXPLORER_LITE": (320, 240),
}
_BAG_SUFFIXES = (".db3", ".mcap")


def _is_bag(p: Path) -> bool:
    if p.is_dir():
        return (p / "metadata.yaml").is_file() or any(
            f.suffix in _BAG_SUFFIXES for f in p.iterdir())
    return p.suffix in _BAG_SUFFIXES or p.name == "metadata.yaml"


def detect_format(path: str | os.PathLike) -> str:
    """The reader name for ``path``: aedat2, aedat3.1, aedat4, raw, dat, rpg or bag."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {str(path)!r}")
    if _is_bag(p):
        return "bag"
    if p.is_dir():
        raise EventDecodeError(f"{str(path)!r} is a directory but not a ROS 2 bag")
    with open(p, "rb") as f:
        head = f.read(4096)
    suf = p.suffix.lower()
    if head.startswith(b"#!AER-DAT2"):
        return "aedat2"
    if head.startswith(b"#!AER-DAT3"):
        return "aedat3.1"
    if head.startswith(b"#!AER-DAT4"):
        return "aedat4"
    if head.startswith(b"%"):
        if suf == ".raw":
            return "raw"
        if suf == ".dat":
            return "dat"
        low = head.lower()
        return "raw" if (b"% evt " in low or b"% format evt" in low) else "dat"
    if suf == ".raw":
        return "raw"
    if suf == ".dat":
        return "dat"
    if suf == ".txt":
        return "rpg"
    if suf in (".aedat", ".aedat4"):
        raise EventDecodeError(f"{str(path)!r}: unknown AEDAT version (starts with {head[:16]!r})")
    raise EventDecodeError(f"{str(path)!r}: unknown event file format")


def _read_bag(path, topic: str | None) -> ReadResult:
    stream = event_stream(path, topic)
    return ReadResult(concat_events(stream.chunks),
                      {"format": "rosbag2", "encoding": stream.encoding, "width": stream.width,
                       "height": stream.height, "topic": stream.topic})


def _read_aedat31(path) -> ReadResult:
    ev, info = read_aedat31(path)
    name = str(info.get("source") or "").upper().replace(" ", "")
    size = next((v for k, v in KNOWN_SENSORS.items() if name.startswith(k)), None)
    if size is None:          # unknown chip: smallest size holding the events
        size = ((int(ev["x"].max()) + 1, int(ev["y"].max()) + 1) if ev.size else (128, 128))
    info = dict(info, format="aedat3.1", encoding="aedat3.1", width=size[0], height=size[1])
    check_in_sensor(ev, size[0], size[1], f"AEDAT 3.1 ({name}): ")
    return ReadResult(ev, info)


def read_events(path: str | os.PathLike, **options: Any) -> ReadResult:
    """Read every CD event of ``path``: ``(EVENT_DTYPE array, info)``; see module doc."""
    kind = detect_format(path)
    if kind == "bag":
        ev, info = _read_bag(path, options.get("topic"))
    elif kind == "aedat2":
        ev, info = read_aedat2(path, camera=options.get("camera"),
                               orientation=options.get("orientation", "jaer"))
    elif kind == "aedat3.1":
        ev, info = _read_aedat31(path)
    elif kind == "aedat4":
        ev, info = read_aedat4(path)
    elif kind == "raw":
        ev, info = read_raw(path)
    elif kind == "dat":
        ev, info = read_dat(path)
    else:
        ev, info = read_rpg(path)
    info["path"] = os.fspath(path)
    return ReadResult(ev, info)
