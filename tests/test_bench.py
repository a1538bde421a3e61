"""Smoke tests of the benchmarks (edge_vlm.bench, `edge-vlm bench`) on tiny inputs.

Only structure and sanity (keys present, numbers positive, encoders round-trip);
speed targets live in docs/benchmarks.md, never in tests.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from edge_vlm.bench import (common, decode, e2e, op_profile, recordings, report, streams, sttf,
                            sttf_timing)
from edge_vlm.bench.anc import SWEEP, bench_anc
from edge_vlm.cli import main
from edge_vlm.io.codecs import Evt3Decoder, make_decoder
from edge_vlm.events import concat_events, make_events
from edge_vlm.inference import native_convs, native_decoder, native_stages, native_vit


def _events(n=3000, seed=0, rate_hz=200_000, t0_ns=5_000_000):
    rng = np.random.default_rng(seed)
    t = t0_ns + np.cumsum(rng.integers(0, int(2e9 / rate_hz), n))
    return make_events(t, rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n))


def _positive(d: dict, keys) -> None:
    for k in keys:
        assert k in d, k
        assert d[k] is not None and d[k] > 0, (k, d[k])


def test_encode_evt3_round_trip_any_packets():
    ev = _events()
    words, end = streams.encode_evt3(ev)
    assert words.dtype == np.dtype("<u2") and end[-1] == words.size and len(end) == len(ev)
    ref = ev.copy()
    ref["t"] = ref["t"] // 1000 * 1000           # EVT 3.0 has microsecond resolution
    got = Evt3Decoder(128, 128).decode(words.tobytes())
    np.testing.assert_array_equal(got, ref)
    pk = streams.packetize_evt3(ev)
    assert all(w == 128 and h == 128 for _, w, h, _ in pk)
    dec = Evt3Decoder()
    np.testing.assert_array_equal(
        concat_events([dec.decode(p[0], p[1], p[2], p[3]) for p in pk]), ref)
    with pytest.raises(ValueError):
        streams.encode_evt3(ev[::-1])


def test_packetize_mono_round_trip_and_compress():
    ev = _events()
    pk = streams.packetize_mono(ev)
    starts = [tb for *_, tb in pk]
    assert starts == sorted(starts) and all(s % streams.PACKET_NS == 0 for s in starts)
    dec = make_decoder("mono")
    np.testing.assert_array_equal(concat_events([dec.decode(*p) for p in pk]), ev)
    fast = streams.compress_time(ev, 4)
    assert len(fast) == len(ev) and bool(np.all(np.diff(fast["t"]) >= 0))
    assert int(fast["t"][-1] - fast["t"][0]) <= int(ev["t"][-1] - ev["t"][0]) // 4 + 1


def test_decode_bin_counts_events_and_frames():
    ev = _events()
    for enc, pk in (("mono", streams.packetize_mono(ev)), ("evt3", streams.packetize_evt3(ev))):
        n_ev, n_fr = decode.decode_bin(pk, enc)
        assert n_ev == len(ev) and n_fr >= 1
        assert decode.decode_bin_per_packet(pk, enc) == (n_ev, n_fr)
        fig = decode.stream_figures(pk, enc, repeats=1, batch=8)
        _positive(fig, ("mev_per_s", "decode_only_mev_per_s", "decode_us_per_packet", "events",
                        "packets", "decode_only_batched8_mev_per_s"))


def test_bench_decode_quick():
    r = decode.bench_decode(repeats=1, quick=True)
    assert r["decode_backend"] in ("native", "numpy")
    _positive(r, ("mono_mev_per_s", "evt3_sim_mev_per_s", "mono_dense_mev_per_s",
                  "evt3_sim_dense_mev_per_s"))
    for name, fig in r["real"].items():        # real bags when ../shared/data/real is present
        assert fig["encoding"] == "evt3" and fig["events"] > 0, name
    if r["real"]:
        _positive(r, ("evt3_mev_per_s", "evt3_decode_us_per_packet"))


def test_bench_sttf_quick():
    r = sttf.bench_sttf(threads=1, repeats=1, quick=True)
    _positive(r, ("frames", "encoder_ms_first_sparse", "encoder_ms_first_dense",
                  "encoder_ms_steady_sparse", "encoder_ms_steady_dense", "speedup_steady",
                  "speedup_limit", "active_token_fraction", "flops_ratio", "flops_dense_mean"))
    assert 0 < r["active_token_fraction"] <= 1 and r["speedup_limit"] >= 1
    assert 0 < r["flops_ratio"] <= 1
    for k in ("caption_agreement", "label_agreement", "accuracy_dense", "accuracy_sparse"):
        assert r[k] is not None and 0 <= r[k] <= 1, k
    # the sparse ViT's approximation (stale context of reused tokens) is measured, not zero
    assert r["token_deviation_max"] is not None and np.isfinite(r["token_deviation_max"])
    curve = r["speedup_by_active_tokens"]
    assert [c["tokens"] for c in curve] == [8, 16, 32, 64, 128]
    assert all(c["speedup"] > 0 for c in curve)
    # both encoder backends timed on the same frames; the speedup divides the faster dense one
    eb = r["encoder_backends"]
    assert r["encoder_backend"] in eb and "torch" in eb
    # the sparse backend the per-CPU choice runs (native wherever it is measured faster)
    assert r["encoder_backend"] == (r["backend_choice"]["sparse"] if native_vit.load() is not None
                                    else "torch")
    assert r["convs_backend"] == native_convs.backend()     # the small conv nets' path
    assert r["decoder_backend"] == native_decoder.backend()     # the decoder pass's path
    assert r["stages_backend"] == native_stages.backend()       # memory update and fusion
    # the run's own spread: the two ratios per timing pass (repeats=1 here: one pass)
    for k in ("encoder_efficiency_passes", "speedup_total_steady_passes"):
        sp = r[k]
        assert len(sp["values"]) == 1 and sp["min"] == sp["max"] == sp["values"][0] > 0, k
    best = min(v["dense_ms_steady"] for v in eb.values())
    assert r["dense_backend"] in eb and eb[r["dense_backend"]]["dense_ms_steady"] == best
    assert r["encoder_ms_steady_dense"] == pytest.approx(best)
    assert r["encoder_ms_steady_sparse"] == pytest.approx(
        eb[r["encoder_backend"]]["sparse_ms_steady"])
    assert r["speedup_steady"] == pytest.approx(best / r["encoder_ms_steady_sparse"])
    assert all(c["dense_ms"] == pytest.approx(min(c.get("dense_ms_native", c["dense_ms"]),
                                                   c.get("dense_ms_torch", c["dense_ms"])))
               for c in curve)
    # where each ms goes: every stage of FrameResult.latency_ms, sparse and dense
    for mode in ("sparse", "dense"):
        stages = r[f"stage_ms_steady_{mode}"]
        assert {"mask", "memory", "encoder", "fusion", "decoder", "total"} <= set(stages)
        assert all(v >= 0 for v in stages.values())
        assert stages["total"] == pytest.approx(r[f"total_ms_steady_{mode}"])
        assert stages["encoder"] <= stages["total"]
    fit = r["sparse_cost_fit"]
    assert fit is None or (fit["frames"] >= 3 and fit["dense_per_token_ms"] > 0
                           and fit["tokens_mean"] > 0)
    # ... and inside the stages, per operator (the frame scope's own time among the rows)
    prof = r["op_profile"]
    assert prof["frames"] == r["timing_frames"] - 1 and prof["ops"]
    own = [x["self_ms_per_frame"] for x in prof["ops"]]
    assert own == sorted(own, reverse=True) or prof["ops"][-1]["op"] == op_profile.FRAME_SCOPE
    assert any(x["op"] == op_profile.FRAME_SCOPE for x in prof["ops"])
    assert any(x["op"].startswith("aten::") and x["calls_per_frame"] > 0 for x in prof["ops"])
    assert sum(own) + prof["other_ops_ms_per_frame"] == pytest.approx(prof["self_ms_per_frame"])
    assert prof["self_ms_per_frame"] <= prof["profiled_ms_per_frame"] * 1.05
    assert any(line.startswith("| aten::") for line in report._op_table(prof))
    # both input modes on the same recording (with RGB frames), the same labelled frames
    modes = r["input_modes"]
    assert modes["events_only"]["frames"] == modes["rgb_events"]["frames"] > 0
    assert modes["rgb_events"]["clips"] == 2
    for m in ("events_only", "rgb_events"):
        assert 0 <= modes[m]["accuracy"] <= 1 and 0 <= modes[m]["segment_accuracy"] <= 1
    assert r["accuracy_sparse_rgb_events"] == modes["rgb_events"]["accuracy"]
    # per-frame accuracy split by clip phase: every scored frame in exactly one phase
    ph = r["accuracy_by_clip_phase"]
    assert list(ph) == ["blend_in", "full", "blend_out"]
    assert sum(v["frames"] for v in ph.values()) == r["frames_scored"]
    assert all(v["frames"] > 0 and 0 <= v["dense"] <= 1 and 0 <= v["sparse"] <= 1
               for v in ph.values())


def test_clip_phase_marks_the_simulated_blends():
    from types import SimpleNamespace

    clip = SimpleNamespace(t_start_ns=1_000_000_000, t_end_ns=2_500_000_000)   # 0.2 s ramps
    ts = (1_100_000_000, 1_200_000_000, 1_210_000_000, 2_290_000_000, 2_310_000_000, 2_500_000_000)
    assert [recordings.clip_phase(clip, t) for t in ts] == [
        "blend_in", "blend_in", "full", "full", "blend_out", "blend_out"]


def test_bench_e2e_skips_without_ros(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))           # no edge_vlm_demo on PATH
    r = e2e.bench_e2e(work_dir=str(tmp_path))
    assert "skipped" in r and e2e.DEMO_EXECUTABLE in r["skipped"]
    assert not list(tmp_path.iterdir())                 # nothing written


def test_bench_e2e_quick(tmp_path):
    """The node graph on a tiny simulated bag, through the workspace's demo tool."""
    if shutil.which(e2e.DEMO_EXECUTABLE) is None:
        pytest.skip("ROS 2 workspace not sourced (source env.sh)")
    logged = []
    r = e2e.bench_e2e(quick=True, work_dir=str(tmp_path), log=logged.append)
    assert r["frames_processed"] > 0 and r["frames_expected_approx"] > 0
    assert r["player_rc"] == 0 and all(rc == 0 for rc in r["exit_codes"].values())
    assert r["caption_latency_ms_p50"] > 0 and r["frame_latency_ms_p95"] > 0
    assert r["backlog_grows"] in (True, False, None)
    assert set(r["caption_latency_trend"]) == {"slope_per_s", "first_quarter_p50",
                                               "last_quarter_p50"}
    assert "packets" in r["captioner_counters"] and r["packet_ms"] == 10.0
    runs = r["frame_latency_ms_p95_runs"]            # quick: one graph run
    assert runs["runs"] == 1 and runs["values"] == [r["frame_latency_ms_p95"]]
    assert runs["min"] == runs["max"] == runs["median"] == r["frame_latency_ms_p95"]
    assert any(line.startswith("demo:") for line in logged)
    assert os.path.isfile(os.path.join(r["out_dir"], "records.jsonl"))


