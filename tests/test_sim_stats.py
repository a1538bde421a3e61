"""Sensor realism of the simulator (``edge_vlm.sim.dvs``) and ``edge-vlm sim-stats``.

* the statistics on synthetic event arrays with known answers;
* the nominal sensor (seed 0) is byte-identical to the simulator before the sensor was
  randomised (hashes pinned from that version);
* other seeds draw every parameter inside ``SENSOR_RANGES``, deterministically, and change the
  events; the photoreceptor low-pass, ON/OFF asymmetry and noise parameters do what they say;
* the command on a tiny simulated bag, on a real recording, and on bad input.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from edge_vlm.cli import main as cli_main
from edge_vlm.events import EVENT_DTYPE
from edge_vlm.evaluation.sim_stats import (EventWindow, inter_event_intervals, read_window,
                                           recording_stats, windows)
from edge_vlm.io.bag_writer import write_bag
from edge_vlm.sim.dataset import simulate_clip, simulate_static
from edge_vlm.sim.dvs import (REAL_T_RES_NS, SENSOR_RANGES, EventSimulator, make_sensor,
                              noise_events)
from edge_vlm.sim.gestures import LUMA, luma

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real"))
B1280 = os.path.join(REAL, "evt3_prophesee_1280x720_trigger")


def _events(t, x, y, p) -> np.ndarray:
    ev = np.zeros(len(t), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
    return ev[np.argsort(ev["t"], kind="stable")]


def _known() -> np.ndarray:
    """10x10 sensor, 1 s: pixel (0, 0) fires 100 ON events every 10 ms (a hot pixel); pixels
    1..9 of row 1 fire one OFF event each, at 50 ms + k * 100 ms."""
    t_hot = np.arange(100) * 10_000_000 + 5_000_000
    t_one = 50_000_000 + np.arange(9) * 100_000_000
    t = np.concatenate([t_hot, t_one, [0, 1_000_000_000]])   # + 2 ON events that fix the span
    x = np.concatenate([np.zeros(100), np.arange(1, 10), [9, 9]])
    y = np.concatenate([np.zeros(100), np.ones(9), [9, 9]])
    p = np.concatenate([np.ones(100), np.zeros(9), [1, 1]])
    return _events(t, x, y, p)


def test_statistics_have_known_answers():
    st = recording_stats(EventWindow(_known(), 10, 10, "test", False)).stats
    assert st.events == 111 and st.duration_s == pytest.approx(1.0)
    assert st.rate_mean_hz == pytest.approx(111 / 100)
    assert st.rate_p99_hz == pytest.approx(np.percentile([100] + [2] + [1] * 9 + [0] * 89, 99))
    assert st.rate_max_hz == pytest.approx(100.0)
    assert st.active_pixel_share == pytest.approx(11 / 100)
    assert st.on_share == pytest.approx(102 / 111)
    assert st.on_off_ratio == pytest.approx(102 / 9)
    # IEIs: 99 x 10 ms (hot pixel) and one 1000 ms (pixel (9, 9))
    assert st.iei_p10_ms == pytest.approx(10.0) and st.iei_p50_ms == pytest.approx(10.0)
    assert st.iei_min_ms == pytest.approx(10.0) and st.iei_p90_ms == pytest.approx(10.0)
    assert st.top_pixel_share == pytest.approx(100 / 111)       # top 0.1% of 100 px = 1 px
    assert st.hot_pixels == 1 and st.hot_pixel_share == pytest.approx(100 / 111)
    # ten 100 ms windows: 10 hot events + 1 OFF event (+ the event at t = 0 in the first one)
    assert st.static_rate_hz == pytest.approx(np.percentile([12] + [11] * 8 + [10], 10) / 10)
    assert st.busy_rate_hz == pytest.approx(np.percentile([12] + [11] * 8 + [10], 90) / 10)


def test_iei_and_windows_on_interleaved_pixels():
    t = np.array([0, 1, 3, 6, 10, 20]) * 1_000_000
    ev = _events(t, [0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 1])
    iei = np.sort(inter_event_intervals(ev, 2)) / 1e6
    assert iei.tolist() == [3.0, 5.0, 7.0, 10.0]          # pixel 0: 3, 7, 10; pixel 1: 5
    w = windows(ev, 2, 2, 5_000_000)                      # 4 full windows of 5 ms
    assert w.rates_hz.tolist() == pytest.approx(np.array([3, 1, 1, 0]) / (2 * 0.005))
    assert w.presence.tolist() == [2, 2]


def test_read_window_is_bounded(tmp_path):
    t = np.arange(3000, dtype=np.int64) * 1_000_000 + 7        # 3 s, one event per ms
    ev = _events(t, t % 16, (t // 16) % 16, t % 2)
    bag = tmp_path / "bag"
    write_bag(bag, events=ev, width=16, height=16, packet_ns=10_000_000)
    full = read_window(bag)
    assert full.events.size == 3000 and not full.truncated and full.width == 16
    by_time = read_window(bag, max_seconds=1.0)
    assert by_time.truncated and by_time.events.size == 1000
    assert by_time.events["t"].max() < t[0] + 1_000_000_000
    by_count = read_window(bag, max_events=25)
    assert by_count.truncated and by_count.events["t"].tolist() == t[:25].tolist()


#: sha256 of the events, computed with the simulator before the sensor was randomised
PINNED = {
    "clip64": (1245, "2dfc8d398e89ab4186740ce9ecdf2d81c030ce384dece15feacf6d2efbc22661"),
    "clip128": (4911, "131d4e3d452f58ebf5196bf1fee6a1586e920b38da75fd4f90454cb928d47bf1"),
    "static64": (798, "8f6548b34457479d4c71b762250d1527ded8b7b83223d425ebe456857bec9e91"),
}


def _nominal_outputs(sensor_seed: int = 0) -> dict[str, np.ndarray]:
    return {
        "clip64": simulate_clip(3, 1, "fluorescent", seed=5, duration_s=0.4, with_frames=False,
                                width=64, height=64, sensor_seed=sensor_seed).events,
        "clip128": simulate_clip(1, 2, "lab", seed=1, duration_s=0.3, with_frames=False,
                                 sensor_seed=sensor_seed).events,
        "static64": simulate_static(2, "natural", seed=3, duration_s=0.3, width=64, height=64,
                                    sensor_seed=sensor_seed),
    }


def test_nominal_sensor_output_is_byte_identical():
    for name, ev in _nominal_outputs().items():
        assert (len(ev), hashlib.sha256(ev.tobytes()).hexdigest()) == PINNED[name], name


def _inside(name: str, values) -> bool:
    r = SENSOR_RANGES[name]
    v = np.atleast_1d(np.asarray(values, float))
    return bool(np.all((v >= r.lo * (1 - 1e-9)) & (v <= r.hi * (1 + 1e-9))))


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return " avx2" in f.read()
    except OSError:
        return False


#: OpenBLAS kernel sets to force: Prescott's (SSE3) run on every x86-64, Zen's and Haswell's
#: need AVX2 (every CPU of these machines has it)
BLAS_KERNELS = ["Prescott"] + (["Zen", "Haswell"] if _has_avx2() else [])


@pytest.mark.parametrize("kernel", BLAS_KERNELS)
def test_nominal_output_does_not_depend_on_the_blas_kernel(kernel):
    """The pinned recordings are made again with OpenBLAS forced to another CPU's kernels (an
    AMD EPYC selects Zen's): the simulator's luminance was a matrix product, and on Zen's and
    Haswell's kernels two of the three recordings differed from the pins (made on an Intel Xeon,
    SkylakeX's kernels)."""
    code = ("import hashlib, sys; sys.path.insert(0, 'tests'); "
            "from test_sim_stats import _nominal_outputs; "
            "print({n: (len(e), hashlib.sha256(e.tobytes()).hexdigest()) "
            "for n, e in _nominal_outputs().items()})")
    env = dict(os.environ, OPENBLAS_CORETYPE=kernel)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert ast.literal_eval(out) == PINNED, (kernel, out)


