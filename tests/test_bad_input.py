"""Bad input gives one error line and a non-zero exit, never a traceback (issue 18, items 8, 9
and 11): the ``edge-vlm`` commands, the player, a node's ``--params-file``, corrupt AEDAT 4.0
files (bounded memory), oversized EventPackets; ``play`` / ``demo`` pass their options
through; every package.xml declares the third-party modules its code imports."""
from __future__ import annotations

import ast
import os
import re
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import rosenv
from edge_vlm.events import EVENT_DTYPE, EventDecodeError

ROOT = Path(rosenv.ROOT)
SRC = ROOT / "ros2_ws" / "src"
INSTALL = Path(rosenv.INSTALL)
#: ``edge-vlm`` from the source tree (the installed script runs the same ``main``)
EDGE_VLM = [sys.executable, "-c", "import sys\nfrom edge_vlm.cli import main\n"
            "sys.exit(main(sys.argv[1:]))"]
#: "edge-vlm <cmd>: error: ...", "edge_vlm_play: error: ...", "[node] error: ..."
ERROR_LINE = re.compile(r"^(edge-vlm( [a-z-]+)?: error: |edge_vlm_\w+: error: |\[\w+\] error: )")


def _env() -> dict[str, str]:
    """The sourced workspace (the tools ``play`` / ``demo`` start), this checkout's edge_vlm
    first on the path."""
    rosenv.require_workspace("edge_vlm", "edge_vlm_tools", "sttf_perception")
    env = rosenv.sourced_env()
    env["PYTHONPATH"] = os.pathsep.join([str(SRC / "edge_vlm"), env.get("PYTHONPATH", "")])
    return env


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _one_error_line(r: subprocess.CompletedProcess, contains: str = "") -> str:
    """Assert a non-zero exit and a stderr of exactly one error line; return that line."""
    err = r.stderr.strip()
    assert r.returncode != 0, (r.stdout[-500:], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), err[-2000:]
    assert contains in lines[0], lines[0]
    return lines[0]


def edge_vlm(*args: str) -> subprocess.CompletedProcess:
    return _run([*EDGE_VLM, *args])


