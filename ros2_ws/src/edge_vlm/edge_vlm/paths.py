"""Where the project's files are: the repository checkout and the package's own data.

One rule for every user (evaluation, bench, paper table, CLI): ``EDGE_VLM_ROOT`` (set by
``env.sh``) when it is set, else the checkout this package lies in (``ros2_ws/src/edge_vlm/
edge_vlm`` of it, symlinks resolved: colcon's ``--symlink-install`` links the sources).
"""
from __future__ import annotations

import os
from pathlib import Path

#: the ``edge_vlm`` package folder (its real path)
PACKAGE_DIR = Path(__file__).resolve().parent
#: the C kernels and their builds (``scripts/setup.sh``)
NATIVE_DIR = PACKAGE_DIR / "_native"
#: ``ros2_ws/src`` of the checkout (message definitions are read from there)
WORKSPACE_SRC = PACKAGE_DIR.parents[1]
_CHECKOUT = PACKAGE_DIR.parents[3]


def repo_root() -> Path:
    """The repository checkout (``EDGE_VLM_ROOT`` when set)."""
    env = os.environ.get("EDGE_VLM_ROOT", "")
    return Path(env) if env else _CHECKOUT


def docs_dir() -> Path:
    """``docs/`` of the checkout (bench reports, plots, the paper table)."""
    return repo_root() / "docs"


def data_dir() -> Path:
    """``data/`` of the checkout (generated data, never committed)."""
    return repo_root() / "data"


def shared_real_data() -> Path:
    """The real event-camera recordings (``EDGE_VLM_REAL_DATA``, else ``../shared/data/real``)."""
    env = os.environ.get("EDGE_VLM_REAL_DATA", "")
    return Path(env) if env else repo_root().parent / "shared" / "data" / "real"
