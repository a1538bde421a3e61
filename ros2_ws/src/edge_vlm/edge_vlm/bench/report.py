"""``docs/benchmarks.md`` and ``docs/benchmarks.json``: the figures of
:func:`~edge_vlm.bench.all.bench_all`, the command that produced them and the machine."""
from __future__ import annotations

import json
import os
from pathlib import Path

from edge_vlm.bench.decode import DENSE_FACTOR
from edge_vlm.bench.report_anc import anc_section
from edge_vlm.evaluation.metrics import json_safe
from edge_vlm.report import fmt_value

__all__ = ["SUMMARY_KEYS", "DESCRIPTIONS", "markdown", "write_markdown", "to_json"]

#: the flat figures of :func:`~edge_vlm.bench.all.bench_all` (``edge-vlm bench all --json``),
#: in table order
SUMMARY_KEYS = (
    "mono_mev_per_s", "evt3_mev_per_s", "evt3_sim_mev_per_s", "mono_dense_mev_per_s",
    "evt3_sim_dense_mev_per_s", "evt3_decode_us_per_packet",
    "frame_latency_ms_p95", "caption_latency_ms_p50", "caption_latency_ms_p95", "backlog_grows",
    "frame_latency_ms_p95_1ms_packets", "caption_latency_ms_p95_1ms_packets",
    "frames_dropped_1ms_packets", "graph_rss_mb_multi", "graph_rss_mb_single",
    "accuracy_dense", "accuracy_sparse", "active_token_fraction",
    "active_token_fraction_low_motion",
    "speedup_steady", "speedup_limit", "encoder_efficiency", "speedup_total_steady",
    "flops_ratio", "caption_agreement", "token_deviation_max",
    "encoder_ms_first_sparse", "encoder_ms_first_dense", "encoder_ms_steady_sparse",
    "encoder_ms_steady_dense", "segment_accuracy_dense", "segment_accuracy_sparse",
    "accuracy_sparse_rgb_events",
    "flops_reduction_low_motion", "walltime_reduction_low_motion", "accuracy_medium_high_motion",
    "accuracy_anc_high_motion", "router_cost_fraction_of_tiny", "anc_accuracy_gap_complex",
    "anc_budget_monotone", "anc_accuracy_vs_medium", "anc_flops_reduction",
    "caption_label_consistency", "caption_class_accuracy", "false_gesture_rate_non_gesture",
    "nothing_moves_rate_empty", "ece", "label_switches_per_s_in_gesture", "top_caption_share",
    "peers", "streams_realtime_2cores", "multihost_captions_per_frame",
    "multihost_caption_latency_ms_p95", "multihost_bytes_per_mev",
    "multihost_recovery_s_partition", "multihost_recovery_s_restart",
    "multihost_recovery_s_crash", "multihost_captions_per_s_2mbit", "multihost_namespaces_left",
    "multihost_cameras", "multihost_cross_talk", "multihost_captions_per_s_500kbit",
    "multihost_captions_per_s_500kbit_active", "multihost_gesture_accuracy_500kbit",
    "multihost_gesture_accuracy_500kbit_active", "multihost_link_overhead_bytes_per_s",
    "multihost_recovery_s_rediscovery_restart", "multihost_recovery_s_rediscovery_crash")