def test_latency_runs_median_and_spread(monkeypatch, tmp_path):
    r = e2e.latency_runs([30.0, 20.0, 25.0])
    assert (r["median"], r["min"], r["max"], r["median_run"]) == (25.0, 20.0, 30.0, 2)
    assert e2e.latency_runs([20.0, None, 30.0, 10.0])["median"] == 20.0   # lower median, a run
    assert e2e.latency_runs([None])["median"] is None
    # bench_e2e: the median run's figures are the headline ones, every run's value kept
    p95 = iter([31.0, 22.0, 27.0])
    monkeypatch.setattr(e2e, "graph_bench_setup",
                        lambda *a: e2e.GraphBenchSetup("demo", tmp_path, {}))
    monkeypatch.setattr(e2e, "_graph_run", lambda exe, bag, out_dir, *a: {
        "out_dir": out_dir, "frame_latency_ms_p95": next(p95), "graph_rss_mb": 1.0,
        "wall_s": 1.0})
    out = e2e.bench_e2e(bag="bag", work_dir=str(tmp_path), one_ms=False)
    assert out["frame_latency_ms_p95"] == 27.0 and out["out_dir"].endswith("e2e_last_run3")
    assert out["frame_latency_ms_p95_runs"]["values"] == [31.0, 22.0, 27.0]
    assert (out["frame_latency_ms_p95_runs"]["min"], out["frame_latency_ms_p95_runs"]["max"]) \
        == (22.0, 31.0)
    text = report.markdown({"details": {"e2e": out}}, "cmd")
    assert "median 27 of 3 runs, min 22, max 31" in text