# ------------------------------------------------------------------ pass-through: play, demo
def test_play_help_and_options_pass_through(tmp_path):
    r = edge_vlm("play", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: edge_vlm_play" in r.stdout and "--rate" in r.stdout
    # --rate and its value reach the player (it then reports the missing bag, not argparse)
    line = _one_error_line(edge_vlm("play", "--rate", "2", str(tmp_path / "nobag")))
    assert line.startswith("edge_vlm_play: error: bag") and "not found" in line
    line = _one_error_line(edge_vlm("play", "--rate", "0", str(tmp_path)))
    assert line == "edge_vlm_play: error: --rate must be > 0"


def test_demo_help_shows_runner_options_and_options_pass_through(tmp_path):
    r = edge_vlm("demo", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    for opt in ("--bag", "--out-dir", "--every", "--drain", "--graph", "usage: edge_vlm_demo"):
        assert opt in r.stdout, opt
    # --every and -p reach the runner: a bad override is the runner's one error line
    line = _one_error_line(edge_vlm("demo", "--bag", str(tmp_path / "none"), "--out-dir",
                                    str(tmp_path / "out"), "--every", "3", "-p",
                                    "no_such_param=1"))
    assert line.startswith("edge_vlm_demo: error: ") and "no_such_param" in line


def test_other_commands_still_reject_unknown_options():
    r = edge_vlm("stats", "x.txt", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr


# ------------------------------------------------------------------ one-line errors
@pytest.mark.parametrize("text, says", [
    ("nodes: [\n  bad", "not valid YAML"),
    ("- a\n- b\n", "the top level"),
    ("nodes:\n  - 1\n", "node entry 1 must be a mapping"),
    ("nodes: 5\n", "'nodes' must be a list"),
    ("inputs: [a]\nnodes: []\n", "'inputs' must be a mapping"),
    ("nodes:\n  - name: x\n", "node entry 1 has no 'package'"),
    ("nodes:\n  - package: sttf_perception\n    parameters: [1]\n", "'parameters' must be a"),
])
def test_graph_file_errors(tmp_path, text, says):
    from edge_vlm.cores.graph import load_graph, replay_params
    g = tmp_path / "graph.yaml"
    g.write_text(text)
    for call in (lambda: load_graph(str(g)), lambda: replay_params(graph=str(g))):
        with pytest.raises(ValueError) as exc:
            call()
        assert says in str(exc.value) and "\n" not in str(exc.value)


def test_eval_bad_or_missing_graph(tmp_path):
    g = tmp_path / "graph.yaml"
    g.write_text("nodes: [\n  bad")
    _one_error_line(edge_vlm("eval", str(tmp_path), "--graph", str(g), "--no-meteor",
                             "--no-progress"), "not valid YAML")
    _one_error_line(edge_vlm("eval", str(tmp_path), "--graph", str(tmp_path / "none.yaml"),
                             "--no-meteor", "--no-progress"), "none.yaml")


def _truncated_bag(tmp_path: Path) -> Path:
    from edge_vlm.io.bag_writer import write_bag
    ev = np.zeros(2000, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(2000) * 50_000
    ev["x"] = np.arange(2000) % 128
    bag = write_bag(tmp_path / "bag", events=ev, width=128, height=128, encoding="mono",
                    packet_ns=10_000_000, storage="mcap")
    storage = next(Path(bag).glob("*.mcap"))
    os.truncate(storage, storage.stat().st_size // 2)
    return Path(bag)


def test_play_non_bag_and_truncated_bag(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n")
    _one_error_line(edge_vlm("play", str(txt)), "not a bag")
    (tmp_path / "dir").mkdir()
    _one_error_line(edge_vlm("play", str(tmp_path / "dir")), "cannot open bag")
    _one_error_line(edge_vlm("play", "--rate", "20", str(_truncated_bag(tmp_path))),
                    "cannot open bag")


def test_calibrate_missing_checkpoint(tmp_path):
    _one_error_line(edge_vlm("calibrate", str(tmp_path / "none.pt")), "checkpoint not found")


def test_node_missing_params_file(tmp_path):
    exe = INSTALL / "sttf_perception" / "lib" / "sttf_perception" / "sttf_perception"
    r = _run([str(exe), "--ros-args", "--params-file", str(tmp_path / "none.yaml")])
    assert r.returncode == 2
    assert _one_error_line(r).startswith("[sttf_perception] error: params file not found")


@pytest.mark.parametrize("args, says", [
    (["--clip-s", "-1"], "--clip-s must be > 0"),
    (["--clip-s", "0"], "--clip-s must be > 0"),
    (["--gap-s", "-0.5"], "--gap-s must be >= 0"),
    (["--packet-ms", "0"], "--packet-ms must be in (0, 4000]"),
])
def test_synth_bad_options(tmp_path, args, says):
    _one_error_line(edge_vlm("synth", "--out", str(tmp_path / "s"), *args), says)
    assert not (tmp_path / "s").exists()          # nothing simulated or written


def test_synth_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_error_line(edge_vlm("synth", "--out", str(blocker / "out")), "Not a directory")


def test_stats_empty_or_unrelated_txt(tmp_path):
    for name, text in (("empty.txt", ""), ("size.txt", "640 480\n"), ("words.txt", "a b c\n"),
                       ("notes.txt", "hello world, this is not a recording\n")):
        (tmp_path / name).write_text(text)
        _one_error_line(edge_vlm("stats", str(tmp_path / name)), "events.txt")


def test_convert_onto_existing_output_suggests_the_option(tmp_path):
    from edge_vlm.io.formats.rpg import write_rpg
    ev = np.zeros(10, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(10) * 1000
    write_rpg(tmp_path / "events.txt", ev, 128, 128)
    (tmp_path / "out").mkdir()
    line = _one_error_line(edge_vlm("convert", str(tmp_path / "events.txt"),
                                    str(tmp_path / "out")))
    assert "pass --overwrite" in line and "overwrite=True" not in line
    r = edge_vlm("convert", str(tmp_path / "events.txt"), str(tmp_path / "out"), "--overwrite")
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------ EventPacket sensor size
def test_event_packet_with_huge_sensor_size_is_rejected():
    from edge_vlm.stream.binner import FrameBinner
    from edge_vlm.stream.intake import PacketIntake
    intake = PacketIntake(FrameBinner(33_333_333))
    side = 2**32 - 1
    for seq, enc in enumerate(("mono", "evt3", "evt2")):
        res = intake.push(enc, b"\0" * 8, side, side, 0, seq, tag=enc)
        assert not res.accepted and "invalid sensor size" in res.rejected[0].reason
    assert intake.counters.rejected == 3
    res = intake.push("mono", b"", 65536, 65536, 0, 3, tag="ok")     # the largest uint16 grid
    assert res.accepted and intake.counters.rejected == 3


# ------------------------------------------------------------------ corrupt AEDAT 4.0
def _aedat4_header(tmp_path: Path) -> bytes:
    """Magic + header of a valid AEDAT 4.0 file (its first packet starts after it)."""
    from edge_vlm.io.formats.aedat4 import write_aedat4
    ev = np.zeros(50, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(50) * 1000
    write_aedat4(tmp_path / "ok.aedat4", ev, 128, 128)
    data = (tmp_path / "ok.aedat4").read_bytes()
    return data[:18 + struct.unpack_from("<i", data, 14)[0]]


#: runs argv[2:] and writes its peak RSS (KiB, it and its waited-for children) to argv[1]: a
#: fresh small process measures, since a child spawned by this (large) test process inherits
#: its peak RSS (Linux keeps the high-water mark of the memory a process had before exec)
_MEASURE = ("import os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def _run_measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd``; its result and the peak RSS (MB) of it and its waited-for children."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = os.path.join(tmp, "maxrss")
        r = subprocess.run([sys.executable, "-c", _MEASURE, rss_file, *cmd],
                           capture_output=True, text=True, env=_env())
        with open(rss_file) as fh:
            rss_kib = int(fh.read())
    return subprocess.CompletedProcess(cmd, r.returncode, r.stdout, r.stderr), rss_kib / 1024


@pytest.mark.parametrize("claim", ["header", "packet"])
def test_corrupt_aedat4_bounded_memory(tmp_path, claim):
    """A 5 KB file whose sizes claim GBs: one error line, the process tree stays small
    (dv_processing used to allocate what the header claimed: 3.6 GB)."""
    head = _aedat4_header(tmp_path)
    garbage = np.random.default_rng(0).bytes(5000)
    if claim == "header":
        data = head[:14] + struct.pack("<I", 0xE0000000) + head[18:] + garbage
    else:
        data = head + struct.pack("<ii", 0, 0x7FFFFFF0) + garbage
    bad = tmp_path / "bad.aedat4"
    bad.write_bytes(data)
    for cmd in (["stats", str(bad)], ["convert", str(bad), str(tmp_path / "out")]):
        r, rss_mb = _run_measured([*EDGE_VLM, *cmd])
        _one_error_line(r, "AEDAT 4.0")
        assert rss_mb < 600, f"edge-vlm {cmd[0]}: peak RSS {rss_mb:.0f} MB"


def test_aedat4_reader_process_has_an_address_space_limit(tmp_path):
    """Past the layout check (disabled here), dv_processing's allocation fails under the child's
    RLIMIT_AS: a clean EventDecodeError, no GBs."""
    head = _aedat4_header(tmp_path)
    bad = tmp_path / "bad.aedat4"
    bad.write_bytes(head[:14] + struct.pack("<I", 0xE0000000) + head[18:] + b"\0" * 4000)
    code = ("import sys\nimport edge_vlm.io.formats.aedat4 as a\na.check_layout = lambda p: None\n"
            "from edge_vlm.events import EventDecodeError\ntry:\n    a.read_aedat4(sys.argv[1])\n"
            "except EventDecodeError as exc:\n    print(exc)\n    sys.exit(7)\n")
    r, rss_mb = _run_measured([sys.executable, "-c", code, str(bad)])
    assert r.returncode == 7, r.stderr[-2000:]
    assert "Stacktrace" not in r.stdout and len(r.stdout.strip().splitlines()) == 1
    assert rss_mb < 600, rss_mb


def test_aedat4_layout_check_accepts_valid_files(tmp_path):
    from edge_vlm.io.formats.aedat4 import check_layout, read_aedat4, write_aedat4
    ev = np.zeros(5000, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(5000) * 100
    ev["x"], ev["y"] = np.arange(5000) % 346, np.arange(5000) % 260
    write_aedat4(tmp_path / "many.aedat4", ev, 346, 260, batch=500)     # several packets
    check_layout(str(tmp_path / "many.aedat4"))
    assert len(read_aedat4(tmp_path / "many.aedat4")[0]) == 5000
    data = (tmp_path / "many.aedat4").read_bytes()
    (tmp_path / "cut.aedat4").write_bytes(data[:len(data) // 2])
    with pytest.raises(EventDecodeError):
        check_layout(str(tmp_path / "cut.aedat4"))


# ------------------------------------------------------------------ package manifests
#: import name -> rosdep key (rosdistro's rosdep/python.yaml, else rosdep/edge_vlm.yaml)
ROSDEP_KEYS = {
    "numpy": "python3-numpy", "yaml": "python3-yaml", "torch": "python3-torch",
    "cv2": "python3-opencv", "matplotlib": "python3-matplotlib", "PIL": "python3-pil",
    "tqdm": "python3-tqdm", "rosbags": "python3-rosbags-pip",
    "pycocoevalcap": "python3-pycocoevalcap-pip", "dv_processing": "python3-dv-processing-pip",
}
#: imports no key installs (README "Dependencies"): Prophesee's SDK, camera_metavision only
NO_KEY = {"metavision_core"}
#: packages whose nodes load the model
MODEL_NODES = ("sttf_perception", "anc_router", "vlm_captioner")


def _imports(pkg_dir: Path) -> set[str]:
    """Top-level modules imported by the package's Python code (setup.py and tests aside)."""
    mods: set[str] = set()
    for f in pkg_dir.rglob("*.py"):
        if f.name == "setup.py" or "test" in f.relative_to(pkg_dir).parts[:-1]:
            continue
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Import):
                mods |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                mods.add(n.module.split(".")[0])
    return mods


def _declared(pkg_dir: Path) -> set[str]:
    root = ET.parse(pkg_dir / "package.xml").getroot()
    return {e.text.strip() for e in root if e.tag in ("depend", "exec_depend") and e.text}


def test_manifests_declare_every_third_party_import():
    workspace = {p.name for p in SRC.iterdir() if (p / "package.xml").is_file()}
    assert {"edge_vlm", "edge_vlm_tools", *MODEL_NODES} <= workspace
    missing = {}
    for name in sorted(workspace):
        third_party = {m for m in _imports(SRC / name)
                       if m not in sys.stdlib_module_names and m != "__future__"
                       and m not in workspace and m not in NO_KEY}
        keys = {ROSDEP_KEYS.get(m, m) for m in third_party}   # a ROS package: its own name
        lacking = sorted(keys - _declared(SRC / name))
        if lacking:
            missing[name] = lacking
    assert not missing, f"package.xml lacks these keys: {missing}"
    for name in MODEL_NODES:
        assert "python3-torch" in _declared(SRC / name), name


def test_rosdep_file_defines_the_keys_rosdistro_lacks():
    import yaml
    doc = yaml.safe_load((ROOT / "rosdep" / "edge_vlm.yaml").read_text())
    assert set(doc) == {"python3-dv-processing-pip", "python3-pycocoevalcap-pip",
                        "python3-rosbags-image-pip"}
    for key, rule in doc.items():
        assert rule["ubuntu"]["pip"]["packages"], key
    readme = (ROOT / "README.md").read_text()
    assert "## Dependencies" in readme and all(k in readme for k in doc)