#: what each figure of :data:`SUMMARY_KEYS` measures (the report's table)
DESCRIPTIONS = {
    "mono_mev_per_s": "mono decode + bin (FrameBinner), simulated DVS128 stream (~10 kev/s), "
                      "10 ms packets, 1 thread (Mev/s)",
    "evt3_mev_per_s": "evt3 decode + bin, the two real Prophesee bags packet by packet as "
                      "recorded (Mev/s)",
    "evt3_sim_mev_per_s": "evt3 decode + bin, simulated stream encoded as EVT 3.0, 10 ms "
                          "packets (Mev/s)",
    "mono_dense_mev_per_s": f"mono decode + bin, the simulated stream played {DENSE_FACTOR}x "
                            "faster (~200 kev/s, the real 640x480 bag's rate), 10 ms packets "
                            "(Mev/s)",
    "evt3_sim_dense_mev_per_s": f"evt3 decode + bin, the simulated stream played {DENSE_FACTOR}x "
                                "faster, 10 ms packets (Mev/s)",
    "evt3_decode_us_per_packet": "evt3 decode only, real bags: time per packet (us)",
    "frame_latency_ms_p95": "node graph, simulated DVS128 bag (10 ms packets) at 1x: per-frame "
                            "processing (captioner total stage), p95 (ms); the median run of "
                            "`frame_latency_ms_p95_runs` (its values, min, max)",
    "caption_latency_ms_p50": "node graph at 1x: packet -> caption, p50 (ms)",
    "caption_latency_ms_p95": "node graph at 1x: packet -> caption, p95 (ms)",
    "backlog_grows": "node graph at 1x: does packet -> caption latency grow over the run",
    "frame_latency_ms_p95_1ms_packets": "node graph in one process (single_process), the same "
                                        "recording in 1 ms EventPackets (1,000/s, "
                                        "metavision_driver's default) at 1x: per-frame "
                                        "processing, p95 (ms)",
    "caption_latency_ms_p95_1ms_packets": "same run: packet -> caption, p95 (ms)",
    "frames_dropped_1ms_packets": "same run: frames dropped by the captioner's backpressure "
                                  "(packets lost in the e2e section)",
    "graph_rss_mb_multi": "resident memory of the graph, one process per node: sum of the "
                          "node processes' VmRSS at the end of the bag (MB)",
    "graph_rss_mb_single": "same, all three nodes in one process (single_process, 1 ms run; one "
                           "torch, one model load) (MB)",
    "accuracy_dense": "per-frame gesture accuracy, dense encoder (the 3 held-out test subjects x "
                      "3 lightings, events only)",
    "accuracy_sparse": "per-frame gesture accuracy, STTF sparse encoder (same frames)",
    "segment_accuracy_dense": "per-clip gesture accuracy (majority vote of the clip's frames), "
                              "dense encoder",
    "segment_accuracy_sparse": "per-clip gesture accuracy (majority vote of the clip's frames), "
                               "STTF sparse",
    "accuracy_sparse_rgb_events": "per-frame gesture accuracy, STTF sparse, RGB + events input "
                                  "(each test subject under lab light; events only on the same "
                                  "recordings in details.sttf.input_modes)",
    "active_token_fraction": "mean fraction of tokens recomputed per frame (steady state, "
                             "refreshes included)",
    "active_token_fraction_low_motion": "same, frames of low-motion gestures",
    "speedup_steady": "encoder wall time dense / sparse, steady state (frames after the first; "
                      "timing recording); dense = the faster of the native-kernel and PyTorch "
                      "backends",
    "speedup_limit": "total / active tokens on the timing recording (the encoder's ideal "
                     "speedup)",
    "encoder_efficiency": "speedup_steady / speedup_limit: how close the sparse encoder gets to "
                          "its ideal speedup on this CPU (machine.cpu_model, cpu_simd)",
    "speedup_total_steady": "whole frame (change mask, memory, encoder, fusion, heads, caption) "
                            "wall time dense / sparse, steady state, timing recording",
    "streams_realtime_2cores": "simulated 128x128 DVS streams served in real time at once on "
                               "this machine (one single-process graph per camera, own domain "
                               "each; details.streams: rule, per-stream p95 and drops)",
    "multihost_captions_per_frame": "drone + ground in two network namespaces over a veth "
                                    "(docs/deploy.md), uncapped link, default encoding: captions "
                                    "received on the ground / frames replayed",
    "multihost_caption_latency_ms_p95": "same run: packet -> caption p95 (ms)",
    "multihost_bytes_per_mev": "same run: link bytes per million events (both directions)",
    "multihost_recovery_s_partition": "link down 5 s, then up: s from link up to the next "
                                      "caption on the ground",
    "multihost_recovery_s_restart": "ground captioner killed and restarted: s from its restart "
                                    "to its next caption (its start-up included)",
    "multihost_captions_per_s_2mbit": "link capped at 2 Mbit/s (tbf): captions per s on the "
                                      "ground",
    "multihost_namespaces_left": "network namespaces the bench left behind (should be [])",
    "flops_reduction_low_motion": "1 - FLOPs(STTF+ANC) / FLOPs(Medium-only dense), low-motion + "
                                  "static frames (all stages)",
    "walltime_reduction_low_motion": "1 - wall time(STTF+ANC) / wall time(Medium-only dense), "
                                     "same frames",
    "accuracy_medium_high_motion": "per-frame accuracy of Medium-only dense on high-motion "
                                   "frames",
    "accuracy_anc_high_motion": "per-frame accuracy of STTF+ANC on the same frames",
    "router_cost_fraction_of_tiny": "FLOPs of estimator + router / FLOPs of the Tiny branch "
                                    "(dense)",
    "anc_accuracy_gap_complex": "Medium - Tiny per-frame accuracy (both forced, dense) on complex "
                                "frames: fast gestures, two movers, camera shake "
                                "(`details.anc.complex_scenes`)",
    "anc_budget_monotone": "accuracy and GFLOPs both never fall as the budget rises (the sweep)",
    "anc_accuracy_vs_medium": "accuracy of STTF+ANC at budget 1 - Medium-only dense, all test "
                              "frames",
    "anc_flops_reduction": "1 - GFLOPs(STTF+ANC, budget 1) / GFLOPs(Medium-only dense), all "
                           "test frames",
    "multihost_recovery_s_crash": "captioner killed on the ground host, respawned by launch: "
                                  "seconds from the kill to the next caption",
    "multihost_cameras": "three cameras, three drone namespaces, one ground host: captions, "
                         "frames and caption p95 per camera",
    "multihost_cross_talk": "captions or packets of one camera seen on another camera's "
                            "namespace (should be 0)",
    "multihost_captions_per_s_500kbit": "link capped at 500 kbit/s, raw events: captions per s "
                                        "on the ground",
    "multihost_captions_per_s_500kbit_active": "same cap, link mode 'active' (the events of the "
                                               "frame's active patches, one packet per frame)",
    "multihost_gesture_accuracy_500kbit": "per-frame gesture accuracy of the ground's captions, "
                                          "500 kbit/s, raw events",
    "multihost_gesture_accuracy_500kbit_active": "same, link mode 'active'",
    "multihost_link_overhead_bytes_per_s": "uncapped link: drone -> ground bytes/s that are no "
                                           "topic's serialized payload (packet counter)",
    "multihost_recovery_s_rediscovery_restart": "restart as above, both hosts with the "
                                                "bringup's config/fastdds_rediscovery.xml",
    "multihost_recovery_s_rediscovery_crash": "crash as above, with the same Fast DDS profile",
    "flops_ratio": "FLOPs executed sparse / dense (whole model, per frame)",
    "caption_label_consistency": "share of frames whose caption names exactly the published "
                                 "gesture (none for 'no gesture'): STTF sparse, the test "
                                 "subjects' gesture recordings + one scene recording each",
    "caption_class_accuracy": "share of gesture frames whose caption names the true class",
    "false_gesture_rate_non_gesture": "share of frames of the non-gesture scenes published as "
                                      "one of the 10 specific gestures",
    "nothing_moves_rate_empty": "share of frames of empty / still scenes captioned 'nothing "
                                "moves'",
    "ece": "expected calibration error of the published confidence (15 bins; gesture and "
           "non-gesture frames; correct = published label == truth, 0 on non-gesture scenes)",
    "label_switches_per_s_in_gesture": "published label changes per second inside gesture "
                                       "segments",
    "top_caption_share": "share of frames with the most frequent caption (all test frames)",
    "caption_agreement": "fraction of frames whose sparse caption equals the dense one",
    "token_deviation_max": "max over frames of abs(sparse token memory - dense re-encode), per "
                           "element",
    "encoder_ms_first_sparse": "encoder time, first frame (dense refresh), sparse engine (ms)",
    "encoder_ms_first_dense": "encoder time, first frame, dense engine (ms)",
    "encoder_ms_steady_sparse": "encoder time per frame, steady state, sparse (ms)",
    "encoder_ms_steady_dense": "encoder time per frame, steady state, dense (ms)",
    "peers": "dense, ToMe, Eventful top-k, STTF, STTF+ANC on the same frames: a list of "
             "{method, setting, accuracy, segment_accuracy, gflops, encoder_ms, frame_ms} "
             "(section Peers)",
}

