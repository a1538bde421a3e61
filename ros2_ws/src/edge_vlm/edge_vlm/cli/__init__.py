"""``edge-vlm``: the project's command line.

The parser (:mod:`edge_vlm.cli.parsers`) imports argparse only; a command's module, which loads
the model code, is imported when that command runs. So ``edge-vlm --help``, a command's
``--help`` and an argument error never import torch. ``demo``, ``play`` and ``run`` start the
ROS 2 tools as their own executables (the core library never imports rclpy) and pass the options
they do not know to them, ``--help`` included.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from edge_vlm.cli import parsers

#: command -> (parser of :mod:`edge_vlm.cli.parsers`, "module:function" that runs it)
COMMANDS = {
    "stats": (parsers.add_stats, "edge_vlm.cli.data_cmds:run_stats"),
    "synth": (parsers.add_synth, "edge_vlm.cli.data_cmds:run_synth"),
    "convert": (parsers.add_convert, "edge_vlm.cli.data_cmds:run_convert"),
    "train": (parsers.add_train, "edge_vlm.cli.train_cmds:run_train"),
    "calibrate": (parsers.add_calibrate, "edge_vlm.cli.train_cmds:run_calibrate"),
    "finetune": (parsers.add_finetune, "edge_vlm.cli.train_cmds:run_finetune"),
    "demo": (parsers.add_demo, "edge_vlm.cli.ros_cmds:run_demo"),
    "play": (parsers.add_play, "edge_vlm.cli.ros_cmds:run_play"),
    "run": (parsers.add_run, "edge_vlm.cli.ros_cmds:run_graph"),
    "eval": (parsers.add_eval, "edge_vlm.cli.eval_cmds:run_eval"),
    "coco": (parsers.add_coco, "edge_vlm.cli.eval_cmds:run_coco_cmd"),
    "paper-table": (parsers.add_paper_table, "edge_vlm.cli.eval_cmds:run_paper_table"),
    "bench": (parsers.add_bench, "edge_vlm.cli.bench_cmds:run_bench"),
    "sim-stats": (parsers.add_sim_stats, "edge_vlm.cli.sim_cmds:run_sim_stats"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-vlm", description="edge_vlm: event-camera VLM tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, (add, _) in COMMANDS.items():
        add(sub)
    return p


def command(name: str):
    """The function that runs command ``name`` (its module is imported now)."""
    module, _, fn = COMMANDS[name][1].partition(":")
    return getattr(importlib.import_module(module), fn)


def parse(argv=None) -> argparse.Namespace:
    """The command line; a pass-through command (``play``, ``demo``: its parser sets
    ``passthrough`` to the attribute that collects them) keeps the arguments it does not know,
    in their order, for the tool it starts; any other command rejects them."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    dest = getattr(args, "passthrough", None)
    if unknown and dest is None:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if dest is not None:
        setattr(args, dest, list(getattr(args, dest)) + unknown)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    return int(command(args.cmd)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
