"""AEDAT 4.0 (``#!AER-DAT4.0``, iniVation DV) via ``dv_processing``.

Reading uses ``dv_processing.io.MonoCameraRecording`` (the official library:
FlatBuffers packets, LZ4/ZSTD compression); the event batches are converted
with ``EventStore.numpy()`` (timestamps in us -> ns).  Coordinates are stored
with the origin at the top-left (DV convention = this project's), so no flip.
Every failure of the library (it raises ``RuntimeError`` and friends on bad
files) becomes :class:`~edge_vlm.events.EventDecodeError`.

``dv_processing`` is optional: without it, reading raises EventDecodeError.

Isolation: dv_processing can **hang** (an endless loop inside
``getNextEventBatch``) or crash on corrupted files -- fuzzing found mutated
files that never return.  A C++ call cannot be interrupted from Python, so
:func:`read_aedat4` by default (``isolate=True``) reads in a child Python
process with a time limit (``timeout``; default 60 s + 1 s per 20 MB) and
turns a hang, a crash or an error there into EventDecodeError.
``isolate=False`` reads in-process (faster for trusted files).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError, check_in_sensor, concat_events
from edge_vlm.io.formats.common import ReadResult
from edge_vlm.paths import PACKAGE_DIR

__all__ = ["read_aedat4", "write_aedat4", "AEDAT4_MAGIC", "available"]

AEDAT4_MAGIC = b"#!AER-DAT4.0"


def available() -> bool:
    """True if ``dv_processing`` can be imported."""
    try:
        import dv_processing  # noqa: F401
    except ImportError:
        return False
    return True


_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from edge_vlm.events import EventDecodeError
from edge_vlm.io.formats.aedat4 import _read_direct
try:
    ev, info = _read_direct(sys.argv[2])
except EventDecodeError as exc:
    sys.stderr.write(str(exc)); sys.exit(3)
np.save(sys.argv[3], ev, allow_pickle=False)
with open(sys.argv[4], "w") as f:
    json.dump(info, f)
"""


def read_aedat4(path: str | os.PathLike, *, isolate: bool = True,
                timeout: float | None = None) -> ReadResult:
    """Read the event stream of an AEDAT 4.0 file (see the module doc on ``isolate``)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(len(AEDAT4_MAGIC))
    if magic != AEDAT4_MAGIC:
        raise EventDecodeError(f"not an AEDAT 4.0 file (starts with {magic!r})")
    if not isolate:
        return _read_direct(path)
    if timeout is None:
        timeout = 60.0 + os.path.getsize(path) / 20e6
    pkg_root = str(PACKAGE_DIR.parent)          # the folder edge_vlm is imported from
    with tempfile.TemporaryDirectory(prefix="edge_vlm_aedat4_") as tmp:
        ev_f, info_f = os.path.join(tmp, "ev.npy"), os.path.join(tmp, "info.json")
        try:
            r = subprocess.run([sys.executable, "-c", _CHILD, pkg_root, path, ev_f, info_f],
                               capture_output=True, timeout=timeout, text=True)
        except subprocess.TimeoutExpired:
            raise EventDecodeError(
                f"AEDAT 4.0 file {path!r}: dv_processing did not finish in {timeout:.0f} s "
                "(corrupted file?)") from None
        if r.returncode != 0:
            why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
            if r.returncode == 3:
                raise EventDecodeError(why)
            raise EventDecodeError(f"AEDAT 4.0 file {path!r}: reader process failed "
                                   f"(exit {r.returncode}) {why}")
        with open(info_f) as f:
            info = json.load(f)
        ev = np.load(ev_f, allow_pickle=False)
    if ev.dtype != EVENT_DTYPE:
        ev = ev.astype(EVENT_DTYPE)
    return ReadResult(ev, info)


def _read_direct(path: str) -> ReadResult:
    """In-process read with dv_processing (may hang on corrupted files)."""
    try:
        import dv_processing as dv
    except ImportError as exc:
        raise EventDecodeError(f"reading AEDAT 4.0 needs dv_processing ({exc})") from None
    try:
        rec = dv.io.MonoCameraRecording(path)
        if not rec.isEventStreamAvailable():
            raise EventDecodeError(f"AEDAT 4.0 file {path!r} has no event stream")
        res = rec.getEventResolution()
        if res is None:
            raise EventDecodeError("AEDAT 4.0 event stream has no resolution")
        width, height = int(res[0]), int(res[1])
        chunks = []
        while rec.isRunning():
            batch = rec.getNextEventBatch()
            if batch is None:
                break
            a = batch.numpy()
            ev = np.empty(a.shape[0], dtype=EVENT_DTYPE)
            ev["t"] = a["timestamp"].astype(np.int64) * 1000
            ev["x"] = a["x"]
            ev["y"] = a["y"]
            ev["p"] = a["polarity"] != 0
            chunks.append(ev)
        camera = str(rec.getCameraName())
    except EventDecodeError:
        raise
    except Exception as exc:          # RuntimeError, ValueError, ... from the C++ library
        raise EventDecodeError(f"cannot read AEDAT 4.0 file {path!r}: {exc}") from exc
    events = concat_events(chunks)
    check_in_sensor(events, width, height, "AEDAT 4.0: ")
    return ReadResult(events, {"format": "aedat4", "encoding": "aedat4", "width": width,
                               "height": height, "camera": camera,
                               "monotonic": bool(np.all(np.diff(events["t"]) >= 0))})


def write_aedat4(path: str | os.PathLike, events: np.ndarray, width: int, height: int,
                 camera: str = "edge_vlm", batch: int = 10_000) -> None:
    """Write events to an AEDAT 4.0 file with dv_processing (times in whole us, sorted).

    Test-fixture / small-export helper: it pushes events one by one (no bulk API).
    """
    import dv_processing as dv

    ev = np.asarray(events)
    cfg = dv.io.MonoCameraWriter.EventOnlyConfig(camera, (int(width), int(height)))
    writer = dv.io.MonoCameraWriter(os.fspath(path), cfg)
    try:
        for i in range(0, len(ev), batch):
            c = ev[i:i + batch]
            store = dv.EventStore()
            # dv_processing 2.0 has no numpy -> EventStore constructor; this
            # writer is for test fixtures and small exports only.
            for t, x, y, p in zip((c["t"] // 1000).tolist(), c["x"].tolist(),
                                  c["y"].tolist(), (c["p"] != 0).tolist()):
                store.push_back(t, x, y, p)
            writer.writeEvents(store)
    finally:
        del writer
