"""edge-vlm paper-table: the claims table is generated from measured JSON, never typed numbers."""
import json
import re

import pytest

from edge_vlm.evaluation.paper import CLAIMS, NOT_MEASURED, load_bench, lookup, render

BENCH = {"timestamp": "2026-01-01T00:00:00+00:00", "accuracy_dense": 0.625, "accuracy_sparse": 0.6,
         "active_token_fraction": 0.1234, "active_token_fraction_low_motion": 0.0871,
         "speedup_steady": 2.5,
         "speedup_limit": 8.104, "caption_agreement": 1.0, "flops_ratio": 0.6025,
         "flops_reduction_low_motion": 0.777, "params_tiny": 2013000,
         "details": {"sttf": {"speedup_total_steady": 1.055}}}
EVAL = {"accuracy": {"frame": {"accuracy": 0.5303}, "segment": {"accuracy": 0.6818}},
        "captions": {"CIDEr-D": 0.5322}, "active_fraction": {"mean": 0.1694},
        "flops": {"executed_mean": 3.881e7, "ratio": 0.636},
        "checkpoint": "/x/captioner.pt", "source": {"path": "data/demo/bag"}}


def _rows(md):
    rows = [line for line in md.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(rows) == len(CLAIMS)
    return rows


def _measured(row):
    """{label: value text} of the 'measured here' cell."""
    cell = row.split(" | ")[3]
    return dict(re.findall(r"([^<>]+?): \*\*([^*]+)\*\*",
                           cell.replace("<br>", "\n").replace("\n", "<>")))


def test_numbers_in_the_table_equal_the_json_values():
    md = render(BENCH, EVAL, bench_path="b.json", eval_path="e.json")
    got = {}
    for row in _rows(md):
        got.update(_measured(row))
    for c in CLAIMS:
        for m in c.measures:
            src = BENCH if m.source == "bench" else EVAL
            v = lookup(src, m.key, m.source)
            text = got[m.label]
            if m.over:
                assert float(text) == pytest.approx(BENCH[m.key] / BENCH[m.over], rel=1e-3)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                assert float(text) == pytest.approx(v, rel=5e-4), m.label   # 4 significant digits
            else:
                assert text == NOT_MEASURED, m.label
    assert got["Tiny branch parameters"] == "2013000"
    # from details.sttf
    assert got["whole frame (encoder + fusion + decoder) dense / sparse"] == "1.055"
    assert got["context: per-frame accuracy, simulated demo bag"] == "0.5303"


def test_missing_keys_and_files_read_not_measured():
    md = render({"accuracy_dense": 0.5}, None)
    rows = _rows(md)
    assert NOT_MEASURED in rows[0] and "0.5" in rows[1]
    anc = _measured(rows[3])
    assert anc["FLOPs saved, low-motion scenes"] == NOT_MEASURED
    assert anc["wall time saved, low-motion scenes"] == NOT_MEASURED
    assert all(v == NOT_MEASURED for v in _measured(rows[4]).values())
    assert "evaluation: none" in md
    # claims that cannot be checked here say so and why
    for row, why in zip(rows[-3:],
                        ("3B VLM weights", "no Jetson or Snapdragon", "not available offline")):
        assert "cannot be checked here" in row and why in row


def test_bench_markdown_is_parsed_robustly(tmp_path):
    md = tmp_path / "benchmarks.md"
    md.write_text("# edge_vlm benchmarks\n\nProduced by `edge-vlm bench all --json` at "
                  "2026-11-21T06:26:38+00:00 (took 80 s).\n\nMachine: AMD EPYC, 2 cores, torch "
                  "threads 1 (load average at the end: 1.08).\n\n| figure | value | what "
                  "|\n|---|---|---|\n| `accuracy_dense` | 0.6 | dense |\n| `backlog_grows` | no | "
                  "x |\n| `mono_dense_mev_per_s` | 1,234 | big |\n| `speedup_limit` | n/a | none "
                  "|\n\n## part\n\n| figure | value |\n|---|---|\n| `accuracy_dense` | 0.1 |\n| "
                  "`refresh_frames` | 21 |\n")
    figs, prov = load_bench(md)
    assert figs == {"accuracy_dense": 0.6, "backlog_grows": False, "mono_dense_mev_per_s": 1234,
                    "speedup_limit": None, "refresh_frames": 21}
    assert prov == {"command": "edge-vlm bench all --json",
                    "timestamp": "2026-11-21T06:26:38+00:00",
                    "machine": "AMD EPYC, 2 cores, torch threads 1"}
    # a fenced json block wins over the tables
    md.write_text(md.read_text() + "\n```json\n" + json.dumps(BENCH) + "\n```\n")
    figs, prov = load_bench(md)
    assert figs["active_token_fraction"] == 0.1234 and prov["timestamp"] == BENCH["timestamp"]
    js = tmp_path / "bench.json"
    js.write_text(json.dumps(BENCH))
    assert load_bench(js)[0] == BENCH
    js.write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_bench(js)
    (tmp_path / "empty.md").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no bench figures"):
        load_bench(tmp_path / "empty.md")


def test_cli_writes_the_table(tmp_path):
    from edge_vlm.cli import main

    b, e = tmp_path / "bench.json", tmp_path / "eval.json"
    out = tmp_path / "docs" / "paper_table.md"
    b.write_text(json.dumps(BENCH))
    e.write_text(json.dumps(EVAL))
    assert main(["paper-table", "--bench", str(b), "--eval", str(e), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Paper claims") and "**0.1234**" in text and "**0.5322**" in text
    assert main(["paper-table", "--bench", str(tmp_path / "none.md"), "--eval", str(e),
                 "--out", str(out)]) == 0 and "bench figures: none" in out.read_text()
    e.write_text("[")
    assert main(["paper-table", "--bench", str(b), "--eval", str(e), "--out", str(out)]) == 2
