"""``edge-vlm demo | play``: the ROS 2 tools, started as their own executables (the core
library never imports rclpy)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from edge_vlm.sim.export import demo_data

#: package and executable of each tool (installed by colcon; on PATH after ``source env.sh``)
TOOLS = {"demo": ("edge_vlm_tools", "edge_vlm_demo"), "play": ("edge_vlm_tools", "edge_vlm_play")}


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


def run_demo(args) -> int:
    bag = args.bag or demo_data()
    argv = [bag, "--out-dir",
            args.out_dir] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    os.makedirs(args.out_dir, exist_ok=True)
    return _run_tool("demo", argv + list(args.extra))


def run_play(args) -> int:
    return _run_tool("play", list(args.rest))
