"""The ANC section of ``docs/benchmarks.md``: the ablation against Medium-only, the budget
sweep, the caption gate, and the branches on complex and quiet frames."""
from __future__ import annotations

from edge_vlm.bench.anc_complex import GROUPS
from edge_vlm.report import fmt_value

__all__ = ["anc_section"]

_BRANCHES = ("tiny", "small", "medium")


def _shares(share: dict) -> str:
    return " / ".join(fmt_value(share.get(k)) for k in _BRANCHES)


def _ablation_table(an: dict) -> list[str]:
    lines = [f"{an.get('frames')} frames of "
             f"{', '.join(f'`{r}`' for r in an.get('recordings', []))} "
             f"({an.get('frames_low_motion')} low-motion/static, "
             f"{an.get('frames_high_motion')} high-motion). FLOPs per frame over all stages "
             "(analytic), wall = engine total latency.", "",
             "| mode | accuracy | acc. low motion | acc. high motion | GFLOPs/frame | "
             "GFLOPs low | ms/frame | ms low | params active | "
             "low-motion branches (tiny/small/medium) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in (an.get("ablation") or {}).items():
        lines.append(f"| {mode} | {fmt_value(r['accuracy'])} | "
                     f"{fmt_value(r['accuracy_low_motion'])} | "
                     f"{fmt_value(r['accuracy_high_motion'])} | {fmt_value(r['gflops'])} | "
                     f"{fmt_value(r['gflops_low_motion'])} | {fmt_value(r['ms'])} | "
                     f"{fmt_value(r['ms_low_motion'])} | {fmt_value(r['params_active_mean'])} | "
                     f"{_shares(r.get('branch_share_low_motion') or {})} |")
    return lines


def _sweep_table(sweep: list[dict]) -> list[str]:
    lines = ["", "Budget sweep (STTF+ANC, same frames; plot `docs/anc_budget_sweep.png`):", "",
             "| budget | GFLOPs/frame | accuracy | branch share tiny/small/medium |",
             "|---|---|---|---|"]
    for b in sweep:
        lines.append(f"| {b['budget']} | {fmt_value(b['gflops'])} | {fmt_value(b['accuracy'])} | "
                     f"{_shares(b.get('branch_share') or {})} |")
    return lines


def _caption_gate_line(cg: dict) -> list[str]:
    return ["", "Caption gate (`caption_reuse_threshold` = "
            f"{fmt_value(cg.get('caption_reuse_threshold'))}, STTF+ANC): text decoded on "
            f"{fmt_value(cg.get('decoded_fraction'))} of the frames "
            f"({fmt_value(cg.get('decoded_fraction_low_motion'))} of the low-motion ones); "
            "published text equal to that of an engine decoding every frame on "
            f"{fmt_value(cg.get('text_agreement_with_decoding_every_frame'))} of the frames."]


def anc_section(an: dict) -> list[str]:
    """ANC against Medium-only: the ablation, the budget sweep, the caption gate."""
    lines = ["", "## ANC: the joint STTF+ANC checkpoint against Medium-only (same frames, "
             "batch 1)", ""]
    if "skipped" in an:
        return lines + [f"Skipped: {an['skipped']}"]
    lines += _ablation_table(an)
    lines += _sweep_table(an.get("budget_sweep") or [])
    if an.get("caption_gate"):
        lines += _caption_gate_line(an["caption_gate"])
    return lines + _complex_lines(an.get("complex_scenes") or {})


def _complex_lines(cx: dict) -> list[str]:
    """Tiny vs Medium on complex and quiet frames, and where the router sends them."""
    if not cx:
        return []
    lines = ["", f"Complex frames ({cx['frames']['complex']}: fast gestures, "
             f"{', '.join(cx['complex_scene_kinds'])}) and quiet ones ({cx['frames']['quiet']}: "
             f"slow gestures, {', '.join(cx['quiet_scene_kinds'])}); right = the gesture label, "
             "or 'no gesture' and the scene kind:", "",
             "| frames | Tiny (dense) | Medium (dense) | STTF+ANC | its branches "
             "tiny/small/medium |",
             "|---|---|---|---|---|"]
    for g in GROUPS:
        if g not in cx.get("frames", {}):        # a record from before the split
            continue
        part = g.partition("_")[2]
        name = f"- its {part}s" if part else g
        lines.append(f"| {name} ({cx['frames'][g]}) | {fmt_value(cx.get(f'accuracy_tiny_{g}'))} | "
                     f"{fmt_value(cx.get(f'accuracy_medium_{g}'))} | "
                     f"{fmt_value(cx.get(f'accuracy_routed_{g}'))} | "
                     f"{_shares(cx.get(f'branch_share_{g}') or {})} |")
    return lines