def test_trend_and_markdown(tmp_path):
    tr = e2e.trend(list(range(20)), [10.0 + 2 * i for i in range(20)])
    assert tr.slope_per_s == pytest.approx(2.0) and tr.last_quarter_p50 > tr.first_quarter_p50
    assert e2e.trend([0, 1], [1, 2]).slope_per_s is None
    res = {k: 1.5 for k in report.SUMMARY_KEYS}
    res.update(timestamp="2026-01-01T00:00:00+00:00", machine=common.machine_info(1),
               bench_wall_s=1.0, details={"e2e": {"skipped": "no ROS"}})
    path = report.write_markdown(res, tmp_path / "b.md", "edge-vlm bench all --json")
    text = open(path).read()
    assert "`edge-vlm bench all --json`" in text and "Skipped: no ROS" in text
    for k in report.SUMMARY_KEYS:
        assert f"`{k}`" in text
    js = json.loads((tmp_path / "b.json").read_text())
    assert js["command"] == "edge-vlm bench all --json" and js["bench_wall_s"] == 1.0
    m = common.machine_info(2)
    assert m["threads"] == 2 and m["cores"] and "cpu" in m and "timestamp" in m


def test_bench_all_flattens_the_parts(monkeypatch):
    """bench_all: each summary figure from the first part holding it, the parts under details."""
    from edge_vlm.bench import all as bench_all_mod

    calls = []

    def part(name, figures):
        def run(**kw):
            calls.append((name, kw))
            return dict(figures)
        return run

    monkeypatch.setattr(bench_all_mod, "bench_decode", part("decode", {"mono_mev_per_s": 1.0}))
    monkeypatch.setattr(bench_all_mod, "bench_sttf", part("sttf", {
        "accuracy_dense": 0.5, "model": {"checkpoint": None}}))
    monkeypatch.setattr(bench_all_mod, "bench_anc", part("anc", {
        "accuracy_dense": 0.9, "budget_sweep": [{"budget": 1.0}]}))
    monkeypatch.setattr(bench_all_mod, "bench_peers", part("peers", {"peers": [{"method": "x"}]}))
    monkeypatch.setattr(bench_all_mod, "bench_e2e", part("e2e", {"backlog_grows": False}))
    monkeypatch.setattr(bench_all_mod, "bench_streams", part("streams", {
        "streams_realtime_2cores": 2}))
    monkeypatch.setattr(bench_all_mod, "bench_multihost", part("multihost", {
        "captions_per_frame": 0.97, "caption_latency_ms_p95": 99.0, "namespaces_left": []}))
    r = bench_all_mod.bench_all(quick=True, threads=2)
    assert [c[0] for c in calls] == ["decode", "sttf", "anc", "peers", "e2e", "streams",
                                     "multihost"]
    assert r["streams_realtime_2cores"] == 2 and r["multihost_namespaces_left"] == []
    # the multi-host latency is its own key, never the single-host graph's
    assert r["multihost_caption_latency_ms_p95"] == 99.0 and r["caption_latency_ms_p95"] is None
    assert list(r)[:2] == ["timestamp", "machine"] and r["machine"]["threads"] == 2
    assert list(r)[2:2 + len(report.SUMMARY_KEYS)] == list(report.SUMMARY_KEYS)
    assert r["mono_mev_per_s"] == 1.0 and r["accuracy_dense"] == 0.5
    assert r["backlog_grows"] is False
    assert r["speedup_steady"] is None
    assert r["budget_sweep"] == [{"budget": 1.0}] and r["checkpoint"] == {"checkpoint": None}
    assert list(r)[-3:] == ["checkpoint", "details", "bench_wall_s"]
    assert list(r["details"]) == ["decode", "sttf", "anc", "peers", "e2e", "streams",
                                  "multihost"]
    assert r["peers"] == [{"method": "x"}]
    calls.clear()
    r = bench_all_mod.bench_all(quick=True, e2e=False, anc_part=False, peers_part=False)
    assert [c[0] for c in calls] == ["decode", "sttf"]
    assert (r["details"]["anc"] == r["details"]["e2e"] == r["details"]["streams"]
            == r["details"]["multihost"] == {"skipped": "disabled"})
    assert r["details"]["peers"] == {"skipped": "disabled"} and r["peers"] is None


