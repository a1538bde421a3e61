"""``edge-vlm demo | play | run``: the ROS 2 tools, started as their own executables (the core
library never imports rclpy)."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from edge_vlm.cli import parsers
from edge_vlm.sim.export import demo_data

#: package and executable of each tool (installed by colcon; on PATH after ``source env.sh``)
TOOLS = {"demo": ("edge_vlm_tools", "edge_vlm_demo"), "play": ("edge_vlm_tools", "edge_vlm_play"),
         "run": ("edge_vlm_tools", "edge_vlm_run")}
HELP = {"-h", "--help"}


def _run_tool(name: str, argv: list[str]) -> int:
    package, exe = TOOLS[name]
    path = shutil.which(exe)
    if path is None:
        print(f"edge-vlm {name}: error: {exe} (ROS 2 package {package}) not found: run `make "
              "setup` and `source env.sh` first", file=sys.stderr)
        return 2
    try:
        return subprocess.call([path, *argv])
    except KeyboardInterrupt:
        return 130


def _demo_help() -> str:
    """The help of ``edge-vlm demo``'s own options (its parser has no ``--help``: that one
    passes through to the runner)."""
    sub = argparse.ArgumentParser(prog="edge-vlm").add_subparsers()
    parsers.add_demo(sub)
    return sub.choices["demo"].format_help().rstrip()


def run_demo(args) -> int:
    """``edge-vlm demo [--bag B] [--checkpoint C] [--out-dir D] [runner options]``: the runner's
    own options pass through; ``--help`` shows both sets (without writing the demo bag)."""
    if HELP & set(args.extra):
        print(_demo_help() + "\n\nOptions of the demo runner (edge_vlm_demo), passed through:\n",
              flush=True)
        return _run_tool("demo", ["--help"])
    bag = args.bag or demo_data()
    argv = [bag, "--out-dir",
            args.out_dir] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    os.makedirs(args.out_dir, exist_ok=True)
    return _run_tool("demo", argv + list(args.extra))


def run_play(args) -> int:
    """``edge-vlm play BAG [player options]``: every argument goes to edge_vlm_play."""
    return _run_tool("play", list(args.rest))


def run_graph(args) -> int:
    """``edge-vlm run [runner options]``: every argument goes to edge_vlm_run (the graph through
    the bringup's launch file)."""
    return _run_tool("run", list(args.rest))
