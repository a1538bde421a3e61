"""``scripts/bench_cpus.py``: the performance keys of bench runs side by side."""
from __future__ import annotations

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "bench_cpus", os.path.join(ROOT, "scripts", "bench_cpus.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_column_per_run_with_the_cpu_and_nested_keys(tmp_path, capsys):
    a = {"machine": {"cpu_model": "CPU A"}, "timestamp": "t1", "speedup_total_steady": 4.25,
         "anc_budget_monotone": False, "details": {"sttf": {"total_ms_steady_sparse": 6.5}}}
    b = {"machine": {"cpu_model": "CPU B"}, "timestamp": "t2", "speedup_total_steady": 3.0,
         "anc_budget_monotone": True}
    paths = []
    for name, run in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(run))
        paths.append(str(tmp_path / name))
    assert _script().main(paths) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| key | target | CPU A | CPU B |"
    rows = {line.split(" | ")[0].strip("| `"): line for line in out[2:]}
    assert rows["speedup_total_steady"].endswith("| 4.250 | 3.000 |")
    assert rows["anc_budget_monotone"].endswith("| false | true |")
    assert rows["total_ms_steady_sparse"].endswith("| 6.500 | - |")


def test_bad_input_is_one_error_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert _script().main([str(tmp_path / "bad.json")]) == 1
    assert _script().main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err)
