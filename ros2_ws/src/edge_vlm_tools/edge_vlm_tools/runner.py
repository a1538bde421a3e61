"""edge_vlm_run: start the node graph of ``graph.yaml`` without ``ros2 launch``.

The graph file is found by ``edge_vlm.cores.graph.default_graph_path`` (``EDGE_VLM_GRAPH``,
else ``config/graph.yaml`` of the edge_vlm_bringup package), as the launch file finds it.

Each node runs as its own process::

    <install>/<pkg>/lib/<pkg>/<exe> --ros-args -r __node:=<name> [-r __ns:=<ns>]
                                    -p name:=value ... -r from:=to ...

Usage::

    edge_vlm_run [--graph GRAPH.yaml] [--namespace NS] [--events-topic T] [--image-topic T]
                 [-p [node.]name=value ...] [--log-dir DIR] [--keep-going] [--print]

``-p compute_budget=0.5`` sets the parameter on every node that has it;
``-p vlm_captioner.checkpoint=/x.pt`` on one node. SIGINT/SIGTERM are
forwarded to the nodes (SIGHUP as SIGTERM, the nodes' clean stop); when a node dies the runner
reports it and (unless ``--keep-going``) stops the others and exits non-zero.

Nodes never outlive the runner: each asks the kernel for SIGTERM when the runner dies
(``edge_vlm_tools.lifeline``), SIGKILL of the runner included. The graph runs in its own
``ROS_DOMAIN_ID`` (a free one) with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless the
environment sets them (the runner prints the domain: ``ROS_DOMAIN_ID=N ros2 topic list``).

Python API: :func:`start_graph` -> list of ``subprocess.Popen`` (each with ``.node_name``),
:func:`stop_graph`, :func:`find_executable`, :func:`node_command` (the graph itself:
``edge_vlm.cores.graph.load_graph``, as the launch file reads it). No rclpy here.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ament_index_python.packages import PackageNotFoundError, get_package_prefix

from edge_vlm.cores.graph import NodeSpec, load_graph, parse_overrides
from edge_vlm.paths import repo_root
from edge_vlm_ros.lifeline import exec_prefix, isolated_env

ROOT = str(repo_root())


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


def start_graph(graph_path: str | None = None, overrides: dict[str, Any] | None = None, *,
                namespace: str | None = None, inputs: dict[str, str] | None = None,
                env: dict | None = None, log_dir: str | None = None,
                extra_ros_args: list[str] | None = None) -> list[subprocess.Popen]:
    """Start every node of the graph as its own process; return the Popen objects.

    Each Popen has ``.node_name`` and ``.cmd``; with ``log_dir`` the output of
    node N goes to ``log_dir/N.log`` (``.log_path``), else it is inherited. ``env`` (default
    ``os.environ``) gets its own domain unless it sets one (:func:`isolated_env`); each node
    runs under the lifeline (``.cmd`` starts with :func:`exec_prefix`; the pid is the node's
    after its exec) and gets SIGTERM when the calling process dies.
    """
    specs = load_graph(graph_path, overrides, namespace, inputs)
    env = isolated_env(env)
    procs: list[subprocess.Popen] = []
    try:
        for spec in specs:
            cmd = exec_prefix() + node_command(spec, find_executable(spec.package,
                                                                     spec.executable, env))
            cmd += list(extra_ros_args or [])
            out = None
            log_path = None
            if log_dir:
                os.makedirs(log_dir, exist_ok=True)
                log_path = os.path.join(log_dir, f"{spec.name}.log")
                out = open(log_path, "wb")
            # own session: a Ctrl-C reaches the runner only, which forwards it once
            p = subprocess.Popen(cmd, env=env, stdout=out,
                                 stderr=subprocess.STDOUT if out else None,
                                 start_new_session=True)
            if out is not None:
                out.close()
            p.node_name, p.cmd, p.log_path = spec.name, cmd, log_path
            procs.append(p)
    except BaseException:
        stop_graph(procs)
        raise
    return procs


def stop_graph(procs: list[subprocess.Popen], timeout: float = 10.0) -> dict[str, int]:
    """SIGINT every running node, wait, escalate to SIGTERM then SIGKILL; return exit codes."""
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


class Supervisor:
    """Forwards SIGINT/SIGTERM to the running nodes and watches them until all ended."""

    def __init__(self, procs: list[subprocess.Popen], keep_going: bool = False):
        self.procs = procs
        self.keep_going = keep_going
        self.signal: int | None = None      # the signal that stops the graph, once one did

    def forward(self, sig, _frame=None) -> None:
        self.signal = sig
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM if sig == signal.SIGHUP else sig)
                except ProcessLookupError:
                    pass

    def watch(self) -> int:
        """Wait until every node ended; report the first that exits on its own (then, unless
        ``keep_going``, stop the others). The exit code: that node's (1 if it was 0), else 0."""
        code = 0
        reported = set()
        while True:
            alive = [p for p in self.procs if p.poll() is None]
            for p in self.procs:
                if p.returncode is None or p.pid in reported:
                    continue
                reported.add(p.pid)
                if self.signal is None:
                    print(f"edge_vlm_run: node {p.node_name} exited with code {p.returncode}",
                          file=sys.stderr, flush=True)
                    code = code or (p.returncode or 1)
                    if not self.keep_going:
                        self.signal = signal.SIGINT
                        stop_graph(self.procs)
            if not alive:
                break
            time.sleep(0.2)
        if self.signal is not None and code == 0:
            bad = {p.node_name: p.returncode for p in self.procs
                   if p.returncode not in (0, -signal.SIGINT, -signal.SIGTERM, 130)}
            if bad:
                print(f"edge_vlm_run: nodes ended with {bad}", file=sys.stderr)
        return code


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge_vlm_run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", default=None,
                    help="graph file (default: config/graph.yaml of edge_vlm_bringup)")
    ap.add_argument("--namespace", default=None,
                    help="namespace for every node (replaces the graph's)")
    ap.add_argument("--events-topic", default=None,
                    help="EventPacket input topic (replaces inputs.events)")
    ap.add_argument("--image-topic", default=None,
                    help="RGB image input topic (replaces inputs.image)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="[NODE.]NAME=VALUE")
    ap.add_argument("--log-dir", default=None,
                    help="write each node's output to LOG_DIR/<node>.log")
    ap.add_argument("--keep-going", action="store_true", help="keep the other nodes when one dies")
    ap.add_argument("--print", action="store_true", help="print the node commands and exit")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    inputs = {k: v for k, v in (("events", args.events_topic), ("image", args.image_topic)) if v}
    try:
        overrides = parse_overrides(args.param)
        if args.print:
            for spec in load_graph(args.graph, overrides, args.namespace, inputs):
                print(" ".join(node_command(spec, f"{spec.package}/{spec.executable}")))
            return 0
        env = isolated_env()
        procs = start_graph(args.graph, overrides, namespace=args.namespace, inputs=inputs,
                            env=env, log_dir=args.log_dir)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"edge_vlm_run: error: {exc}", file=sys.stderr)
        return 2
    supervisor = Supervisor(procs, args.keep_going)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, supervisor.forward)
    print("edge_vlm_run: started " + ", ".join(f"{p.node_name} (pid {p.pid})" for p in procs)
          + f" in ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} (ROS_AUTOMATIC_DISCOVERY_RANGE="
          f"{env['ROS_AUTOMATIC_DISCOVERY_RANGE']})", flush=True)
    return supervisor.watch()


if __name__ == "__main__":
    sys.exit(main())
