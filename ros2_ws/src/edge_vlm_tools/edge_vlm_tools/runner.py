"""edge_vlm_run: start the node graph of ``graph.yaml`` through the bringup's launch file.

A thin wrapper over the one description of the graph, ``edge_vlm_bringup``'s
``launch/edge_vlm.launch.py``: this process runs it with ``launch.LaunchService`` (as ``ros2
launch edge_vlm_bringup edge_vlm.launch.py`` would), turning the options into launch
arguments. The graph file is found by ``edge_vlm.cores.graph.default_graph_path``
(``EDGE_VLM_GRAPH``, else ``config/graph.yaml`` of the bringup package), as the launch file
finds it.

Usage::

    edge_vlm_run [--graph GRAPH.yaml] [--namespace NS] [--events-topic T] [--image-topic T]
                 [-p [node.]name=value ...] [--params YAML] [--single-process]
                 [--log-dir DIR] [--keep-going] [--print]

``-p compute_budget=0.5`` sets the parameter on every node that has it;
``-p vlm_captioner.checkpoint=/x.pt`` on one node (launch argument ``params``).
``--single-process``: every node in one process and one executor (``single_process:=true``,
``edge_vlm_graph``). ``--log-dir``: each process writes to ``DIR/<node>.log``.

Stopping: SIGINT (Ctrl-C) stops the graph as ``ros2 launch`` does; SIGTERM and SIGHUP are
forwarded to the nodes as SIGINT (their clean stop) and stop the launch too. When a node exits
on its own the runner reports it and (unless ``--keep-going``) stops the others and exits
non-zero. Nodes never outlive the runner: each asks the kernel for SIGTERM when the runner
dies (``edge_vlm_ros.lifeline``), SIGKILL of the runner included. The graph runs in its own
``ROS_DOMAIN_ID`` (a free one) with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless the
environment sets them (the runner prints the domain: ``ROS_DOMAIN_ID=N ros2 topic list``).

Python API: :func:`run_graph` (the launch), :func:`launch_arguments`, :func:`launch_file`;
for one node process outside launch (the node tests) :func:`node_command`,
:func:`find_executable` and :func:`stop_graph`.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ament_index_python.packages import (PackageNotFoundError, get_package_prefix,
                                         get_package_share_directory)
from launch import LaunchDescription, LaunchService
from launch.actions import (EmitEvent, IncludeLaunchDescription, RegisterEventHandler,
                            SetLaunchConfiguration)
from launch.event_handlers import OnProcessExit, OnProcessStart
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource

from edge_vlm.cores.graph import (BRINGUP, NodeSpec, load_graph, overrides_from_yaml,
                                  overrides_to_yaml, parse_overrides)
from edge_vlm.paths import repo_root
from edge_vlm_ros.lifeline import isolated_env
from edge_vlm_tools.proc import children

ROOT = str(repo_root())
PROG = "edge_vlm_run"
#: the bringup's launch file (relative to the package source or its share directory)
LAUNCH_FILE = os.path.join("launch", "edge_vlm.launch.py")
#: longest wait for the nodes after the launch ended (then SIGTERM, SIGKILL)
STOP_TIMEOUT_S = 10.0
#: launch's wait after SIGINT before SIGTERM (its default, 5 s, is short for a node that
#: reports its counters and frees torch on a loaded machine)
SIGTERM_TIMEOUT_S = 15


def format_value(v: Any) -> str:
    """A parameter value as ROS ``-p name:=value`` text (YAML, typed like the spec)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def node_command(spec: NodeSpec, executable: str) -> list[str]:
    """The command line of one node process (as launch_ros starts it, parameters inline)."""
    cmd = [executable, "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        cmd += ["-r", f"__ns:={spec.namespace}"]
    for k, v in spec.parameters.items():
        cmd += ["-p", f"{k}:={format_value(v)}"]
    for frm, to in spec.remappings.items():
        cmd += ["-r", f"{frm}:={to}"]
    return cmd


def find_executable(package: str, executable: str, env: dict | None = None) -> str:
    """``<prefix>/lib/<package>/<executable>`` via ament_index (AMENT_PREFIX_PATH of ``env``)."""
    candidates = []
    saved = os.environ.get("AMENT_PREFIX_PATH")
    try:
        if env is not None and env.get("AMENT_PREFIX_PATH"):
            os.environ["AMENT_PREFIX_PATH"] = env["AMENT_PREFIX_PATH"]
        try:
            candidates.append(os.path.join(get_package_prefix(package), "lib", package,
                                           executable))
        except (PackageNotFoundError, KeyError, ValueError, EnvironmentError):
            pass
    finally:
        if saved is None:
            os.environ.pop("AMENT_PREFIX_PATH", None)
        else:
            os.environ["AMENT_PREFIX_PATH"] = saved
    candidates.append(os.path.join(ROOT, "ros2_ws", "install", package, "lib", package,
                                   executable))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        f"executable '{executable}' of package '{package}' not found (looked in {candidates}); "
        "build the workspace (bash scripts/setup.sh) and source env.sh")


