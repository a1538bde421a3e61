"""ROS 2 environment for tests, with or without a sourced workspace.

``make test`` sources ``ros2_ws/install/local_setup.bash`` (via env.sh), but the
tests must also run from plain ``pytest``.  This module:

* :func:`sourced_env` -- the environment ``. ros2_ws/install/local_setup.bash``
  produces (computed once by running bash), plus a per-process ROS_DOMAIN_ID;
  pass it to subprocesses (``subprocess.Popen(..., env=sourced_env())``).
* :func:`activate` -- makes the built workspace usable *in this process*
  (sys.path, LD_LIBRARY_PATH for rcpputils' typesupport lookup, preloading the
  workspace's shared libraries since the dynamic linker reads LD_LIBRARY_PATH
  only at process start) and sets ROS_DOMAIN_ID before ``rclpy.init``.

Nothing is skipped: an unbuilt workspace raises :class:`WorkspaceNotBuilt`
(tests turn it into a failure with a clear message).
"""
from __future__ import annotations

import ctypes
import glob
import os
import subprocess
import sys
from functools import lru_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WS = os.path.join(ROOT, "ros2_ws")
INSTALL = os.path.join(WS, "install")
LOCAL_SETUP = os.path.join(INSTALL, "local_setup.bash")

# One DDS domain per test process (parallel test runs must not see each other).
# Fast DDS accepts domain ids 0..232; stay clear of 0 (the default).
DOMAIN_ID = str(1 + os.getpid() % 231)


class WorkspaceNotBuilt(RuntimeError):
    pass


def require_workspace(*packages: str) -> None:
    """Raise :class:`WorkspaceNotBuilt` unless ros2_ws/install has ``packages``."""
    hint = "build it with `make setup` (bash scripts/setup.sh)"
    if not os.path.isfile(LOCAL_SETUP):
        raise WorkspaceNotBuilt(f"ROS 2 workspace not built: {LOCAL_SETUP} missing; {hint}")
    missing = [p for p in packages if not os.path.isdir(os.path.join(INSTALL, p))]
    if missing:
        raise WorkspaceNotBuilt(
            f"ROS 2 workspace lacks package(s) {missing} in {INSTALL}; {hint}")


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    # The venv's ROS libraries (ros_wheels_bootstrapper puts them on
    # LD_LIBRARY_PATH when a venv python starts; make it explicit here).
    venv = env.get("VIRTUAL_ENV") or sys.prefix
    extra = [os.path.join(venv, "lib")]
    site = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                        "site-packages")
    extra += sorted(glob.glob(os.path.join(site, "ros_*.libs")))
    ld = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld + [p for p in extra if p not in ld])
    amp = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if venv not in amp:
        amp.append(venv)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(amp)
    return env


@lru_cache(maxsize=1)
def _sourced() -> tuple[tuple[str, str], ...]:
    require_workspace()
    base = _base_env()
    out = subprocess.run(
        ["bash", "-c", f'. "{LOCAL_SETUP}" >/dev/null && env -0'],
        env=base, capture_output=True, check=False, timeout=60)
    if out.returncode != 0:
        raise WorkspaceNotBuilt(
            f"sourcing {LOCAL_SETUP} failed (rc {out.returncode}): "
            f"{out.stderr.decode(errors='replace')[-2000:]}")
    env = {}
    for item in out.stdout.split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            env[k.decode()] = v.decode(errors="surrogateescape")
    for k in ("SHLVL", "_", "PWD", "OLDPWD"):
        env.pop(k, None)
    return tuple(sorted(env.items()))


def sourced_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the workspace sourced, a private domain id."""
    env = dict(_sourced())
    env["ROS_DOMAIN_ID"] = DOMAIN_ID
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


_ACTIVE = False


def activate() -> None:
    """Make the workspace importable and loadable in this process (idempotent)."""
    global _ACTIVE
    if _ACTIVE:
        return
    env = sourced_env()
    for p in reversed([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]):
        if p not in sys.path:
            sys.path.insert(0, p)
    for key in ("LD_LIBRARY_PATH", "AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH",
                "ROS_DOMAIN_ID", "RMW_IMPLEMENTATION", "ROS_AUTOMATIC_DISCOVERY_RANGE"):
        if key in env:
            os.environ[key] = env[key]
    _preload_workspace_libs()
    _ACTIVE = True


def _preload_workspace_libs() -> None:
    # dlopen()ed libraries are later matched by soname, so loading every
    # workspace library once makes the generated Python extensions resolve
    # them even though LD_LIBRARY_PATH was not set when this process started.
    libs = sorted(glob.glob(os.path.join(INSTALL, "*", "lib", "lib*.so")))
    pending = libs
    while pending:
        failed = []
        for lib in pending:
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                failed.append(lib)
        if len(failed) == len(pending):
            break  # the rest cannot load (reported when the import fails)
        pending = failed


def node_test_env(domain: int, *packages: str) -> dict[str, str]:
    """Module-fixture body of the node tests: fail clearly if the workspace is not built, make this
    process a ROS process on ``domain``, and return the env for the node subprocesses."""
    require_workspace(*packages)   # raises WorkspaceNotBuilt: a failure with a clear message
    activate()
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    return sourced_env(ROS_DOMAIN_ID=str(domain), RCUTILS_LOGGING_BUFFERED_STREAM="0",
                       RCUTILS_COLORIZED_OUTPUT="0")