#: the rows of the STTF table, in order
_STTF_KEYS = (
    "accuracy_dense", "accuracy_sparse", "accuracy_retained", "accuracy_sparse_rgb_events",
    "segment_accuracy_dense", "segment_accuracy_sparse", "accuracy_dense_low_motion",
    "accuracy_sparse_low_motion", "accuracy_dense_high_motion", "accuracy_sparse_high_motion",
    "caption_agreement", "label_agreement", "token_deviation_max", "token_deviation_mean",
    "active_token_fraction", "active_tokens_mean", "active_token_fraction_p95",
    "change_token_fraction", "layer_token_fraction", "active_token_fraction_low_motion",
    "active_token_fraction_high_motion", "active_token_fraction_static", "refresh_frames",
    "encoder_ms_first_sparse", "encoder_ms_first_dense", "speedup_first",
    "encoder_ms_steady_sparse", "encoder_ms_steady_dense", "encoder_ms_steady_sparse_no_refresh",
    "speedup_steady", "speedup_limit", "memory_encoder_ms_steady_sparse",
    "memory_encoder_ms_steady_dense", "speedup_memory_encoder_steady", "total_ms_steady_sparse",
    "total_ms_steady_dense", "speedup_total_steady", "flops_ratio", "encoder_flops_ratio",
    "frames_scored")