def test_cli_decode_json(capsys, tmp_path):
    assert main(["bench", "decode", "--json", "--quick", "--repeats", "1", "--out",
                 str(tmp_path / "x.md")]) == 0
    out = json.loads(capsys.readouterr().out)
    _positive(out, ("mono_mev_per_s", "evt3_sim_mev_per_s"))
    assert out["machine"]["cores"] and "timestamp" in out
    assert not (tmp_path / "x.md").exists()          # only `all` writes the report
    with pytest.raises(SystemExit):
        main(["bench", "nope"])


def test_shutdown_counters(tmp_path):
    log = tmp_path / "vlm_captioner.log"
    log.write_text("[INFO] ready: x\n[INFO] [1.0] [vlm_captioner]: shutdown: packets=10 dropped=3 "
                   "pending=0 mode=abc\n")
    assert e2e.shutdown_counters(str(log)) == {"packets": 10, "dropped": 3, "pending": 0}
    assert e2e.shutdown_counters(str(tmp_path / "missing.log")) == {}


def test_bench_anc_quick(tmp_path):
    """The ANC benchmark's keys, on a tiny joint checkpoint (figures not meaningful)."""
    import torch

    from edge_vlm.model.anc import AncModel
    from edge_vlm.model.config import ModelConfig
    from edge_vlm.model.sttf import CaptionModel
    from edge_vlm.model.checkpoint import save_checkpoint
    from edge_vlm.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    vocab = Tokenizer.build(["a person waves"]).vocab
    small = CaptionModel(ModelConfig(dim=32, heads=2, depth=2, vocab=vocab))
    ck = str(tmp_path / "joint.pt")
    save_checkpoint(ck, AncModel.grow_from(small))
    r = bench_anc(checkpoint=ck, quick=True, plot=str(tmp_path / "sweep.png"))
    for k in ("flops_reduction_low_motion", "walltime_reduction_low_motion",
              "accuracy_medium_high_motion", "accuracy_anc_high_motion",
              "router_cost_fraction_of_tiny", "budget_sweep"):
        assert k in r
    assert [b["budget"] for b in r["budget_sweep"]] == list(SWEEP) and len(SWEEP) >= 5
    assert all(b["gflops"] > 0 for b in r["budget_sweep"])
    assert set(r["ablation"]) == {"dense_medium", "sttf_only", "anc_only", "both"}
    assert r["ablation"]["sttf_only"]["gflops"] < r["ablation"]["dense_medium"]["gflops"]
    assert 0 < r["router_cost_fraction_of_tiny"] < 0.05
    assert os.path.getsize(tmp_path / "sweep.png") > 1000
    with pytest.raises(ValueError, match="STTF-only"):
        ck2 = str(tmp_path / "sttf.pt")
        save_checkpoint(ck2, small)
        bench_anc(checkpoint=ck2, quick=True)