def test_luma_rounds_each_multiply_add_once():
    """``luma`` against exact rationals: float32 images red, green, blue; float64 one colour red,
    green, blue, several green, red, blue; each multiply-add rounded once (ties included)."""
    rng = np.random.default_rng(4)
    img = rng.random((6, 7, 3)).astype(np.float32)
    img[0] = np.round(img[0] * 16) / 16                        # short mantissas: exact sums

    def chain(v, order, to):
        acc = to(Fraction(float(v[order[0]])) * Fraction(float(w[order[0]])))
        for i in order[1:]:
            acc = to(Fraction(float(v[i])) * Fraction(float(w[i])) + Fraction(float(acc)))
        return acc
    def round32(q):         # the float32 nearest to q, ties to the even mantissa
        f = np.float32(float(q))
        near = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
        return min(near, key=lambda c: (abs(Fraction(float(c)) - q),
                                        int(np.array(c).view(np.int32)) & 1))
    w = LUMA.astype(np.float32)
    want = [chain(v, (0, 1, 2), round32) for v in img.reshape(-1, 3)]
    got = luma(img, np.float32)
    assert got.dtype == np.float32 and got.shape == (6, 7)
    assert got.ravel().tolist() == [float(x) for x in want]
    w = LUMA
    cols = rng.random((5, 3))
    assert luma(cols).tolist() == [chain(v, (1, 0, 2), float) for v in cols]
    assert float(luma(cols[0])) == chain(cols[0], (0, 1, 2), float)
    assert luma(cols[0]).shape == ()


