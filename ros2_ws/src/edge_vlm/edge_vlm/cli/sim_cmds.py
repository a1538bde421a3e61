"""``edge-vlm sim-stats``: sensor statistics of simulated and real recordings side by side."""
from __future__ import annotations

import json
import sys

from edge_vlm.evaluation.sim_stats import (DEFAULT_HOT_K, DEFAULT_MAX_EVENTS,
                                          DEFAULT_MAX_SECONDS, DEFAULT_STATIC_WINDOW_MS,
                                          markdown_table, plot_distributions, sim_stats)


def _or(value, default):
    return default if value is None else value


def run_sim_stats(args) -> int:
    """Markdown table (or JSON) of every recording; 2 with one error line on bad input."""
    opts = {"max_events": _or(args.max_events, DEFAULT_MAX_EVENTS),
            "max_seconds": _or(args.max_seconds, DEFAULT_MAX_SECONDS),
            "static_window_ms": _or(args.static_window_ms, DEFAULT_STATIC_WINDOW_MS),
            "hot_k": _or(args.hot_k, DEFAULT_HOT_K)}
    reports, where = [], ""
    try:
        if not args.recordings and not args.sim_sensors:
            raise ValueError("nothing to measure: give recordings and/or --sim-sensors")
        for path in args.recordings:
            where = f"{path}: "
            reports += sim_stats([path], **opts)
        where = "simulator: "
        reports += sim_stats([], args.sim_sensors, args.sim_lightings, **opts)
        if args.plot:
            where = f"{args.plot}: "
            plot_distributions(reports, args.plot)
    except (ValueError, OSError) as exc:   # EventDecodeError and BagError are ValueErrors
        msg = " ".join(str(exc).split())
        print(f"edge-vlm sim-stats: error: {where}{msg}", file=sys.stderr)
        return 2
    stats = [r.stats for r in reports]
    if args.json:
        print(json.dumps({"recordings": [s.to_dict() for s in stats],
                          "plot": args.plot or None}))
    else:
        print(markdown_table(stats))
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0
