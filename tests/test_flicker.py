"""The anti-flicker rule at intake (stream/flicker.py, evbin.c; parameter flicker_min_flips).

A slow per-event reference written here (a dict per pixel, event by event) is the truth; the
numpy rule (FrameBinner's numpy backend and ``frame_histogram`` of a frame's events) and the
C kernel (native backend) must give the same histograms, counts and removed-event counters,
whatever the packet boundaries. A flickering pixel (100 Hz) is removed, a moving edge kept,
and ``flicker_min_flips`` = 0 is the binner of before, bit for bit.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import SHARED_REAL
from edge_vlm.bench import streams as bench
from edge_vlm.events import make_events
from edge_vlm.params import defaults
from edge_vlm.stream import native_evbin as native
from edge_vlm.stream.binner import FrameBinner
from edge_vlm.stream.flicker import flicker_keep
from edge_vlm.stream.frames import FrameClock, frame_histogram
from edge_vlm.stream.histogram import event_histogram, scale_coords

P = 33_333_333
K = 4
NATIVE = (os.environ.get("EDGE_VLM_NO_NATIVE", "") in ("", "0")
          and native.load(quiet=True) is not None)
BACKENDS = ["numpy"] + (["native"] if NATIVE else [])
REAL = [os.path.join(SHARED_REAL, n) for n in ("evt3_prophesee_640x480", "libcaer_cmp_davis346")]
REAL = [p for p in REAL if os.path.isfile(os.path.join(p, "metadata.yaml"))]
FLICKER_PIX = [(x, y) for x in range(40, 46) for y in range(60, 63)]


def _scene(seed: int = 0, w: int = 128, h: int = 128, dur_ns: int = 10 * P):
    """A vertical bar moving right (ON at its leading edge, OFF at its trailing edge), a block
    of pixels flickering at 100 Hz (ON at each rise, OFF at each fall of the light), and
    uniform noise; time-sorted."""
    rng = np.random.default_rng(seed)
    parts = []
    t = np.arange(0, dur_ns, 200_000)                         # the bar: 1 px per 0.6 ms...
    x = (t // 600_000) % (w - 8)
    for dx, p in ((4, 1), (0, 0)):                            # leading ON, trailing OFF edge
        for y in range(10, 30):
            parts.append((t + y * 1000, x + dx, np.full(t.size, y), np.full(t.size, p)))
    for fx, fy in FLICKER_PIX:                                # 100 Hz: a flip every 5 ms
        tf = np.arange(int(rng.integers(0, 5_000_000)), dur_ns, 5_000_000)
        tf = tf + rng.integers(0, 300_000, tf.size)
        pol = (np.arange(tf.size) + int(rng.integers(0, 2))) % 2
        parts.append((tf, np.full(tf.size, fx * w // 128), np.full(tf.size, fy * h // 128), pol))
    n = 3000
    parts.append((rng.integers(0, dur_ns, n), rng.integers(0, w, n), rng.integers(0, h, n),
                  rng.integers(0, 2, n)))
    t, x, y, p = (np.concatenate([q[i] for q in parts]) for i in range(4))
    o = np.argsort(t, kind="stable")
    return make_events(t[o], x[o], y[o], p[o])


def _reference(ev, w, h, min_flips):
    """Per frame: (index, count, histogram) with the rule applied event by event."""
    out = []
    k = ev["t"] // P
    for f in np.unique(k):
        e = ev[k == f]
        x, y = scale_coords(e["x"], e["y"], w, h, 128, 128)
        last, flips = {}, {}
        for q, p in zip((y * 128 + x).tolist(), e["p"].tolist()):
            if q in last and last[q] != p:
                flips[q] = flips.get(q, 0) + 1
            last[q] = p
        bad = {q for q, n in flips.items() if min_flips and n >= min_flips}
        keep = np.array([q not in bad for q in (y * 128 + x).tolist()], dtype=bool)
        e = e[keep]
        out.append((int(f), len(e), event_histogram(e, f * P, (f + 1) * P, w, h)))
    return out


def _binned(ev, w, h, packet_ns, backend, min_flips, **kw):
    b = FrameBinner(P, backend=backend, flicker_min_flips=min_flips, **kw)
    frames = []
    for p in bench.packetize_mono(ev, w, h, packet_ns):
        frames += b.push("mono", p[0], p[1], p[2], p[3])
    frames += b.flush()
    return [(f.index, f.count, f.hist) for f in frames], b.flicker_events


def _same(got, ref):
    assert [g[0] for g in got] == [r[0] for r in ref]
    for g, r in zip(got, ref):
        assert g[1] == r[1], (g[0], g[1], r[1])
        np.testing.assert_array_equal(g[2], r[2], err_msg=f"frame {g[0]}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packet_ns", [1_000_000, 4_000_000, 50_000_000])
def test_flicker_filter_equals_reference_any_packets(backend, packet_ns):
    """numpy and the C kernel == the per-event reference, for 1 ms to 50 ms packets (the flip
    state spans the packets of a frame) and for the numpy path with and without batching."""
    ev = _scene()
    ref = _reference(ev, 128, 128, K)
    removed = sum(len(ev[ev["t"] // P == f]) - n for f, n, _ in ref)
    assert removed > 0
    for kw in ({}, {"max_batch_bytes": 1}):
        got, n_removed = _binned(ev, 128, 128, packet_ns, backend, K, **kw)
        _same(got, ref)
        assert n_removed == removed


@pytest.mark.parametrize("backend", BACKENDS)
def test_flickering_pixels_removed_moving_edge_kept(backend):
    ev = _scene(1)
    got, _ = _binned(ev, 128, 128, 1_000_000, backend, K)
    plain, _ = _binned(ev, 128, 128, 1_000_000, backend, 0)
    fx, fy = np.array(FLICKER_PIX).T
    bar = np.zeros((128, 128), dtype=bool)
    bar[10:30] = True
    assert len(got) == len(plain) >= 10
    for (i, n, h), (_, n0, h0) in zip(got[:10], plain[:10]):        # (10: a partial frame)
        assert h0[:, fy, fx].sum() > 0 and h[:, fy, fx].sum() == 0, i   # flicker: gone
        np.testing.assert_array_equal(h[:, bar], h0[:, bar])             # the edge: all kept
        assert n < n0


@pytest.mark.parametrize("backend", BACKENDS)
def test_flicker_scaled_sensor(backend):
    """A 256x192 sensor: the rule works on model-grid pixels, on both backends alike."""
    ev = _scene(2, 256, 192)
    ref = _reference(ev, 256, 192, K)
    got, _ = _binned(ev, 256, 192, 2_000_000, backend, K)
    _same(got, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flicker_off_is_the_binner_of_before(backend):
    """flicker_min_flips = 0 (the default) gives the unfiltered histograms; a threshold no
    pixel reaches changes nothing either."""
    ev = _scene(3)
    ref = _reference(ev, 128, 128, 0)
    for k in (0, 63):
        got, removed = _binned(ev, 128, 128, 3_000_000, backend, k)
        _same(got, ref)
        assert removed == 0
    b = FrameBinner(P, backend=backend)
    assert b.flicker_min_flips == 0


def test_unsorted_and_late_packets_same_on_both_backends():
    """Packets through the FrameClock rules (unsorted, late events) agree between backends."""
    ev = _scene(4)
    pk = bench.packetize_mono(ev, 128, 128, 2_000_000)
    rng = np.random.default_rng(0)
    out = []
    for backend in BACKENDS:
        b = FrameBinner(P, backend=backend, flicker_min_flips=K)
        frames = []
        for i, p in enumerate(pk):
            data = p[0]
            if i % 7 == 3:                   # shuffle this packet's 8-byte words
                w = np.frombuffer(data, "<u8").copy()
                rng.shuffle(w)
                data = w.tobytes()
            frames += b.push("mono", data, p[1], p[2], p[3])
        frames += b.flush()
        out.append(([(f.index, f.count, f.hist) for f in frames], b.flicker_events, b.unsorted))
    assert out[0][2] > 0
    for o in out[1:]:
        _same(o[0], out[0][0])
        assert o[1:] == out[0][1:]


def test_frame_histogram_of_events_applies_the_same_rule():
    """Frames cut from events (bench.recordings.sim_frames' path) get the rule through the
    parameter, equal to the binner's."""
    ev = _scene(5)
    params = dict(defaults("sttf_perception"), flicker_min_flips=K)
    clock, frames = FrameClock(P), []
    frames += clock.push(ev, 128, 128)
    frames += clock.flush()
    got = [(f.index, int(frame_histogram(f, params).sum()), frame_histogram(f, params))
           for f in frames]
    _same(got, _reference(ev, 128, 128, K))


def test_flicker_keep_edge_cases():
    c = np.array([0, 16384, 0, 16384, 0, 5], dtype=np.int64)        # pixel 0: 4 flips
    keep = flicker_keep(None, c, 16384, 4)
    assert keep.tolist() == [False] * 5 + [True]
    assert flicker_keep(None, c, 16384, 5) is None
    assert flicker_keep(None, c, 16384, 0) is None
    # two frames of the same pixel: flips do not add up across frames
    assert flicker_keep(np.array([0, 0, 0, 1, 1, 1]), c, 16384, 3) is None
    assert "flicker_min_flips" in defaults("vlm_captioner")
    with pytest.raises(ValueError):
        FrameBinner(P, flicker_min_flips=64)


@pytest.mark.skipif(not REAL or not NATIVE, reason="real bags or the native kernel missing")
@pytest.mark.parametrize("bag", REAL, ids=os.path.basename)
def test_real_bags_same_on_both_backends(bag):
    """Real recordings (scaled to the model grid): numpy == native, frame by frame."""
    enc, pk = bench.bag_packets(bag)
    out = []
    for backend in BACKENDS:
        b = FrameBinner(P, backend=backend, flicker_min_flips=K)
        frames = [f for p in pk for f in b.push(enc, *p)] + b.flush()
        out.append(([(f.index, f.count, f.hist) for f in frames], b.flicker_events, b.events))
    _same(out[1][0], out[0][0])
    assert out[1][1:] == out[0][1:] and 0 < out[0][1] < out[0][2]