def test_random_sensors_stay_inside_their_ranges_and_differ():
    nominal = make_sensor(128, 128, 0)
    assert (nominal.on_off_ratio, nominal.lp_hz, nominal.jitter_ns, nominal.t_res_ns) == \
        (1.0, 0.0, 0.0, 1)
    seen = set()
    for seed in range(1, 41):
        s = make_sensor(128, 128, seed)
        assert _inside("c_mean", s.c_mean) and _inside("c_sigma_rel", s.c_std / s.c_mean)
        assert abs(float(s.threshold.mean()) - s.c_mean) < 0.01
        assert _inside("on_off_ratio", s.on_off_ratio)
        assert _inside("refractory_s", s.refractory_ns / 1e9)
        assert _inside("ba_gain", s.ba_gain) and _inside("ba_on_share", s.ba_on_share)
        assert _inside("hot_gain", s.hot_gain) and _inside("hot_on_prob", s.hot_on_prob)
        assert _inside("lp_hz", s.lp_hz) and _inside("jitter_s", s.jitter_ns / 1e9)
        assert s.t_res_ns == REAL_T_RES_NS
        assert np.allclose(s.threshold_on / s.threshold_off, s.on_off_ratio, rtol=1e-5)
        seen.add((round(s.c_mean, 9), round(s.lp_hz, 6), len(s.hot_idx)))
        # deterministic from the seed; the scalar parameters do not depend on the resolution
        again = make_sensor.__wrapped__(128, 128, seed)
        assert np.array_equal(again.threshold, s.threshold) and again.lp_hz == s.lp_hz
        assert make_sensor(64, 32, seed).c_mean == s.c_mean
    assert len(seen) == 40
    # over 40 seeds every range is explored, not just its middle
    c = [make_sensor(128, 128, k).c_mean for k in range(1, 41)]
    assert min(c) < 0.15 and max(c) > 0.30


def test_random_sensor_changes_the_events_and_stamps_microseconds():
    nominal = _nominal_outputs()["clip128"]
    ev = simulate_clip(1, 2, "lab", seed=1, duration_s=0.3, with_frames=False,
                       sensor_seed=7).events
    assert ev.size and ev.tobytes() != nominal.tobytes()
    assert np.all(np.diff(ev["t"]) >= 0) and np.all(ev["t"] % REAL_T_RES_NS == 0)
    assert ev["t"].min() >= 0 and ev["t"].max() < 300_000_000


def _one_pixel_sensor(**kw):
    s = make_sensor.__wrapped__(2, 1, 0, c_mean=0.1, c_std=1e-9, n_hot=0, refractory_s=1e-9)
    return dataclasses.replace(s, **kw)


def test_photoreceptor_low_pass_delays_events_as_a_first_order_filter():
    """A log-intensity step of 1 through a cutoff of 20 Hz at irradiance 1: the j-th event at
    -tau ln(1 - j C / 1); a pixel that leaves the rendered window keeps settling."""
    s = _one_pixel_sensor(lp_hz=20.0)
    sim = EventSimulator(s, np.full(2, -1.0, np.float32), 0, np.random.default_rng(0))
    sim.ref[:] = -1.0
    sim.step(np.arange(1, 11) * 1_000_000, np.zeros((10, 2), np.float32))
    sim.step(np.arange(11, 101) * 1_000_000, np.zeros((90, 1), np.float32), np.array([0]))
    out = sim.signal()
    tau, c = 1 / (2 * math.pi * 20.0), float(s.threshold[0])
    expect = [-tau * math.log(1 - j * c) for j in range(1, 10)]
    for px in (0, 1):
        t = np.sort(out.t[out.idx == px]) / 1e9
        assert t == pytest.approx(expect, abs=2e-4), px


