"""Sensor statistics of event recordings, side by side (``edge-vlm sim-stats``).

What tells a simulated stream from a real one, measured the same way on both: the event rate
per pixel (mean and percentiles over all pixels), the ON share and ON/OFF ratio, the
inter-event intervals of a pixel (pooled over pixels: the time between two consecutive events
of the same pixel), hot pixels (the share of events from the top 0.1% pixels; and the pixels
above ``hot_k`` times the median rate of the pixels that fired which also fire in at least
90% of the windows: persistence tells a hot pixel from a pixel on a moving edge), and the rate
of a static scene (the 10th percentile over the recording's windows of ``static_window_ms``:
the quietest stretches, noise and hot pixels only).

Bounded reading: a recording is read from its first event for at most ``max_seconds`` of
sensor time and ``max_events`` events (defaults below); a bag is decoded packet by packet and
its reading stops there, other files are read by their reader (``edge_vlm.io.formats``) and
cut. The figures then describe that window (``truncated`` says so).

Simulated columns (:func:`simulated_window`) are one DVS128-style session of the simulator (the
11 gestures of subject 1 with :data:`SIM_CLIP_S` clips and :data:`SIM_GAP_S` pauses: ~20 s)
seen by sensor ``sensor_seed`` (0: the nominal sensor; see ``edge_vlm.sim.dvs``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge_vlm.events import EVENT_DTYPE, check_in_sensor
from edge_vlm.io.bag_reader import event_stream
from edge_vlm.io.formats.detect import detect_format, read_events
from edge_vlm.report import fmt_value
from edge_vlm.sim.dataset import simulate_recording

__all__ = ["DEFAULT_MAX_EVENTS", "DEFAULT_MAX_SECONDS", "DEFAULT_STATIC_WINDOW_MS",
           "DEFAULT_HOT_K", "RecordingStats", "RecordingReport", "read_window",
           "recording_stats", "sim_stats", "markdown_table", "plot_distributions"]

DEFAULT_MAX_EVENTS = 5_000_000
DEFAULT_MAX_SECONDS = 30.0
DEFAULT_STATIC_WINDOW_MS = 100.0
DEFAULT_HOT_K = 10.0
#: share of the pixels whose events make the "top pixels" share
HOT_TOP_FRACTION = 0.001
#: a hot pixel fires in at least this share of the windows
HOT_PERSISTENCE = 0.9
#: the simulated session of :func:`simulated_window` (as ``edge-vlm synth``'s defaults)
SIM_SUBJECT, SIM_CLIP_S, SIM_GAP_S = 1, 1.5, 0.3
#: at most this many inter-event intervals are kept for the plot
PLOT_SAMPLES = 200_000


class EventWindow(NamedTuple):
    """The bounded beginning of one recording (:func:`read_window`)."""

    events: np.ndarray      # EVENT_DTYPE, time-sorted
    width: int
    height: int
    source: str             # reader name (bag, aedat2, raw, ...)
    truncated: bool         # the recording goes on past the window


def _cut(ev: np.ndarray, t_end: int, max_events: int) -> np.ndarray:
    """Events before ``t_end``, at most ``max_events`` of them (``ev`` time-sorted)."""
    return ev[:min(int(np.searchsorted(ev["t"], t_end)), max_events)]


def _sorted(ev: np.ndarray) -> np.ndarray:
    if ev.size > 1 and np.any(np.diff(ev["t"]) < 0):
        return ev[np.argsort(ev["t"], kind="stable")]
    return ev


def _read_bag(path: str, max_events: int, max_ns: int) -> EventWindow:
    """Decode packets until the window is full; never holds more than one packet beyond it."""
    stream = event_stream(path)
    parts: list[np.ndarray] = []
    n, t_end, truncated = 0, None, False
    for ev in stream.chunks:
        if ev.size == 0:
            continue
        ev = _sorted(ev)
        if t_end is None:
            t_end = int(ev["t"][0]) + max_ns
        kept = _cut(ev, t_end, max_events - n)
        parts.append(kept)
        n += kept.size
        if kept.size < ev.size:
            truncated = True
            break
    events = _sorted(np.concatenate(parts)) if parts else np.zeros(0, EVENT_DTYPE)
    return EventWindow(events, stream.width, stream.height, "bag", truncated)


def read_window(path: str | os.PathLike, max_events: int = DEFAULT_MAX_EVENTS,
                max_seconds: float = DEFAULT_MAX_SECONDS) -> EventWindow:
    """The first ``max_seconds`` (sensor time) and at most ``max_events`` events of ``path``.

    Raises FileNotFoundError, :class:`~edge_vlm.events.EventDecodeError` (a ValueError; the bag
    reader's BagError is one too) for unreadable input, ValueError for bad limits."""
    if max_events < 1 or not max_seconds > 0:
        raise ValueError("--max-events and --max-seconds must be positive")
    p = os.fspath(path)
    max_ns = int(round(max_seconds * 1e9))
    kind = detect_format(p)
    if kind == "bag":
        return _read_bag(p, max_events, max_ns)
    ev, info = read_events(p)
    ev = _sorted(ev)
    kept = _cut(ev, int(ev["t"][0]) + max_ns, max_events) if ev.size else ev
    return EventWindow(kept, int(info["width"]), int(info["height"]), kind,
                       kept.size < ev.size)


@dataclass
class RecordingStats:
    """The statistics of one recording (rates in events per pixel per second)."""

    name: str
    path: str
    source: str
    width: int
    height: int
    events: int
    duration_s: float
    truncated: bool
    rate_mean_hz: float
    rate_p50_hz: float
    rate_p90_hz: float
    rate_p99_hz: float
    rate_max_hz: float
    active_pixel_share: float       # pixels with at least one event
    on_share: float
    on_off_ratio: float | None      # None without OFF events
    iei_min_ms: float | None        # None without two events on one pixel
    iei_p1_ms: float | None
    iei_p10_ms: float | None
    iei_p50_ms: float | None
    iei_p90_ms: float | None
    top_pixel_share: float          # share of the events from the top 0.1% pixels
    hot_pixels: int | None          # persistent pixels above hot_k x the median active rate
    hot_pixel_share: float | None   # their share (None: fewer than 2 full windows)
    static_rate_hz: float | None    # p10 of the window rates (None: no full window)
    busy_rate_hz: float | None      # p90 of the window rates
    static_window_ms: float
    hot_k: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Distributions(NamedTuple):
    """What :func:`plot_distributions` draws for one recording."""

    pixel_rates_hz: np.ndarray      # rates of the pixels that fired
    iei_ms: np.ndarray              # inter-event intervals (a sample of at most PLOT_SAMPLES)
    window_rates_hz: np.ndarray     # rate of each full window, per pixel


class RecordingReport(NamedTuple):
    """:func:`recording_stats` of one recording: the figures and the distributions."""

    stats: RecordingStats
    dists: Distributions


def inter_event_intervals(ev: np.ndarray, width: int) -> np.ndarray:
    """Time (ns, int64) between consecutive events of the same pixel, pooled over pixels."""
    if ev.size < 2:
        return np.zeros(0, np.int64)
    idx = ev["y"].astype(np.int64) * width + ev["x"]
    o = np.lexsort((ev["t"], idx))
    t, i = ev["t"][o], idx[o]
    return np.diff(t)[i[1:] == i[:-1]]


class Windows(NamedTuple):
    """The full windows ``[t0 + k w, t0 + (k+1) w)`` of a recording (:func:`windows`)."""

    rates_hz: np.ndarray    # (n,) events per pixel per second of each window
    presence: np.ndarray    # (pixels,) number of windows in which each pixel fired


def windows(ev: np.ndarray, width: int, n_pixels: int, window_ns: int) -> Windows:
    """Rates and per-pixel presence of the full windows of ``ev`` (time-sorted)."""
    t = ev["t"]
    n_win = int((int(t[-1]) - int(t[0])) // window_ns) if t.size and window_ns > 0 else 0
    if n_win < 1:
        return Windows(np.zeros(0), np.zeros(n_pixels, np.int64))
    k = (t - t[0]) // window_ns
    full = k < n_win
    idx = ev["y"][full].astype(np.int64) * width + ev["x"][full]
    cells = np.unique(k[full] * n_pixels + idx)
    return Windows(np.bincount(k[full], minlength=n_win) / (n_pixels * window_ns / 1e9),
                   np.bincount(cells % n_pixels, minlength=n_pixels))


class HotPixels(NamedTuple):
    """:func:`hot_pixels` of a per-pixel count map."""

    top_share: float        # share of events from the top HOT_TOP_FRACTION pixels (>= 1 pixel)
    count: int | None       # persistent pixels above k x the median count of the active pixels
    share: float | None     # their share of the events (None: fewer than 2 windows)


def hot_pixels(counts: np.ndarray, win: Windows, k: float = DEFAULT_HOT_K) -> HotPixels:
    """Hot-pixel measures of per-pixel event counts (all pixels of the sensor)."""
    total = int(counts.sum())
    if total == 0:
        return HotPixels(0.0, None, None)
    n_top = max(1, int(HOT_TOP_FRACTION * counts.size))
    top = np.partition(counts, counts.size - n_top)[counts.size - n_top:]
    top_share = float(top.sum()) / total
    if win.rates_hz.size < 2:
        return HotPixels(top_share, None, None)
    hot = ((counts > k * float(np.median(counts[counts > 0])))
           & (win.presence >= HOT_PERSISTENCE * win.rates_hz.size))
    return HotPixels(top_share, int(hot.sum()), float(counts[hot].sum()) / total)


def _pct(x: np.ndarray, q: float, scale: float = 1.0) -> float | None:
    return float(np.percentile(x, q)) * scale if x.size else None


def recording_stats(window: EventWindow, *, name: str = "", path: str = "",
                    static_window_ms: float = DEFAULT_STATIC_WINDOW_MS,
                    hot_k: float = DEFAULT_HOT_K) -> RecordingReport:
    """The statistics of one bounded recording; ValueError if it has no event or its events
    span no time, EventDecodeError (a ValueError) for events outside the sensor."""
    ev, w, h = window.events, int(window.width), int(window.height)
    if ev.size == 0:
        raise ValueError("no events")
    check_in_sensor(ev, w, h)
    dur_ns = int(ev["t"][-1]) - int(ev["t"][0])
    if dur_ns <= 0:
        raise ValueError("the events span no time")
    dur = dur_ns / 1e9
    counts = np.bincount(ev["y"].astype(np.int64) * w + ev["x"], minlength=w * h)
    rates = counts / dur
    on = int(np.count_nonzero(ev["p"]))
    iei = inter_event_intervals(ev, w)
    win = windows(ev, w, w * h, int(round(static_window_ms * 1e6)))
    hot = hot_pixels(counts, win, hot_k)
    st = RecordingStats(
        name=name, path=path, source=window.source, width=w, height=h, events=int(ev.size),
        duration_s=dur, truncated=window.truncated, rate_mean_hz=float(rates.mean()),
        rate_p50_hz=float(np.percentile(rates, 50)), rate_p90_hz=float(np.percentile(rates, 90)),
        rate_p99_hz=float(np.percentile(rates, 99)), rate_max_hz=float(rates.max()),
        active_pixel_share=float(np.count_nonzero(counts)) / counts.size,
        on_share=on / ev.size, on_off_ratio=on / (ev.size - on) if on < ev.size else None,
        iei_min_ms=_pct(iei, 0, 1e-6), iei_p1_ms=_pct(iei, 1, 1e-6),
        iei_p10_ms=_pct(iei, 10, 1e-6), iei_p50_ms=_pct(iei, 50, 1e-6),
        iei_p90_ms=_pct(iei, 90, 1e-6), top_pixel_share=hot.top_share, hot_pixels=hot.count,
        hot_pixel_share=hot.share, static_rate_hz=_pct(win.rates_hz, 10),
        busy_rate_hz=_pct(win.rates_hz, 90),
        static_window_ms=float(static_window_ms), hot_k=float(hot_k))
    sample = iei
    if sample.size > PLOT_SAMPLES:
        sample = np.random.default_rng(0).choice(iei, PLOT_SAMPLES, replace=False)
    return RecordingReport(st, Distributions(rates[counts > 0], sample * 1e-6, win.rates_hz))


def simulated_window(sensor_seed: int, lighting: str = "lab", seed: int = 0) -> EventWindow:
    """A simulated session (all 11 gestures) seen by sensor ``sensor_seed``, as a window."""
    rec = simulate_recording(SIM_SUBJECT, lighting, seed=seed, clip_duration_s=SIM_CLIP_S,
                             gap_s=SIM_GAP_S, with_frames=False, sensor_seed=sensor_seed)
    return EventWindow(rec.events, 128, 128, "simulator", False)


def recording_name(path: str | os.PathLike) -> str:
    """A short column name: the file or folder name (a bag's folder for its metadata.yaml or
    storage file)."""
    p = Path(path)
    if p.name == "metadata.yaml" or p.suffix in (".db3", ".mcap"):
        p = p.parent
    return p.name or str(path)


def sim_stats(paths: list[str], sensors: list[int] = (), lightings: list[str] = ("lab",), *,
              max_events: int = DEFAULT_MAX_EVENTS,
              max_seconds: float = DEFAULT_MAX_SECONDS,
              static_window_ms: float = DEFAULT_STATIC_WINDOW_MS,
              hot_k: float = DEFAULT_HOT_K) -> list[RecordingReport]:
    """:func:`recording_stats` of each recording (read by :func:`read_window`), then of the
    simulated session of each sensor seed under each lighting (:func:`simulated_window`)."""
    if not static_window_ms > 0:
        raise ValueError("--static-window-ms must be positive")
    opts = {"static_window_ms": static_window_ms, "hot_k": hot_k}
    out = [recording_stats(read_window(p, max_events, max_seconds), name=recording_name(p),
                           path=os.fspath(p), **opts) for p in paths]
    for light in lightings:
        for seed in sensors:
            name = f"sim_{light}_sensor{int(seed)}"
            out.append(recording_stats(simulated_window(int(seed), light), name=name, **opts))
    return out


#: (row label, RecordingStats field, fmt_value options) of the Markdown table
_ROWS: tuple[tuple[str, str, dict], ...] = (
    ("source", "source", {}), ("sensor", "", {}), ("events", "events", {}),
    ("duration (s)", "duration_s", {}), ("truncated", "truncated", {}),
    ("rate / pixel, mean (Hz)", "rate_mean_hz", {}),
    ("rate / pixel, p50 / p90 / p99 / max (Hz)", "", {}),
    ("pixels with events", "active_pixel_share", {"spec": ".1%"}),
    ("ON share", "on_share", {"digits": 3, "fixed": True}),
    ("ON/OFF ratio", "on_off_ratio", {"digits": 3, "fixed": True}),
    ("inter-event interval min / p1 (ms)", "", {}),
    ("inter-event interval p10 / p50 / p90 (ms)", "", {}),
    ("events from the top 0.1% pixels", "top_pixel_share", {"spec": ".1%"}),
    ("hot pixels (> k x median active rate, in >= 90% of windows)", "hot_pixels", {}),
    ("events from hot pixels", "hot_pixel_share", {"spec": ".1%"}),
    ("static-scene rate: p10 of windows (Hz / pixel)", "static_rate_hz", {}),
    ("busy rate: p90 of windows (Hz / pixel)", "busy_rate_hz", {}),
)


def _cell(st: RecordingStats, label: str, field: str, opts: dict) -> str:
    if label == "sensor":
        return f"{st.width}x{st.height}"
    if label.startswith("rate / pixel, p50"):
        return " / ".join(fmt_value(v, 3) for v in (st.rate_p50_hz, st.rate_p90_hz,
                                                     st.rate_p99_hz, st.rate_max_hz))
    if label.startswith("inter-event interval min"):
        return " / ".join(fmt_value(v, 3) for v in (st.iei_min_ms, st.iei_p1_ms))
    if label.startswith("inter-event"):
        return " / ".join(fmt_value(v, 3) for v in (st.iei_p10_ms, st.iei_p50_ms,
                                                     st.iei_p90_ms))
    v = getattr(st, field)
    return fmt_value(v, **opts) if v is not None else fmt_value(None)


def markdown_table(stats: list[RecordingStats]) -> str:
    """One column per recording, one row per statistic."""
    head = "| statistic | " + " | ".join(s.name for s in stats) + " |"
    rows = [head, "|---|" + "---|" * len(stats)]
    for label, field, opts in _ROWS:
        rows.append(f"| {label} | " + " | ".join(_cell(s, label, field, opts) for s in stats)
                    + " |")
    if stats:
        s = stats[0]
        rows.append(f"\nwindows of {fmt_value(s.static_window_ms)} ms; hot pixels: k = "
                    f"{fmt_value(s.hot_k)}")
    return "\n".join(rows)


def plot_distributions(reports: list[RecordingReport], png: str | os.PathLike) -> None:
    """Overlaid empirical CDFs (pixel rates, inter-event intervals, window rates) -> PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("pixel_rates_hz", "event rate of a pixel that fired (Hz)"),
              ("iei_ms", "inter-event interval of a pixel (ms)"),
              ("window_rates_hz", "rate per pixel of each window (Hz)"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, label) in zip(axes, panels):
        for r in reports:
            x = np.sort(getattr(r.dists, key))
            x = x[x > 0]
            if x.size:
                ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", lw=1.5,
                        label=r.stats.name)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction <= x")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("edge-vlm sim-stats")
    fig.tight_layout()
    fig.savefig(os.fspath(png), dpi=110)
    plt.close(fig)