#: per-pass spreads ({values, min, max}) printed under the STTF figures
_STTF_SPREADS = ("encoder_efficiency_passes", "speedup_total_steady_passes")
#: the rows of the end-to-end table, in order
_E2E_KEYS = ("frames_processed", "frames_expected_approx", "frames_dropped", "missing_packets",
             "packets_lost", "forced_refreshes", "frame_latency_ms_p50", "frame_latency_ms_p95",
             "caption_latency_ms_p50", "caption_latency_ms_p95", "wait_ms_p95", "backlog_grows",
             "gesture_accuracy", "mean_active_token_fraction", "flops_saved_fraction",
             "graph_processes", "graph_rss_mb", "load_avg_1m_after")


def _header(result: dict, command: str) -> list[str]:
    m = result.get("machine", {})
    checkpoint = (result.get("checkpoint") or {}).get("checkpoint") or "untrained model"
    return ["# edge_vlm benchmarks", "",
            f"Produced by `{command}` at {result.get('timestamp')} "
            f"(took {result.get('bench_wall_s', 0):.0f} s).", "",
            f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch threads {m.get('threads')}, "
            f"torch {m.get('torch')}, numpy {m.get('numpy')}, Python {m.get('python')} "
            f"(load average at the end: {m.get('load_avg_1m')}).", "",
            f"Checkpoint: {checkpoint}", "",
            "| figure | value | what |", "|---|---|---|"]


def _summary_value(v) -> str:
    """A summary figure as table text (a list of rows, e.g. ``peers``: its length)."""
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return f"{len(v)} rows"
    return fmt_value(v)


