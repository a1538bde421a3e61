"""ctypes loader of the native decode + bin kernel (``_native/evbin.c`` ->
``_native/libevbin.so``).

``scripts/setup.sh`` builds the library (``gcc -O2 -shared -fPIC``). :func:`load` returns it
with its function signatures set, or None -- library missing or not loadable, a big-endian
host, or ``EDGE_VLM_NO_NATIVE=1`` -- and then :class:`~edge_vlm.binner.FrameBinner` runs its
numpy path (same results; a one-line note on stderr says why, once per process).
:func:`backend` names the path in use: ``"native"`` or ``"numpy"``.

The per-packet call (``evbin_push``) is the one hot entry point: ``scripts/setup.sh`` also
builds it as a small CPython extension (``_native/evbinext.c``, which compiles evbin.c in:
``_native/evbinext<EXT_SUFFIX>``, needs Python.h) whose builtin function, bound to a binner's
state, costs a fraction of a ctypes call. :func:`load_ext` returns that module, or None (not
built, older than its sources, another kernel ABI, the library not loaded, or
``EDGE_VLM_NO_NATIVE_EXT=1``): FrameBinner then calls evbin_push through ctypes (same results,
no note). Every other entry point always goes through ctypes.

The library sits next to the C source in the *source* tree: ``colcon build --symlink-install``
links the package's files (or the whole package directory) into the build tree, so this file
resolves its own real path to find it.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import sysconfig
from edge_vlm.paths import NATIVE_DIR

__all__ = ["EvbinState", "load", "load_ext", "backend", "check_built", "LIB_PATH", "SOURCE_PATH",
           "EXT_PATH",
           "EVB_CLOSED", "EVB_CLOSED_MORE", "EVB_SLOW", "EVB_BAD", "EVB_GROW", "EVB_NO_OUT",
           "EVB_CHECK"]

_DIR = str(NATIVE_DIR)
LIB_PATH = os.path.join(_DIR, "libevbin.so")
SOURCE_PATH = os.path.join(_DIR, "evbin.c")
EXT_SOURCE_PATH = os.path.join(_DIR, "evbinext.c")
#: the extension module, for this interpreter (its EXT_SUFFIX: a build for another Python is
#: ignored)
EXT_PATH = os.path.join(_DIR, "evbinext" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))

# return codes of evbin_push / evbin_resume (>= 0: done, that many events, no frame closed)
EVB_CLOSED, EVB_CLOSED_MORE, EVB_SLOW, EVB_BAD = -1, -2, -3, -4
EVB_GROW, EVB_NO_OUT, EVB_CHECK = -5, -6, -7
#: EVBIN_ABI of evbin.c (bump both when evbin_t or a signature changes)
ABI = 6

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


class EvbinState(ctypes.Structure):
    """``evbin_t`` of evbin.c (field for field)."""

    _fields_ = [(name, typ) for names, typ in (
        (("period", "max_gap", "cb", "width", "height"), _I64),
        (("lut_a", "lut_b", "t", "c"), _PTR),
        (("cap",), _I64),
        (("acc", "touched", "out"), _PTR),
        (("olcap", "n_touched", "has_cur", "cur", "open_count", "mono", "nbytes", "time_base",
          "packets",
          "events", "n", "unsorted",
          "pos", "closed_k", "closed_count", "need", "y", "time_low", "time_high", "wraps",
          "base_x",
          "pol", "seen_high", "valid"), _I64),
        (("fl_state",), _PTR),
        (("fl_min", "fl_removed"), _I64),
    ) for name in names]


# evbin_push / evbin_resume (once or twice per packet) are called without argtypes, with ctypes
# objects only (byref(state); the payload as bytes or c_void_p): half the cost of a call that
# converts its arguments. The rest (rare) with argtypes.
_SIGNATURES = {
    "evbin_push": None,
    "evbin_resume": None,
    "evbin_add": [_PTR, _PTR, _PTR, _I64, _I64, _I64],
    "evbin_close": [_PTR, _I64],
    "evbin_discard": [_PTR],
}

_lib: ctypes.CDLL | None = None
_why = ""
_tried = _noted = False
_ext = None
ext_why = ""                 #: why :func:`load_ext` returned None (empty: not tried / loaded)
_ext_tried = False


def _note(msg: str) -> None:
    print(f"edge_vlm: {msg}", file=sys.stderr)


def check_built(path: str, sources: tuple[str, ...], exc: type[Exception] = OSError) -> None:
    """Raise ``exc`` when the build ``path`` is missing or older than one of its ``sources``
    (both name ``scripts/setup.sh``, which builds them). Shared by the native loaders."""
    if not os.path.isfile(path):
        raise exc(f"{path} not built (run scripts/setup.sh)")
    newest = max((os.path.getmtime(p) for p in sources if os.path.isfile(p)), default=0.0)
    if newest > os.path.getmtime(path):
        raise exc(f"{path} is older than {', '.join(os.path.basename(p) for p in sources)} (run "
                  "scripts/setup.sh)")


def load(quiet: bool = False) -> ctypes.CDLL | None:
    """The native library, or None (the numpy path then; see the module doc). Cached."""
    global _lib, _why, _tried, _noted
    if os.environ.get("EDGE_VLM_NO_NATIVE", "") not in ("", "0"):
        return None
    if not _tried:
        _tried = True
        try:
            if sys.byteorder != "little":
                raise OSError("big-endian host")
            check_built(LIB_PATH, (SOURCE_PATH,))
            lib = ctypes.CDLL(LIB_PATH)
            lib.evbin_abi.restype = _I64
            abi = int(lib.evbin_abi())
            if abi != (ctypes.sizeof(EvbinState) | ABI << 16):
                raise OSError(f"{LIB_PATH} does not match native.py (ABI {abi:#x}; run "
                              "scripts/setup.sh)")
            for name, args in _SIGNATURES.items():
                fn = getattr(lib, name)
                if args is not None:
                    fn.argtypes = args
                fn.restype = None if name == "evbin_discard" else _I64
            _lib = lib
        except (OSError, AttributeError) as exc:
            _why = str(exc)
    if _lib is None and not quiet and not _noted:
        _noted = True
        _note(f"native decode+bin kernel unavailable ({_why}); using the numpy path")
    return _lib


def load_ext():
    """The ``evbinext`` extension module (its ``pusher``), or None (see the module doc). Cached."""
    global _ext, ext_why, _ext_tried
    if os.environ.get("EDGE_VLM_NO_NATIVE_EXT", "") not in ("", "0") or load(quiet=True) is None:
        return None
    if not _ext_tried:
        _ext_tried = True
        try:
            check_built(EXT_PATH, (SOURCE_PATH, EXT_SOURCE_PATH), ImportError)
            spec = importlib.util.spec_from_file_location("edge_vlm.evbinext", EXT_PATH)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {EXT_PATH}")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            if mod.abi() != int(_lib.evbin_abi()):
                raise ImportError(f"{EXT_PATH} does not match the library (run scripts/setup.sh)")
            _ext = mod
        except (ImportError, OSError, ValueError, AttributeError) as exc:
            ext_why = str(exc)
    return _ext


def backend() -> str:
    """``"native"`` or ``"numpy"``: the decode + bin path FrameBinner uses now."""
    return "native" if load(quiet=True) is not None else "numpy"
