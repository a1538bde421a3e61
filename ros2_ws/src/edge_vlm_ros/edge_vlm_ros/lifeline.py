"""Children that never outlive their launcher, and graphs that never meet another graph.

Orphans: a process started by ``edge_vlm_run``, the demo or ``ros2 launch edge_vlm_bringup
...`` runs as ``python lifeline.py --parent PID [--log FILE] -- CMD ARGS...``
(:func:`exec_prefix`; ``--log``: the command's output goes to FILE): it asks the kernel (Linux
``prctl(PR_SET_PDEATHSIG)``) for SIGTERM when its parent dies, however it dies (SIGKILL
included), then execs CMD (same pid). Nodes stop cleanly on SIGTERM (``edge_vlm_ros.run``). An
exec wrapper rather than a ``preexec_fn``: launch forks the processes itself, and Python code
between fork and exec is unsafe in a threaded parent. Should the parent be gone already when
the child asks (a race at start), the child stops at once. On other systems the wrapper only
execs.

Isolation: :func:`isolated_env` gives a graph run its own ``ROS_DOMAIN_ID`` (a free one, from
the pid on) and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, unless the caller's environment
sets them: two graphs on one machine then never see each other's nodes and topics.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import sys
from typing import Mapping

try:
    from edge_vlm.domains import free_domain_id
except ImportError:        # run as a script (exec_prefix): the standard library only, no domains
    free_domain_id = None

#: prctl option (linux/prctl.h)
PR_SET_PDEATHSIG = 1
#: what a node receives when its launcher dies (it shuts down cleanly on it)
DEATH_SIGNAL = signal.SIGTERM

_LIBC = (ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
         if sys.platform.startswith("linux") else None)


def set_parent_death_signal(parent_pid: int, sig: int = DEATH_SIGNAL) -> None:
    """Ask for ``sig`` when the parent dies; if ``parent_pid`` is no longer the parent (it died
    before this call), raise ``sig`` now."""
    if _LIBC is None:
        return
    _LIBC.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def exec_prefix(parent_pid: int | None = None, log: str = "") -> list[str]:
    """The command words that run a command under :func:`main`, for a child of
    ``parent_pid`` (default: this process); with ``log``, the command's stdout and stderr go to
    that file. The file runs as a script (standard library only), so the child needs no
    PYTHONPATH for it."""
    pid = os.getpid() if parent_pid is None else parent_pid
    return ([sys.executable, os.path.abspath(__file__), "--parent", str(pid)]
            + (["--log", os.path.abspath(log)] if log else []) + ["--"])


def isolated_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) with ``ROS_DOMAIN_ID`` (a free one) and
    ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` where it sets neither (a value it sets,
    even empty, is the user's choice and kept)."""
    out = dict(os.environ if env is None else env)
    if "ROS_DOMAIN_ID" not in out:
        out["ROS_DOMAIN_ID"] = str(free_domain_id())
    out.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return out


#: the signals a launcher stops its nodes with
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def restore_stop_signals() -> None:
    """Default disposition, unblocked, for :data:`STOP_SIGNALS` (kept across exec): a launcher
    started as a background job of a non-interactive shell (``cmd &``, ``nohup``) has SIGINT
    ignored, every child inherits that, and a Python node that starts with SIGINT ignored
    installs no KeyboardInterrupt handler: it would not hear launch's SIGINT."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def main(argv: list[str] | None = None) -> int:
    """``--parent PID -- CMD ARGS...``: set the parent-death signal, then exec CMD."""
    ap = argparse.ArgumentParser(prog="lifeline.py",
                                 description=main.__doc__)
    ap.add_argument("--parent", type=int, required=True, help="pid of the launcher")
    ap.add_argument("--log", default="", help="write the command's stdout and stderr to LOG")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")
    set_parent_death_signal(args.parent)
    restore_stop_signals()
    if args.log:                   # the node's own log file (edge_vlm_run --log-dir, the demo)
        os.makedirs(os.path.dirname(args.log) or ".", exist_ok=True)
        fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"lifeline: error: cannot run {cmd[0]}: {exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main())