def _summary_rows(result: dict) -> list[str]:
    return [f"| `{k}` | {_summary_value(result.get(k))} | {DESCRIPTIONS.get(k, '')} |"
            for k in SUMMARY_KEYS]


def _decode_section(dec: dict) -> list[str]:
    """Decode + bin per stream."""
    lines = ["", "## Decode + bin per stream (1 thread, median of "
             f"{dec.get('repeats')} runs after a warm-up)", "",
             "Rates use the decoding thread's CPU time (`time.thread_time`: one core's work, "
             "robust to other load); the wall-clock rate is given too. Decode + bin = one "
             "stateful decoder, the nodes' FrameClock and `event_histogram` of every closed "
             "33 ms frame on the 128x128 grid "
             f"(FrameBinner, `{dec.get('decode_backend', 'numpy')}` backend).", "",
             "| stream | encoding | packets | events | bytes/packet | decode+bin Mev/s | (wall) | "
             "decode-only Mev/s | decode us/packet | decode-only, 8 packets joined |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(f"simulated {k}", v) for k, v in (dec.get("simulated") or {}).items()
            if isinstance(v, dict)]
    rows += [(f"simulated, 10 ms packets {k}", v)
             for k, v in (dec.get("simulated_10ms") or {}).items() if isinstance(v, dict)]
    rows += [(f"simulated x{DENSE_FACTOR} {k}", v)
             for k, v in (dec.get("simulated_dense") or {}).items() if isinstance(v, dict)]
    rows += [(f"real `{k}`", v) for k, v in (dec.get("real") or {}).items()]
    for name, v in rows:
        lines.append(f"| {name} | {v['encoding']} | {v['packets']} | {v['events']:,} | "
                     f"{v['bytes_per_packet_mean']:.0f} | {fmt_value(v['mev_per_s'])} | "
                     f"{fmt_value(v.get('mev_per_s_wall'))} | "
                     f"{fmt_value(v['decode_only_mev_per_s'])} | "
                     f"{fmt_value(v['decode_us_per_packet'])} | "
                     f"{fmt_value(v.get('decode_only_batched8_mev_per_s'))} |")
    return lines


def _phase_table(ph: dict) -> list[str]:
    lines = ["", "Per-frame accuracy by where the frame lies in its clip "
             "(`accuracy_by_clip_phase`; the simulated arm blends in from and out to the rest "
             "pose over the clip's first and last 0.2 s):", "",
             "| phase | frames | dense | sparse |", "|---|---|---|---|"]
    for k, r in ph.items():
        lines.append(f"| {k} | {r['frames']} | {fmt_value(r['dense'])} | "
                     f"{fmt_value(r['sparse'])} |")
    return lines


def _backend_table(st: dict, eb: dict) -> list[str]:
    lines = ["", "Encoder stage per backend, same frames (`encoder_backends`; `speedup_steady` "
             f"divides the faster dense backend, here `{st.get('dense_backend')}`, by the sparse "
             f"`{st.get('encoder_backend')}` one):", "",
             "| backend | dense ms, first | sparse ms, first | dense ms, steady | "
             "sparse ms, steady | speedup, steady |", "|---|---|---|---|---|---|"]
    for k, r in eb.items():
        lines.append(f"| {k} | {fmt_value(r['dense_ms_first'])} | "
                     f"{fmt_value(r['sparse_ms_first'])} | {fmt_value(r['dense_ms_steady'])} | "
                     f"{fmt_value(r['sparse_ms_steady'])} | {fmt_value(r['speedup_steady'])} |")
    return lines


def _cost_fit_line(fit: dict) -> list[str]:
    return ["", "Where a sparse frame's encoder time goes (`sparse_cost_fit`: least squares over "
            f"the {fit['frames']} timed sparse frames that were not refreshes): "
            f"{fmt_value(fit['fixed_ms'])} ms per frame + {fmt_value(fit['per_token_ms'])} ms "
            f"per active token (mean {fmt_value(fit['tokens_mean'])} tokens), against "
            f"{fmt_value(fit['dense_per_token_ms'])} ms per token of a dense frame."]