def test_sparse_cost_fit_recovers_a_line():
    """fixed + per-token cost of sparse frames: refreshes and the first frame are left out."""
    tokens = np.array([256, 10, 20, 30, 256, 40, 12], dtype=float)
    refreshed = np.array([True, False, False, False, True, False, False])
    sparse = 0.5 + 0.08 * tokens
    sparse[refreshed] = 25.0                     # off the line: must not enter the fit
    dense = np.full(len(tokens), 25.6)
    fit = sttf_timing.cost_fit(sparse, dense, tokens, refreshed, 256)
    assert fit["frames"] == 5
    assert fit["fixed_ms"] == pytest.approx(0.5) and fit["per_token_ms"] == pytest.approx(0.08)
    assert fit["dense_per_token_ms"] == pytest.approx(0.1)
    assert fit["tokens_mean"] == pytest.approx(np.mean([10, 20, 30, 40, 12]))
    assert sttf_timing.cost_fit(sparse, dense, np.full(7, 16.0), refreshed, 256) is None


def test_stage_medians_per_frame_and_table():
    passes = [[{"mask": 1.0, "encoder": 4.0, "total": 6.0}, {"mask": 3.0, "total": 9.0}],
              [{"mask": 2.0, "encoder": 5.0, "total": 7.0}, {"mask": 5.0, "total": 11.0}],
              [{"mask": 9.0, "encoder": 6.0, "total": 8.0}, {"mask": 4.0, "total": 10.0}]]
    med = sttf_timing.stage_medians(passes)
    assert list(med) == ["mask", "total"]        # a stage some frame lacks is left out
    assert med["mask"].tolist() == [2.0, 4.0] and med["total"].tolist() == [7.0, 10.0]
    assert sttf_timing.stage_medians([]) == {}
    lines = report._stage_table({"mask": 2.0, "total": 8.0}, {"mask": 2.0, "total": 32.0})
    assert any(line.startswith("| total | 8") and "| 4" in line for line in lines)