def stop_graph(procs: list[subprocess.Popen], timeout: float = 10.0) -> dict[str, int]:
    """SIGINT every running process, wait, escalate to SIGTERM then SIGKILL; return exit codes
    (by ``.node_name`` when set, else pid)."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            break
        for p in alive:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for p in alive:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    return {getattr(p, "node_name", str(p.pid)): p.returncode for p in procs}


def launch_file() -> str:
    """The bringup's launch file: the checkout's (``ros2_ws/src/edge_vlm_bringup``), else the
    installed package's share directory."""
    return bringup_file(LAUNCH_FILE)


def bringup_file(rel: str) -> str:
    """A file of the bringup package (``rel`` inside it, e.g. ``config/graph.yaml``): the
    checkout's, else the installed package's share directory."""
    candidates = [Path(ROOT) / "ros2_ws" / "src" / BRINGUP / rel]
    try:
        candidates.append(Path(get_package_share_directory(BRINGUP)) / rel)
    except (PackageNotFoundError, ValueError, KeyError, OSError):
        pass
    for c in candidates:
        if c.is_file():
            return str(c)
    raise FileNotFoundError(f"{rel} of {BRINGUP} not found (looked in "
                            f"{[str(c) for c in candidates]}); build the workspace")


@dataclass
class GraphOptions:
    """What the runner, the demo and the bench choose about a graph (launch arguments)."""

    graph: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    namespace: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)    # events / image topic
    single_process: bool = False
    log_dir: str | None = None


def launch_arguments(opts: GraphOptions) -> dict[str, str]:
    """The bringup launch file's arguments for ``opts`` (no input source: ``source:=none``)."""
    out = {"source": "none", "single_process": "true" if opts.single_process else "false"}
    if opts.graph:
        out["graph"] = os.path.abspath(opts.graph)
    if opts.overrides:
        out["params"] = overrides_to_yaml(opts.overrides)
    if opts.namespace:
        out["namespace"] = opts.namespace
    for key in ("events", "image"):
        if opts.inputs.get(key):
            out[f"{key}_topic"] = opts.inputs[key]
    if opts.log_dir:
        out["log_dir"] = os.path.abspath(opts.log_dir)
    return out


def _base_name(process_name: str) -> str:
    """``vlm_captioner-3`` -> ``vlm_captioner`` (launch numbers its processes)."""
    base, sep, num = process_name.rpartition("-")
    return base if sep and num.isdigit() else process_name


