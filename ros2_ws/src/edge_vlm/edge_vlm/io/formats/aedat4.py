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

Memory: dv_processing allocates whatever a file's sizes claim (a 5 KB file whose header size
is corrupt took 3.6 GB). :func:`check_layout` therefore checks the header and packet sizes
against the file first, and the child process runs under an address-space limit
(:data:`CHILD_MEMORY` + :data:`CHILD_MEMORY_PER_BYTE` per byte of the file).
"""
from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import numpy as np

from edge_vlm.events import EVENT_DTYPE, EventDecodeError, check_in_sensor, concat_events
from edge_vlm.io.formats.common import ReadResult
from edge_vlm.paths import PACKAGE_DIR

__all__ = ["read_aedat4", "write_aedat4", "AEDAT4_MAGIC", "available"]

AEDAT4_MAGIC = b"#!AER-DAT4.0"
#: the magic line and the int32 size of the IOHeader that follows it; a packet's header
_HEAD = struct.Struct("<14si")
_PACKET = struct.Struct("<ii")
#: address space of the reader process: a base (Python, numpy, dv_processing) plus a share
#: per byte of the file (decompressed events, the library's copies and the result)
CHILD_MEMORY = 1 << 30
CHILD_MEMORY_PER_BYTE = 64


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


def _data_table_position(header: bytes) -> int:
    """``dataTablePosition`` of the IOHeader FlatBuffer (-1: none, the schema default)."""
    try:
        table = struct.unpack_from("<I", header, 0)[0]
        vtable = table - struct.unpack_from("<i", header, table)[0]
        vt_size = struct.unpack_from("<H", header, vtable)[0]
        field = struct.unpack_from("<H", header, vtable + 6)[0] if vt_size > 6 else 0
        return struct.unpack_from("<q", header, table + field)[0] if field else -1
    except struct.error:
        raise EventDecodeError("AEDAT 4.0: corrupt IOHeader (offsets outside it)") from None


def check_layout(path: str) -> None:
    """The AEDAT 4.0 framing, checked before dv_processing sees the file (it trusts the sizes
    and allocates what a corrupt file claims, GBs for a few KB): the header size, the data
    table position and every packet (int32 stream id, int32 size) must lie inside the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size or not head.startswith(AEDAT4_MAGIC):
            raise EventDecodeError(f"not an AEDAT 4.0 file (starts with {head[:14]!r})")
        hsize = _HEAD.unpack(head)[1]
        data = _HEAD.size + hsize
        if not 8 <= hsize <= size - _HEAD.size:
            raise EventDecodeError(f"AEDAT 4.0: header claims {hsize} bytes, the file has "
                                   f"{size - _HEAD.size} after the magic (corrupt or truncated)")
        table = _data_table_position(f.read(hsize))
        if table >= 0 and not data <= table <= size:
            raise EventDecodeError(f"AEDAT 4.0: data table at byte {table}, outside the "
                                   f"packets ({data}..{size})")
        end, pos = (table if table >= 0 else size), data
        while pos < end:
            f.seek(pos)
            packet = f.read(_PACKET.size)
            psize = _PACKET.unpack(packet)[1] if len(packet) == _PACKET.size else -1
            if psize < 0 or pos + _PACKET.size + psize > end:
                raise EventDecodeError(f"AEDAT 4.0: packet at byte {pos} claims {psize} bytes, "
                                       f"{end - pos - _PACKET.size} left (corrupt or truncated)")
            pos += _PACKET.size + psize


def _limit_memory(limit: int):
    """``preexec_fn`` of the reader process: cap its address space at ``limit`` bytes."""
    def apply() -> None:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return apply


def read_aedat4(path: str | os.PathLike, *, isolate: bool = True,
                timeout: float | None = None) -> ReadResult:
    """Read the event stream of an AEDAT 4.0 file (see the module doc on ``isolate``)."""
    path = os.fspath(path)
    check_layout(path)
    if not isolate:
        return _read_direct(path)
    if timeout is None:
        timeout = 60.0 + os.path.getsize(path) / 20e6
    memory = CHILD_MEMORY + CHILD_MEMORY_PER_BYTE * os.path.getsize(path)
    pkg_root = str(PACKAGE_DIR.parent)          # the folder edge_vlm is imported from
    with tempfile.TemporaryDirectory(prefix="edge_vlm_aedat4_") as tmp:
        ev_f, info_f = os.path.join(tmp, "ev.npy"), os.path.join(tmp, "info.json")
        try:
            r = subprocess.run([sys.executable, "-c", _CHILD, pkg_root, path, ev_f, info_f],
                               capture_output=True, timeout=timeout, text=True,
                               preexec_fn=_limit_memory(memory))
        except subprocess.TimeoutExpired:
            raise EventDecodeError(
                f"AEDAT 4.0 file {path!r}: dv_processing did not finish in {timeout:.0f} s "
                "(corrupted file?)") from None
        if r.returncode == 3:
            raise EventDecodeError(r.stderr.strip())
        if r.returncode != 0:
            raise EventDecodeError(f"AEDAT 4.0 file {path!r}: the reader process failed (exit "
                                   f"{r.returncode}; over {memory >> 20} MiB of memory or a "
                                   "crash of dv_processing: corrupt file?)")
        with open(info_f) as f:
            info = json.load(f)
        ev = np.load(ev_f, allow_pickle=False)
    if ev.dtype != EVENT_DTYPE:
        ev = ev.astype(EVENT_DTYPE)
    return ReadResult(ev, info)


def _first_lines(exc: BaseException) -> str:
    """A dv_processing error as one line: its message without the C++ stack trace."""
    text = str(exc).split("Stacktrace:")[0]
    return " ".join(text.split()) or type(exc).__name__


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
        raise EventDecodeError(f"cannot read AEDAT 4.0 file {path!r}: {_first_lines(exc)}") \
            from exc
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