def _stage_table(sparse: dict, dense: dict) -> list[str]:
    """Where a frame's time goes, stage by stage, sparse beside dense."""
    lines = ["", "Per stage of a frame, steady mean of the per-frame medians, ms "
             "(`stage_ms_steady_sparse`, `stage_ms_steady_dense`: `FrameResult.latency_ms`):", "",
             "| stage | sparse ms | dense ms | dense / sparse |", "|---|---|---|---|"]
    for k in dict.fromkeys([*sparse, *dense]):
        s, d = sparse.get(k), dense.get(k)
        ratio = d / s if s and d is not None else None
        lines.append(f"| {k} | {fmt_value(s)} | {fmt_value(d)} | {fmt_value(ratio)} |")
    return lines


def _op_table(prof: dict) -> list[str]:
    """Where a steady sparse frame's time goes inside its stages (``op_profile``)."""
    lines = ["", "Inside the stages, per PyTorch operator: self CPU time per steady sparse frame "
             f"under `torch.profiler` (`op_profile`: {prof['frames']} frames of the timing "
             f"recording; profiled frame {fmt_value(prof.get('profiled_ms_per_frame'))} ms, "
             "slower than unprofiled; compare the rows with each other):", "",
             "| operator | input shapes | calls / frame | self ms / frame |", "|---|---|---|---|"]
    for r in prof["ops"]:
        lines.append(f"| {r['op']} | {r['shapes'].replace('|', '/')} | "
                     f"{fmt_value(r['calls_per_frame'])} | {fmt_value(r['self_ms_per_frame'])} |")
    lines.append(f"| every other operator | | | {fmt_value(prof.get('other_ops_ms_per_frame'))} |")
    return lines


def _curve_table(curve: list[dict]) -> list[str]:
    lines = ["", "Encoder (ViT) alone, random active sets: sparse speedup vs its ideal N/n "
             "(`speedup_by_active_tokens`; dense = the faster backend):", "",
             "| active tokens | dense ms | sparse ms | speedup | ideal | efficiency | "
             "dense ms, torch | sparse ms, torch |", "|---|---|---|---|---|---|---|---|"]
    for c in curve:
        lines.append(f"| {c['tokens']} | {fmt_value(c['dense_ms'])} | "
                     f"{fmt_value(c['sparse_ms'])} | {fmt_value(c['speedup'])} | "
                     f"{fmt_value(c['limit'])} | {fmt_value(c['efficiency'])} | "
                     f"{fmt_value(c.get('dense_ms_torch'))} | "
                     f"{fmt_value(c.get('sparse_ms_torch'))} |")
    return lines


def _sttf_section(st: dict) -> list[str]:
    """STTF vs dense: the figures, then clip phases, backends, stages, cost fit, speedup
    curve."""
    lines = ["", f"## STTF vs dense ({st.get('frames')} frames of "
             f"{len(st.get('recordings') or [])} test recordings, batch 1, {st.get('threads')} "
             f"torch thread(s); timing on `{st.get('timing_recording')}`, per-frame median of "
             f"{st.get('repeats')} passes)", "",
             "| figure | value |", "|---|---|"]
    lines += [f"| `{k}` | {fmt_value(st.get(k))} |" for k in _STTF_KEYS]
    for k in _STTF_SPREADS:
        sp = st.get(k)
        if sp:
            vals = ", ".join(f"{v:.3f}" for v in sp["values"])
            lines.append(f"| `{k}` (per timing pass: min / max; all) | {sp['min']:.3f} / "
                         f"{sp['max']:.3f}; {vals} |")
    if st.get("accuracy_by_clip_phase"):
        lines += _phase_table(st["accuracy_by_clip_phase"])
    if st.get("encoder_backends"):
        lines += _backend_table(st, st["encoder_backends"])
    if st.get("stage_ms_steady_sparse"):
        lines += _stage_table(st["stage_ms_steady_sparse"], st.get("stage_ms_steady_dense") or {})
    if (st.get("op_profile") or {}).get("ops"):
        lines += _op_table(st["op_profile"])
    if st.get("sparse_cost_fit"):
        lines += _cost_fit_line(st["sparse_cost_fit"])
    if st.get("speedup_by_active_tokens"):
        lines += _curve_table(st["speedup_by_active_tokens"])
    return lines