def test_pass_ratios_pair_each_pass_and_the_report_prints_the_spread():
    dense = [[9.0, 10.0, 10.0], [9.0, 12.0, 12.0], [9.0, 8.0, 8.0]]
    sparse = [[9.0, 2.0, 2.0], [9.0, 2.0, 2.0], [9.0, 4.0, 4.0]]
    # the first frame (dense in both) is left out; pass r divides by pass r
    assert sttf_timing.pass_ratios(dense, sparse) == [5.0, 6.0, 2.0]
    assert sttf_timing.pass_ratios([[1.0]], [[1.0]]) == []      # no steady frame: no ratio
    st = {"speedup_total_steady_passes": {"values": [5.0, 6.0, 2.0], "min": 2.0, "max": 6.0}}
    lines = report._sttf_section(st)
    assert any("`speedup_total_steady_passes`" in line and "2.000 / 6.000" in line
               and "5.000, 6.000, 2.000" in line for line in lines)
    assert not any("encoder_efficiency_passes" in line for line in lines)   # absent: no row


def test_bench_peers_quick(tmp_path):
    """The peers part (quick profile, a tiny joint checkpoint: figures not meaningful): every
    row has the declared fields, 3+ operating points per peer method, the table and plot."""
    import torch

    from edge_vlm.bench.peers import ROW_FIELDS, bench_peers
    from edge_vlm.model.anc import AncModel
    from edge_vlm.model.checkpoint import save_checkpoint
    from edge_vlm.model.config import ModelConfig
    from edge_vlm.model.sttf import CaptionModel
    from edge_vlm.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    vocab = Tokenizer.build(["a person waves"]).vocab
    ck = str(tmp_path / "joint.pt")
    save_checkpoint(ck, AncModel.grow_from(CaptionModel(ModelConfig(dim=32, heads=2, depth=2,
                                                                    vocab=vocab))))
    r = bench_peers(checkpoint=ck, quick=True, plot=str(tmp_path / "peers.png"))
    rows = r["peers"]
    for row in rows:
        assert set(ROW_FIELDS) <= set(row), row
        assert row["gflops"] > 0 and row["frame_ms"] > 0 and row["encoder_ms"] > 0
        assert row["accuracy"] is None or 0 <= row["accuracy"] <= 1
    methods = [row["method"] for row in rows]
    assert methods.count("dense") == 1 and methods.count("sttf_anc") == 1
    for m in ("tome", "topk", "sttf"):
        assert methods.count(m) >= 3, m
    by = {(row["method"], row["setting"]): row for row in rows}
    enc = {k: row["encoder_gflops"] for k, row in by.items()}
    assert enc[("tome", "r=32")] < enc[("tome", "r=8")] < enc[("dense", "")]
    assert enc[("topk", "k=16")] < enc[("topk", "k=64")] < enc[("dense", "")]
    assert by[("dense", "")]["token_error_dense"] == 0.0
    assert by[("tome", "r=0")]["token_error_dense"] < 1e-5      # the dense pass, ToMe's code
    assert by[("tome", "r=0")]["label_agreement_dense"] == 1.0
    assert by[("tome", "r=32")]["token_error_dense"] > 1e-3
    assert r["target"]["met"] in (True, False) and r["verdict"]
    assert os.path.getsize(tmp_path / "peers.png") > 1000
    text = report.markdown({"details": {"peers": r}}, "edge-vlm bench all")
    assert "## Peers on the same frames" in text and "| tome | r=8 |" in text