class _Watch:
    """Launch event handlers: report starts, record exits, stop the graph when a node ends on
    its own (unless ``keep_going``)."""

    def __init__(self, keep_going: bool):
        self.keep_going = keep_going
        self.codes: dict[str, int] = {}
        self.failed: int = 0            # exit code of the first node that ended on its own

    def started(self, event, _context):
        print(f"{PROG}: started {_base_name(event.process_name)} (pid {event.pid})", flush=True)

    def exited(self, event, context):
        name = _base_name(event.process_name)
        self.codes[name] = event.returncode
        if context.is_shutdown:
            return None
        print(f"{PROG}: node {name} exited with code {event.returncode}", file=sys.stderr,
              flush=True)
        self.failed = self.failed or (event.returncode or 1)
        if self.keep_going:
            return None
        return EmitEvent(event=Shutdown(reason=f"node {name} exited"))


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_children(timeout: float = STOP_TIMEOUT_S) -> None:
    """Wait for the children still running (they were sent SIGINT), then SIGTERM, SIGKILL."""
    for sig, wait in ((None, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if sig is not None:
            _signal_all(children(), sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            for pid in children():
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            if not children():
                return
            time.sleep(0.1)


#: the signals received that stop the graph (SIGTERM cuts launch's run short: its code is 1)
_STOP_SIGNALS: list[int] = []


def _forward_as_sigint(sig, _frame) -> None:
    """SIGTERM / SIGHUP: the nodes get SIGINT (their clean stop), then the launch does."""
    _STOP_SIGNALS.append(sig)
    _signal_all(children(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)


def run_graph(opts: GraphOptions, keep_going: bool = False) -> int:
    """Run the bringup's launch description with ``opts`` until SIGINT/SIGTERM/SIGHUP or, unless
    ``keep_going``, until a node exits; the exit code (that node's, 1 if it was 0; else 0).
    The environment must hold the graph's domain (:func:`isolated_env`). Main thread only."""
    watch = _Watch(keep_going)
    description = LaunchDescription([
        SetLaunchConfiguration("sigterm_timeout", str(SIGTERM_TIMEOUT_S)),
        RegisterEventHandler(OnProcessStart(on_start=watch.started)),
        RegisterEventHandler(OnProcessExit(on_exit=watch.exited)),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file()),
                                 launch_arguments=list(launch_arguments(opts).items())),
    ])
    service = LaunchService(noninteractive=True)
    service.include_launch_description(description)
    # SIGINT even when started in the background (which ignores it): launch handles it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _forward_as_sigint)
    rc = service.run()
    _stop_children()          # a launch cut short (SIGTERM) leaves them to this process
    bad = {k: v for k, v in watch.codes.items() if v not in (0, -signal.SIGINT, -signal.SIGTERM)}
    if bad and not watch.failed:
        print(f"{PROG}: nodes ended with {bad}", file=sys.stderr, flush=True)
    if watch.codes:
        print(f"{PROG}: exit codes: " + " ".join(f"{k}={v}" for k, v in watch.codes.items()),
              flush=True)
    if watch.failed:
        return watch.failed
    return 0 if _STOP_SIGNALS else rc


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", default=None,
                    help="graph file (default: config/graph.yaml of edge_vlm_bringup)")
    ap.add_argument("--namespace", default=None,
                    help="namespace for every node (replaces the graph's)")
    ap.add_argument("--events-topic", default=None,
                    help="EventPacket input topic (replaces inputs.events)")
    ap.add_argument("--image-topic", default=None,
                    help="RGB image input topic (replaces inputs.image)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="[NODE.]NAME=VALUE")
    ap.add_argument("--params", default="", metavar="YAML",
                    help="overrides as one YAML mapping, e.g. '{compute_budget: 0.5}' (-p wins)")
    ap.add_argument("--single-process", action="store_true",
                    help="every node in one process and one executor (edge_vlm_graph)")
    ap.add_argument("--log-dir", default=None,
                    help="write each node's output to LOG_DIR/<node>.log")
    ap.add_argument("--keep-going", action="store_true", help="keep the other nodes when one dies")
    ap.add_argument("--print", action="store_true", help="print the node commands and exit")
    return ap


def _print_commands(specs: list[NodeSpec], opts: GraphOptions) -> None:
    if opts.single_process:
        args = launch_arguments(opts)
        print("edge_vlm_tools/edge_vlm_graph" + (f" --params '{args['params']}'"
                                                 if "params" in args else ""))
        return
    for spec in specs:
        print(" ".join(node_command(spec, f"{spec.package}/{spec.executable}")))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    inputs = {k: v for k, v in (("events", args.events_topic), ("image", args.image_topic)) if v}
    try:
        overrides = {**overrides_from_yaml(args.params, "--params"),
                     **parse_overrides(args.param)}
        opts = GraphOptions(args.graph, overrides, args.namespace, inputs, args.single_process,
                            args.log_dir)
        specs = load_graph(args.graph, overrides, args.namespace, inputs)  # errors: one line
        if args.print:
            _print_commands(specs, opts)
            return 0
        launch_file()
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    env = isolated_env()
    os.environ.update(env)             # launch starts the nodes with this environment
    print(f"{PROG}: graph {', '.join(s.name for s in specs)}"
          f"{' in one process' if opts.single_process else ''} in ROS_DOMAIN_ID="
          f"{env['ROS_DOMAIN_ID']} (ROS_AUTOMATIC_DISCOVERY_RANGE="
          f"{env['ROS_AUTOMATIC_DISCOVERY_RANGE']})", flush=True)
    return run_graph(opts, args.keep_going)


if __name__ == "__main__":
    sys.exit(main())