def _target_line(t: dict) -> list[str]:
    if t.get("met") is None:
        return ["", f"Target check: not evaluated ({t.get('why')})."]
    return ["", f"Target check (issue 19: STTF within 1 point of dense accuracy at a lower "
            f"frame ms than every dense / ToMe / top-k row also within 1 point): "
            f"**{'met' if t['met'] else 'not met'}**. Dense accuracy "
            f"{fmt_value(t['dense_accuracy'])}; `{t['sttf_row']}` "
            f"{fmt_value(t['sttf_accuracy'])} ({'within' if t['sttf_within'] else 'not within'}"
            f" 1 point) at {fmt_value(t['sttf_frame_ms'])} ms; rows within 1 point: "
            f"{', '.join(t['peers_within'])}; the fastest of them `{t['fastest_peer_within']}` "
            f"at {fmt_value(t['fastest_peer_within_frame_ms'])} ms."]


def _peers_section(pe: dict) -> list[str]:
    """Peers on the same frames: the table, the target check, where a peer wins."""
    lines = ["", "## Peers on the same frames (dense, ToMe, Eventful top-k, STTF, STTF+ANC)", ""]
    if "skipped" in pe:
        return lines + [f"Skipped: {pe['skipped']}"]
    fpr = pe.get("frames_per_recording")
    window = (f"a window of {fpr} frames (starts spread over the recordings) of each of "
              if fpr else "")
    lines += [f"{pe.get('frames')} frames ({pe.get('frames_scored')} labelled): {window}"
              f"{', '.join(f'`{r}`' for r in pe.get('recordings', []))}, batch 1, "
              f"{pe.get('threads')} torch thread(s), every row in lock step frame by frame "
              "after a warm-up. One engine (the captioner's, `edge_vlm.bench.peers`); ToMe "
              "(r tokens merged per block, proportional attention, unmerged after the encoder) "
              "and top-k (k tokens per block gated against the last propagated input) replace "
              "its encoder only (`edge_vlm.inference.peers`). GFLOPs: analytic, all stages; ms: "
              "engine stage times, mean of the steady frames (wall time on a shared machine: "
              "compare within this table only); active token fraction: tokens per block / N, "
              "mean; vision token error: relative L2 distance of the encoder output from the "
              "dense engine's on the same frame, mean."
              + (f" Plot: `docs/{os.path.basename(pe['plot'])}`." if pe.get("plot") else ""),
              "",
              "| method | setting | accuracy | per-clip accuracy | GFLOPs/frame | encoder ms | "
              "frame ms | active token fraction | label agreement with dense | vision token "
              "error vs dense |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in pe.get("peers") or []:
        lines.append(f"| {r['method']} | {r['setting'] or '-'} | {fmt_value(r['accuracy'])} | "
                     f"{fmt_value(r['segment_accuracy'])} | {fmt_value(r['gflops'])} | "
                     f"{fmt_value(r['encoder_ms'])} | {fmt_value(r['frame_ms'])} | "
                     f"{fmt_value(r.get('active_token_fraction'))} | "
                     f"{fmt_value(r.get('label_agreement_dense'))} | "
                     f"{fmt_value(r.get('token_error_dense'))} |")
    if pe.get("skipped_rows"):
        lines += ["", "Rows not applicable to this checkpoint: "
                  + ", ".join(pe["skipped_rows"]) + "."]
    if pe.get("target"):
        lines += _target_line(pe["target"])
    if pe.get("verdict"):
        lines += ["", "Where a peer wins (computed from the rows above): "
                  + " ".join(pe["verdict"])]
    return lines


def _e2e_table(ee: dict) -> list[str]:
    """The figures of one end-to-end run and its packet->caption trend."""
    cc = ee.get("captioner_counters") or {}
    ee = {**ee, "missing_packets": cc.get("missing_packets"),
          "forced_refreshes": cc.get("forced_refreshes")}
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| `{k}` | {fmt_value(ee.get(k))} |" for k in _E2E_KEYS]
    runs = ee.get("frame_latency_ms_p95_runs") or {}
    if runs.get("runs"):
        lines.append(f"| `frame_latency_ms_p95_runs` | median {fmt_value(runs.get('median'))} "
                     f"of {runs['runs']} runs, min {fmt_value(runs.get('min'))}, max "
                     f"{fmt_value(runs.get('max'))}: {fmt_value(runs.get('values'))} |")
    tr = ee.get("caption_latency_trend") or {}
    cpu = ", ".join(f"{k} {fmt_value(v)}" for k, v in (ee.get("graph_cpu_s") or {}).items())
    return lines + ["", f"packet->caption trend: slope {fmt_value(tr.get('slope_per_s'))} ms/s, "
                    f"median first quarter {fmt_value(tr.get('first_quarter_p50'))} ms, last "
                    f"quarter {fmt_value(tr.get('last_quarter_p50'))} ms (backlog rule: "
                    f"{ee.get('backlog_rule')}). CPU time of the graph's processes while the "
                    f"bag played (s): {cpu or '-'}."]


def _e2e_section(ee: dict) -> list[str]:
    """The node graph at 1x: one process per node, then 1 ms packets in one process."""
    lines = ["", f"## End to end (node graph, simulated DVS128 bag, "
             f"{fmt_value(ee.get('packet_ms'))} ms EventPackets, played at 1x)", ""]
    if "skipped" in ee:
        return lines + [f"Skipped: {ee['skipped']}"]
    lines += ["Started through the bringup's launch file (`edge_vlm_demo`), one process per "
              "node.", ""] + _e2e_table(ee)
    one = ee.get("one_ms_packets")
    if one:
        lines += ["", "### The same recording in 1 ms EventPackets, single process", "",
                  "All three nodes in one process and one executor (`single_process:=true`, "
                  "`edge_vlm_demo --single-process`): the events received once, the model "
                  "loaded once, masks and routes handed over in the process.", ""]
        lines += _e2e_table(one)
    return lines


def markdown(result: dict, command: str) -> str:
    """``docs/benchmarks.md``: the figures, the command that produced them and the machine."""
    d = result.get("details", {})
    lines = _header(result, command) + _summary_rows(result)
    if d.get("decode"):
        lines += _decode_section(d["decode"])
    if d.get("sttf"):
        lines += _sttf_section(d["sttf"])
    if d.get("anc"):
        lines += anc_section(d["anc"])
    if d.get("peers"):
        lines += _peers_section(d["peers"])
    if d.get("e2e"):
        lines += _e2e_section(d["e2e"])
    lines.append("")
    return "\n".join(lines)


def to_json(result: dict) -> str:
    """``result`` as one line of JSON (numpy values and non-finite floats made safe)."""
    return json.dumps(json_safe(result))


def write_markdown(result: dict, path: str | os.PathLike, command: str) -> str:
    """Write the Markdown report and, next to it, the full JSON (``<name>.json``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(markdown(result, command))
    p.with_suffix(".json").write_text(
        json.dumps({"command": command, **json.loads(to_json(result))}, indent=1))
    return str(p)