def test_on_off_ratio_sets_the_thresholds_of_each_polarity():
    r = 2.25                                    # C_on = 0.15, C_off = 0.0667
    s = _one_pixel_sensor(on_off_ratio=r)
    sim = EventSimulator(s, np.zeros(2, np.float32), 0, np.random.default_rng(0))
    sim.ref[:] = 0.0
    up = np.linspace(0, 0.64, 50, dtype=np.float32)[:, None].repeat(2, 1)
    down = np.linspace(0.64, -0.05, 50, dtype=np.float32)[:, None].repeat(2, 1)
    sim.step(np.arange(1, 51) * 1_000_000, up)
    sim.step(np.arange(51, 101) * 1_000_000, down)
    out = sim.signal()
    on, off = int(np.sum(out.p == 1)), int(np.sum(out.p == 0))
    # up: floor(0.64 / 0.15) = 4 (ref 0.6); down to -0.05: floor(0.65 / 0.0667) = 9
    assert on == 2 * 4 and off == 2 * 9


def test_noise_parameters_scale_rates_and_polarity():
    base = make_sensor.__wrapped__(100, 100, 0)
    rng = np.random.default_rng(1)
    ba = noise_events(dataclasses.replace(base, hot_idx=base.hot_idx[:0],
                                          hot_gain=base.hot_gain[:0], hot_pol=base.hot_pol[:0],
                                          ba_gain=2.0, ba_on_share=0.7),
                      0, 10**9, 1.0, 0.0, rng)
    assert ba.t.size == pytest.approx(2 * 10_000, rel=0.05)
    assert ba.p.mean() == pytest.approx(0.7, abs=0.02)
    hot = noise_events(dataclasses.replace(base, ba_gain=0.0, hot_on_prob=np.array(
        [0.0, 1.0, 0.5, 0.5])), 0, 10**9, 1.0, 1000.0, rng)
    for k, prob in enumerate((0.0, 1.0, 0.5, 0.5)):
        sel = hot.idx == base.hot_idx[k]
        assert sel.sum() == pytest.approx(1000 * base.hot_gain[k], rel=0.15)
        assert hot.p[sel].mean() == pytest.approx(prob, abs=0.1)


def _run(args, capsys) -> tuple[int, str, str]:
    rc = cli_main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_on_a_simulated_bag(tmp_path, capsys):
    clip = simulate_clip(2, 1, "lab", seed=0, duration_s=0.5, with_frames=False)
    bag = tmp_path / "sim_bag"
    write_bag(bag, events=clip.events, width=128, height=128, packet_ns=10_000_000)
    png = tmp_path / "dist.png"
    rc, out, err = _run(["sim-stats", str(bag), "--json", "--plot", str(png),
                         "--static-window-ms", "50"], capsys)
    assert rc == 0, err
    (st,) = json.loads(out)["recordings"]
    assert st["name"] == "sim_bag" and st["events"] == clip.events.size
    assert st["on_share"] == pytest.approx(float(clip.events["p"].mean()))
    assert st["static_window_ms"] == 50.0 and st["static_rate_hz"] <= st["busy_rate_hz"]
    assert png.stat().st_size > 10_000
    rc, out, _ = _run(["sim-stats", str(bag)], capsys)
    assert rc == 0 and out.startswith("| statistic | sim_bag |") and "ON/OFF ratio" in out


@pytest.mark.skipif(not os.path.isdir(B1280), reason="real recordings not available")
def test_cli_on_a_real_recording(capsys):
    rc, out, err = _run(["sim-stats", B1280, "--json"], capsys)
    assert rc == 0, err
    (st,) = json.loads(out)["recordings"]
    # oracles of ../shared/data/real/README.md: 82,469 CD events, 41,439 ON
    assert (st["width"], st["height"], st["events"]) == (1280, 720, 82_469)
    assert st["on_share"] == pytest.approx(41_439 / 82_469)
    assert not st["truncated"] and 1.0 < st["duration_s"] < 1.5
    rc, out, _ = _run(["sim-stats", B1280, "--json", "--max-events", "1000"], capsys)
    (st,) = json.loads(out)["recordings"]
    assert rc == 0 and st["events"] == 1000 and st["truncated"]


@pytest.mark.parametrize("args", [["/no/such/recording"], [__file__],
                                  [], ["--sim-sensors", "-3"]])
def test_cli_bad_input_is_one_error_line(args, capsys):
    rc, out, err = _run(["sim-stats", *args], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("edge-vlm sim-stats: error: ") and "Traceback" not in err
