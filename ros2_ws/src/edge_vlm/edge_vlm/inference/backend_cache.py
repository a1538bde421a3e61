"""The on-disk cache of the per-CPU encoder backend choice (:class:`BackendChoice`).

:func:`~edge_vlm.inference.vit.backend_choice` measures, per ViT shape, whether the native
kernel or the PyTorch calls run its passes faster on this CPU (:func:`~edge_vlm.inference.vit.
calibrate`, about a second for the shipped model's three branches). That used to run at every
process start; a restarted node now reads the answer from
``$XDG_CACHE_HOME/edge_vlm/backend_choice.json`` (default ``~/.cache/edge_vlm/``), keyed by
(CPU model name from ``/proc/cpuinfo``, the kernel set in use, the ViT shape, the kernel build's
content hash, the torch version and thread count): a new CPU, kernel build, torch or shape
measures again.

The file is written atomically (a temporary file in the same folder, then ``os.replace``) and
read defensively: a missing, unreadable, corrupt or foreign file, or an entry of the wrong form,
is ignored (the choice is measured and the file rewritten), never raised.
``EDGE_VLM_BACKEND_CACHE=0`` turns the cache off (every process measures); any other non-empty
value names the file.
Without a CPU model name (no ``/proc/cpuinfo``) nothing is cached.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field

ENV = "EDGE_VLM_BACKEND_CACHE"
FILE_NAME = "backend_choice.json"
FORMAT = "edge_vlm.backend_choice/1"
#: entries kept in the file (the most recently written ones)
MAX_ENTRIES = 64
_TIMING_KEYS = ("dense_native", "dense_torch", "sparse_native", "sparse_torch")


@dataclass(frozen=True)
class BackendChoice:
    """Which path runs a ViT's dense and sparse passes on this CPU (True: the native kernel):
    the faster one in :func:`~edge_vlm.inference.vit.calibrate`'s timings (CPU time of this
    thread, ms, best of a few interleaved runs); both False when the kernel is not loaded
    (``timings_ms`` empty). ``cached``: read from the on-disk cache (measured by an earlier
    process on this CPU and kernel build) instead of measured by this one."""

    dense: bool
    sparse: bool
    isa: str = ""                     # the kernel's instruction set (native_vit.isa())
    timings_ms: dict = field(default_factory=dict)   # {dense,sparse}_{native,torch}
    cached: bool = False

    def names(self) -> dict:
        """``{"dense": "native" | "torch", "sparse": ...}`` (the bench's record)."""
        return {k: "native" if on else "torch"
                for k, on in (("dense", self.dense), ("sparse", self.sparse))}


def cache_path() -> str | None:
    """The cache file, or None when the cache is off (``EDGE_VLM_BACKEND_CACHE=0``)."""
    env = os.environ.get(ENV, "")
    if env == "0":
        return None
    if env:
        return env
    root = os.environ.get("XDG_CACHE_HOME", "") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "edge_vlm", FILE_NAME)


_cpu_model: str | None = None


def cpu_model() -> str:
    """This CPU's model name (``/proc/cpuinfo``), empty when unknown. Read once per process."""
    global _cpu_model
    if _cpu_model is None:
        _cpu_model = ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        _cpu_model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return _cpu_model


def entry_key(fields: dict) -> str | None:
    """The cache key of ``fields`` (the caller's shape, ISA, build and runtime description, this
    CPU's model added), None when the CPU model is unknown (then nothing is cached)."""
    cpu = cpu_model()
    if not cpu:
        return None
    text = json.dumps({"cpu": cpu, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: str) -> dict:
    """The file's entries ({key: entry}); empty when missing, unreadable, corrupt or foreign."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return {}
    entries = doc.get("entries")
    return entries if isinstance(entries, dict) else {}


def _choice(entry) -> BackendChoice | None:
    """The choice an entry holds, None when it is not of the form :func:`store` writes."""
    if not isinstance(entry, dict):
        return None
    dense, sparse, isa, t = (entry.get(k) for k in ("dense", "sparse", "isa", "timings_ms"))
    if (not isinstance(dense, bool) or not isinstance(sparse, bool) or not isinstance(isa, str)
            or not isinstance(t, dict) or set(t) != set(_TIMING_KEYS)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                       for v in t.values())):
        return None
    return BackendChoice(dense, sparse, isa, {k: float(v) for k, v in t.items()}, cached=True)


def lookup(key: str | None) -> BackendChoice | None:
    """The cached choice of ``key``, None when the cache is off, the key unknown (None) or
    absent, or the file or entry unusable. Never raises."""
    path = cache_path()
    if key is None or path is None:
        return None
    try:
        return _choice(_read(path).get(key))
    except Exception:                       # noqa: BLE001 (a cache must never break a start)
        return None


def store(key: str | None, choice: BackendChoice, fields: dict | None = None) -> bool:
    """Add ``choice`` (measured: ``timings_ms`` complete) under ``key`` to the cache file,
    atomically; ``fields``: what the key describes (written beside it, for people reading the
    file). Returns whether it was written; never raises (a read-only home is not an error)."""
    path = cache_path()
    if key is None or path is None or set(choice.timings_ms) != set(_TIMING_KEYS):
        return False
    entry = {"dense": bool(choice.dense), "sparse": bool(choice.sparse), "isa": choice.isa,
             "timings_ms": {k: float(v) for k, v in choice.timings_ms.items()},
             "key": {"cpu": cpu_model(), **(fields or {})}}
    tmp = None
    try:
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        entries = {k: v for k, v in _read(path).items() if k != key}
        entries[key] = entry
        entries = dict(list(entries.items())[-MAX_ENTRIES:])
        fd, tmp = tempfile.mkstemp(prefix=".backend_choice.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"format": FORMAT, "entries": entries}, fh, indent=1, default=str)
        os.replace(tmp, path)
        return True
    except Exception:                       # noqa: BLE001 (a cache must never break a start)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False
