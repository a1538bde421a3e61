#!/usr/bin/env python3
"""Fix the build-host paths baked into the ROS 2 PyPI wheels' CMake files.

The ``ros-*`` wheels export CMake config files that name the wheel build
host's Python include dir and numpy include dir
(``/opt/python/cp311-cp311/...``).  Building a rosidl interface package
against them fails unless those two strings are rewritten to this
interpreter's include dir and ``numpy.get_include()``.

Run with the venv's Python (``$VIRTUAL_ENV/bin/python scripts/fix_cmake_paths.py``).
Idempotent: files already fixed are left untouched.  Exit status 1 if a
target directory does not exist.
"""
from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

BAD_PY_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
BAD_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def replacements() -> list[tuple[str, str]]:
    import numpy  # the venv's numpy: must be importable

    py_inc = sysconfig.get_paths()["include"]
    np_inc = numpy.get_include()
    for label, path in (("python include", py_inc), ("numpy include", np_inc)):
        if not os.path.isdir(path):
            raise SystemExit(f"fix_cmake_paths: {label} dir {path} does not exist")
    # Longest first so a prefix never shadows a longer match.
    return [(BAD_NUMPY_INCLUDE, np_inc), (BAD_PY_INCLUDE, py_inc)]


def fix_tree(share: Path, repl: list[tuple[str, str]], verbose: bool = False) -> int:
    """Rewrite every ``*.cmake`` below ``share``; return the number of files changed."""
    changed = 0
    for f in sorted(share.rglob("*.cmake")):
        if not f.is_file():
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = text
        for old, good in repl:
            if old != good:
                new = new.replace(old, good)
        if new != text:
            f.write_text(new, encoding="utf-8")
            changed += 1
            if verbose:
                print(f"  fixed {f}")
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prefix", nargs="?", default=os.environ.get("VIRTUAL_ENV", sys.prefix),
                    help="install prefix holding share/ (default: $VIRTUAL_ENV or sys.prefix)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    share = Path(args.prefix) / "share"
    if not share.is_dir():
        print(f"fix_cmake_paths: {share} is not a directory", file=sys.stderr)
        return 1
    repl = replacements()
    n = fix_tree(share, repl, args.verbose)
    left = [f for f in share.rglob("*.cmake")
            if f.is_file() and any(old in f.read_text(encoding="utf-8", errors="replace")
                                   for old, _ in repl)]
    if left:
        print(f"fix_cmake_paths: {len(left)} file(s) still name build-host paths, e.g. {left[0]}",
              file=sys.stderr)
        return 1
    print(f"fix_cmake_paths: {n} file(s) rewritten under {share} "
          f"(python include -> {repl[1][1]}, numpy include -> {repl[0][1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
