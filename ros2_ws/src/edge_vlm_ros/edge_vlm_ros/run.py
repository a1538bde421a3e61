"""Running one node process: rclpy init, spin until SIGINT/SIGTERM, shutdown, exit code
(:func:`run_node`; :func:`run_nodes`: several nodes in one process and one executor).

Exit codes: 0 (stopped, or :class:`EndOfStream`), 2 (invalid parameter,
:class:`~edge_vlm_ros.params.ParameterError`), 3 (missing/corrupt checkpoint,
``edge_vlm.model.checkpoint.CheckpointError``), 4 (camera / video source,
:class:`DeviceError`). Each error is one clean line on stderr, no traceback.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.signals import SignalHandlerOptions

from edge_vlm_ros.params import ParameterError

EXIT_OK = 0
EXIT_PARAMETER = 2
EXIT_CHECKPOINT = 3
EXIT_DEVICE = 4
#: the module whose ``CheckpointError`` means exit 3 (it loads torch: looked up, not imported,
#: so the camera nodes start without torch; a node that never loaded it cannot raise it)
CHECKPOINT_MODULE = "edge_vlm.model.checkpoint"


class DeviceError(RuntimeError):
    """A camera / video source that cannot be opened or stopped working (clean error, exit 4)."""


class EndOfStream(Exception):
    """A finite source (video or recording file) is over: the node exits with code 0."""


#: set by the first stop signal: the stop is under way
_STOPPING: list[int] = []


def _stop(sig, _frame):
    if _STOPPING:      # a second SIGINT (Ctrl-C and launch), launch's SIGTERM after its SIGINT
        return
    _STOPPING.append(sig)
    raise KeyboardInterrupt


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (instead of rclpy's own
    handling): they end ``spin()`` while the context is still valid, so what a process reports
    at its end (counters) still reaches the log and /rosout. Only the first one does: a second
    signal (a terminal's Ctrl-C reaching both the node and its launcher, which forwards it)
    must not cut the shutdown report short; SIGKILL remains for a node that hangs."""
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def _checkpoint_error() -> type | None:
    return getattr(sys.modules.get(CHECKPOINT_MODULE), "CheckpointError", None)


def exit_code(exc: BaseException) -> int | None:
    """The exit code of a clean error ``exc`` (None: not one of them)."""
    if isinstance(exc, ParameterError):
        return EXIT_PARAMETER
    if isinstance(exc, DeviceError):
        return EXIT_DEVICE
    checkpoint_error = _checkpoint_error()
    if checkpoint_error is not None and isinstance(exc, checkpoint_error):
        return EXIT_CHECKPOINT
    return None


def _report(node, name: str) -> None:
    """The node's shutdown report (counters), then destroy it; never raises."""
    try:
        node.shutdown_report()
    except Exception as exc:  # pragma: no cover - reporting must not mask the exit
        print(f"[{name}] shutdown report failed: {exc}", file=sys.stderr, flush=True)
    try:
        node.destroy_node()
    except Exception:
        pass


def missing_params_file(argv) -> str:
    """The first ``--params-file FILE`` of ``argv`` that does not exist ('' if none): checked
    before rcl, which would log its own error line and raise."""
    argv = list(argv)
    for flag, value in zip(argv, argv[1:]):
        if flag == "--params-file" and not os.path.isfile(value):
            return value
    return ""


def rcl_message(exc: BaseException) -> str:
    """An rcl error as one line, without its C source locations (``, at /x/y.c:12``)."""
    return re.sub(r",? at \S+\.c:\d+", "", " ".join(str(exc).split())).strip()


def run_node(factory: Callable[[], Any], args=None, name: str = "node") -> int:
    """Init rclpy, build the node with ``factory()``, spin until SIGINT/SIGTERM; return an exit
    code.

    Clean one-line errors (no traceback wall) for invalid parameters (exit 2),
    a missing/corrupt checkpoint (exit 3) and a camera that cannot be opened
    or a missing camera SDK (:class:`DeviceError`, exit 4). :class:`EndOfStream`
    (a file source is over) ends the node normally (exit 0). The node's
    ``shutdown_report()`` runs at the end.
    """
    return run_nodes([factory], args, name)


def run_nodes(factories: Sequence[Callable[[], Any]], args=None, name: str = "node",
              combine: Callable[[list], list | None] | None = None) -> int:
    """:func:`run_node` for several nodes in ONE process and ONE executor (``edge_vlm_graph``,
    the single-process graph): build them in order, ``combine(nodes)`` once all exist (it may
    return helper nodes to spin too), spin them together; the same exit codes and one-line
    errors; every node's ``shutdown_report()`` at the end (in order)."""
    interrupt_on_signals()
    missing = missing_params_file(sys.argv if args is None else args)
    if missing:
        print(f"[{name}] error: params file not found: {missing}", file=sys.stderr, flush=True)
        return EXIT_PARAMETER
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except _rclpy.RCLError as exc:     # e.g. a missing or malformed --params-file
        print(f"[{name}] error: {rcl_message(exc)}", file=sys.stderr, flush=True)
        return EXIT_PARAMETER
    nodes: list = []
    helpers: list = []
    code = EXIT_OK
    try:
        for factory in factories:
            nodes.append(factory())
        if combine is not None:
            helpers = list(combine(nodes) or [])
        executor = SingleThreadedExecutor()
        for node in nodes + helpers:
            executor.add_node(node)
        # not executor.spin(): a stop signal whose KeyboardInterrupt got lost (raised inside a
        # finalizer such as rclpy's Future.__del__, which Python ignores) still ends the loop
        while rclpy.ok() and not _STOPPING:
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except EndOfStream as exc:
        print(f"[{name}] end of stream{': ' + str(exc) if str(exc) else ''}", file=sys.stderr,
              flush=True)
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        what = "invalid parameter: " if code == EXIT_PARAMETER else ""
        print(f"[{name}] error: {what}{exc}", file=sys.stderr, flush=True)
    finally:
        for node in nodes:
            _report(node, _node_name(node, name))
        for node in helpers:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


def _node_name(node, default: str) -> str:
    try:
        return str(node.get_name())
    except Exception:
        return default
