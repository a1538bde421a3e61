"""The layering rules of docs/architecture.md, checked on the source with ``ast``.

* no import cycle between the modules of the workspace's Python packages;
* the core package ``edge_vlm`` imports downwards only (a module may import its own layer and
  the layers below it, see :data:`LAYERS`) and never rclpy nor a ROS package of the workspace;
* the ROS library ``edge_vlm_ros`` imports no node, tool or camera package;
* imports sit at module top; inside functions only the optional heavy dependencies of
  :data:`LAZY_OK` (what a user may not have installed, or what costs seconds to load and is
  needed by one command only);
* hand-written modules stay under :data:`MAX_MODULE_LINES` lines and functions under
  :data:`MAX_FUNCTION_LINES` (tests excepted).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "ros2_ws" / "src"

#: layer of each top-level part of the core package (lowest first); a module may import its own
#: layer and lower ones
LAYERS = {
    "events": 0, "params": 0, "paths": 0, "topics": 0, "report": 0, "domains": 0,
    "io": 1,
    "datasets": 2, "sim": 2,
    "stream": 3,
    "model": 4,
    "inference": 5,
    "cores": 6,
    "training": 7, "evaluation": 7, "bench": 7,
    "cli": 8, "docs": 8,
}
#: imported inside a function only (optional, or seconds to load for one command)
LAZY_OK = {"dv_processing", "dv", "cv2", "matplotlib", "pycocoevalcap", "metavision_core",
           "metavision_sdk_core", "metavision_hal"}
#: never imported by the core package
ROS_ONLY = {"rclpy", "launch", "launch_ros", "launch_testing", "launch_pytest",
            "rosidl_runtime_py",
            "builtin_interfaces", "std_msgs", "sensor_msgs", "diagnostic_msgs", "rcl_interfaces",
            "edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros", "edge_vlm_tools",
            "edge_vlm_cameras",
            "sttf_perception", "anc_router", "vlm_captioner"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    """Every Python module of the workspace packages: dotted name -> path."""
    out = {}
    for pkg_dir in sorted(p.parent for p in SRC.glob("*/package.xml")):
        for path in sorted(pkg_dir.rglob("*.py")):
            rel = path.relative_to(pkg_dir)
            if rel.parts[0] in ("test", "launch", "build", "install") or path.name == "setup.py":
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def imports(mod: str) -> tuple[tuple[str, int, bool], ...]:
    """``(imported module, line, at module top)`` of ``mod``; ``from a import b`` gives ``a.b``
    when that is a module of the workspace, else ``a``."""
    path = modules()[mod]
    tree = ast.parse(path.read_text())
    known = modules()
    top = {id(n) for n in tree.body}
    for n in tree.body:              # imports under a module-level if/try count as top level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n) if isinstance(c, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, path.name == "__init__.py", node)
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full if full in known else base, node.lineno, id(node) in top))
    return tuple(out)


def _internal(name: str) -> str | None:
    """The workspace module ``name`` refers to (itself or its closest known parent), or None."""
    known = modules()
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    if parts[0] != "edge_vlm":
        return None
    return LAYERS.get(parts[1], -1) if len(parts) > 1 else 0


def core_modules() -> list[str]:
    return [m for m in modules() if m.split(".")[0] == "edge_vlm"]


def _with_packages(target: str, importer: str) -> set[str]:
    """``target`` and the packages above it that importing it runs (their ``__init__``), but
    the importer's own packages (already being imported)."""
    out, parts = set(), target.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in modules() and not importer.startswith(name + ".") and name != importer:
            out.add(name)
    return out


def test_no_import_cycles():
    graph = {m: set().union(*[_with_packages(t, m) for name, _, _ in imports(m)
                              if (t := _internal(name))] or [set()]) for m in modules()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def strong(v):                   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"


def test_every_core_part_has_a_layer():
    parts = {m.split(".")[1] for m in core_modules() if "." in m}
    assert parts <= set(LAYERS) | {"_native", "checkpoints"}, sorted(parts - set(LAYERS))


@pytest.mark.parametrize("mod", sorted(core_modules()))
def test_core_imports_downwards_only(mod):
    mine = _layer(mod)
    bad = []
    for name, line, _ in imports(mod):
        root = name.split(".")[0]
        if root in ROS_ONLY:
            bad.append(f"line {line}: {name} (the core never imports ROS)")
        target = _internal(name)
        if target is not None and target.split(".")[0] == "edge_vlm":
            theirs = _layer(target)
            if theirs is not None and mine is not None and theirs > mine:
                bad.append(f"line {line}: {target} (layer {theirs} above {mine})")
    assert not bad, f"{mod}: " + "; ".join(bad)


def test_ros_library_imports_no_node_or_tool():
    bad = [(m, name) for m in modules() if m.split(".")[0] == "edge_vlm_ros"
           for name, _, _ in imports(m)
           if name.split(".")[0] in ("edge_vlm_tools", "edge_vlm_cameras", "sttf_perception",
                                     "anc_router",
                                     "vlm_captioner")]
    assert not bad, bad


@pytest.mark.parametrize("mod", sorted(modules()))
def test_imports_at_module_top(mod):
    inner = [f"line {line}: {name}" for name, line, top in imports(mod)
             if not top and name.split(".")[0] not in LAZY_OK]
    assert not inner, f"{mod} imports inside functions: " + "; ".join(inner)


def _hand_written(path: Path) -> bool:
    return "checkpoints" not in path.parts


@pytest.mark.parametrize("mod", sorted(modules()))
def test_unit_sizes(mod):
    path = modules()[mod]
    if not _hand_written(path):
        return
    text = path.read_text()
    n = len(text.splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: {n} lines (max {MAX_MODULE_LINES})"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({length} lines, line {node.lineno})")
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    """``edge-vlm ARGS`` in a fresh interpreter; prints the heavy modules it imported."""
    code = ("import sys\nfrom edge_vlm.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept "
            "SystemExit as exc:\n    rc = exc.code\nheavy = sorted(m for m in ('torch', 'rclpy', "
            "'cv2', 'matplotlib') if m in sys.modules)\nprint('HEAVY=' + ','.join(heavy), "
            "file=sys.stderr)\nsys.exit(rc)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC / "edge_vlm"),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env,
                          timeout=120)


def _subcommands() -> list[str]:
    from edge_vlm.cli import COMMANDS

    return sorted(COMMANDS)


@pytest.mark.parametrize("args", [["--help"], ["no-such-command"], ["eval"]]
                         + [[c, "--help"] for c in _subcommands() if c != "play"])
def test_cli_help_and_argument_errors_do_not_import_torch(args):
    r = _run_cli(*args)
    assert r.returncode in (0, 2), r.stderr[-2000:]
    heavy = r.stderr.rpartition("HEAVY=")[2].strip()
    assert heavy == "", f"edge-vlm {' '.join(args)} imported {heavy}"
    if args == ["--help"]:
        assert "usage: edge-vlm" in r.stdout
    elif args[-1] != "--help":
        assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
