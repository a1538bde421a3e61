"""FrameBinner (batched decode + bin) == the per-packet path, FrameClock rules, decode_columns.

The reference everywhere is what the nodes did packet by packet before the binner: one
stateful decoder per packet, sort if unsorted, the original ``FrameClock.push`` (copied
below, so the refactored clock is pinned too), the empty-mono-packet flush rule, and
``event_histogram`` of every closed frame. Results must be identical: frame indices, event
counts, histograms, late/reset counters and rejected packets.

Both backends are checked everywhere: the numpy path and, where ``_native/libevbin.so`` is
built (scripts/setup.sh), the native kernel (edge_vlm.native), which must also give the same
rejection messages, packet / event counters, fed packets and evt3 decoder state as numpy. The
kernel's per-packet call goes through the ``evbinext`` extension where it is built, else
ctypes: both must agree too. Frames' histograms are read-only on both backends; the native
backend's pooled output buffers must give the same histograms reused as fresh.
"""
from __future__ import annotations

import array
import os
import shutil
import sysconfig

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SHARED_REAL
from edge_vlm.bench import streams as bench
from edge_vlm.stream import native_evbin as native
from edge_vlm.stream.binner import FrameBinner
from edge_vlm.io.codecs import Evt3Decoder, encode_mono, make_decoder
from edge_vlm.events import EventDecodeError, concat_events, make_events
from edge_vlm.stream.frames import Frame, FrameClock
from edge_vlm.cores.perception import PerceptionCore
from edge_vlm.cores.router import RouterCore
from edge_vlm.stream.histogram import event_histogram

P = 33_333_333
REAL = [os.path.join(SHARED_REAL, n) for n in ("evt3_prophesee_640x480",
                                               "evt3_prophesee_1280x720_trigger")]
REAL = [p for p in REAL if os.path.isfile(os.path.join(p, "metadata.yaml"))]
NATIVE = (os.environ.get("EDGE_VLM_NO_NATIVE", "") in ("", "0")
          and native.load(quiet=True) is not None)
BACKENDS = ["numpy"] + (["native"] if NATIVE else [])
needs_native = pytest.mark.skipif(not NATIVE,
                                  reason="native kernel not built (scripts/setup.sh) or disabled")


class _RefClock:
    """The original FrameClock.push / flush (before the ``advance`` refactor)."""

    def __init__(self, period_ns, max_gap_frames=30):
        self.period, self.max_gap = int(period_ns), int(max_gap_frames)
        self.current, self.chunks, self.late_events, self.resets = None, [], 0, 0
        self.size = (0, 0)

    def push(self, events, width, height):
        self.size = (int(width), int(height))
        if len(events) == 0:
            return []
        out = []
        k = events["t"] // self.period
        if self.current is None:
            self.current = int(k[0])
        late = k < self.current
        if late.any():
            n_late = int(late.sum())
            if n_late == len(events) and int(k[-1]) < self.current - self.max_gap:
                self.resets += 1
                self.current, self.chunks = int(k[0]), []
                late = np.zeros(len(events), dtype=bool)
            else:
                self.late_events += n_late
                events, k = events[~late], k[~late]
                if len(events) == 0:
                    return []
        last = int(k[-1])
        if last - self.current > self.max_gap:
            self.resets += 1
            head = k < self.current + 1
            self.chunks.append(events[head])
            out.append(self._close())
            events, k = events[~head], k[~head]
            self.current = int(k[0])
        while self.current < last:
            end = np.searchsorted(k, self.current + 1)
            self.chunks.append(events[:end])
            events, k = events[end:], k[end:]
            out.append(self._close())
            self.current += 1
        self.chunks.append(events)
        return out

    def flush(self):
        if self.current is None or not self.chunks:
            return []
        f = self._close()
        self.current += 1
        return [f]

    def _close(self):
        ev = concat_events(self.chunks)
        self.chunks = []
        k = self.current
        return Frame(k, k * self.period, (k + 1) * self.period, ev, *self.size)


def reference(packets, period=P, max_gap=30):
    """Per-packet path over ``(encoding, payload, width, height, time_base)``: (frames,
    counters)."""
    decs, clock, frames, rejected = {}, _RefClock(period, max_gap), [], 0
    for enc, data, w, h, tb in packets:
        try:
            if w <= 0 or h <= 0:
                raise EventDecodeError("size")
            dec = decs.get(enc) or decs.setdefault(enc, make_decoder(enc))
            ev = dec.decode(data, w, h, tb)
        except EventDecodeError:
            rejected += 1
            continue
        if len(ev) > 1 and (np.diff(ev["t"]) < 0).any():
            ev = ev[np.argsort(ev["t"], kind="stable")]
        frames += clock.push(ev, w, h)
        if (not len(ev) and enc == "mono" and clock.current is not None and clock.chunks
                and tb >= (clock.current + 1) * period):
            frames += clock.flush()
    frames += clock.flush()
    out = [(f.index, len(f.events),
            event_histogram(f.events, f.t_start, f.t_end, f.width, f.height))
           for f in frames]
    return out, (rejected, clock.late_events, clock.resets)


def binned(packets, period=P, max_gap=30, details=None, **kw):
    """FrameBinner over the packets: (frames, counters); ``details`` (a dict) gets the rest."""
    b = FrameBinner(period, max_gap_frames=max_gap, track_packets=True, **kw)
    frames = []
    for i, (enc, data, w, h, tb) in enumerate(packets):
        frames += b.push(enc, data, w, h, tb, tag=i)
    frames += b.flush()
    for f in frames:
        assert f.events is None and f.hist.dtype == np.float32 and f.hist.shape == (4, 128, 128)
        assert (f.t_start, f.t_end) == (f.index * period, (f.index + 1) * period)
    out = [(f.index, f.count, f.hist) for f in frames]
    if details is not None:
        details.update(rejections=b.pop_rejections(), fed=b.pop_fed(), packets=b.packets,
                       events=b.events, unsorted=b.unsorted,
                       sizes=[(f.width, f.height) for f in frames],
                       current=b.clock.current, backend=b.backend)
        if "evt3" in b.decoders or b.backend == "native":
            details["evt3_state"] = _evt3_state(b)
    return out, (b.rejected, b.late_events, b.resets)


def _evt3_state(b):
    if b.backend == "native":
        st = b._st
        return (st.y, st.time_low, st.time_high, st.wraps, st.base_x, st.pol, bool(st.seen_high),
                bool(st.valid))
    s = b.decoders["evt3"]._s
    return (s.y, s.time_low, s.time_high, s.wraps, s.base_x, s.pol, s.seen_high, s.valid)


def assert_same(a, b):
    (fa, ca), (fb, cb) = a, b
    assert ca == cb, (ca, cb)
    assert [f[0] for f in fa] == [f[0] for f in fb]
    for x, y in zip(fa, fb):
        assert x[1] == y[1], (x[0], x[1], y[1])
        np.testing.assert_array_equal(x[2], y[2], err_msg=f"frame {x[0]}")


def both(packets, **kw):
    """Every backend == the per-packet reference; the native kernel == numpy in every detail."""
    ref = reference(packets, kw.get("period", P), kw.get("max_gap", 30))
    dn = {}
    for cap in (None, 1, 1 << 30):          # default, no batching, one batch per frame at most
        extra = {} if cap is None else {"max_batch_bytes": cap}
        assert_same(binned(packets, **kw, **extra, backend="numpy",
                           details=dn if cap is None else None), ref)
    if NATIVE:
        dk = {}
        assert_same(binned(packets, **kw, backend="native", details=dk), ref)
        same_details(dn, dk, packets)
    return ref


def same_details(dn, dk, packets):
    """numpy (dn) and native (dk) agree on everything but the backend name."""
    assert dk.pop("backend") == "native" and dn.pop("backend") == "numpy"
    if "evt3_state" in dk and "evt3_state" not in dn:     # the numpy path never decoded evt3
        assert not any(p[0] == "evt3" for p in packets) or dk["evt3_state"] == _evt3_state_fresh()
        dk.pop("evt3_state")
    # the numpy path reports a malformed packet when its batch is decoded, the kernel at once
    for d in (dn, dk):
        d["rejections"] = sorted(d["rejections"], key=lambda r: r[0])
    assert dn == dk


def _evt3_state_fresh():
    return (0, 0, 0, 0, 0, 0, False, False)


def _events(t, rng, w=128, h=128):
    t = np.asarray(t, dtype=np.int64)
    return make_events(t, rng.integers(0, w, t.size), rng.integers(0, h, t.size),
                       rng.integers(0, 2, t.size))


def _mono_packets(ev, packet_ns, w=128, h=128):
    return [("mono",) + p[:3] + (p[3],) for p in bench.packetize_mono(ev, w, h, packet_ns)]


@pytest.fixture(scope="module")
def sim():
    return bench.simulated_events(labels=(1, 8), clip_s=0.4, gap_s=0.1, seed=1).events


# ------------------------------------------------------------------ FrameClock
@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_frame_clock_advance_matches_original_push(seed):
    """Random pushes with late events, forward gaps, backward jumps and empty pushes."""
    rng = np.random.default_rng(seed)
    Pc = 1000
    new, old = FrameClock(Pc, 5), _RefClock(Pc, 5)
    t = 50 * Pc
    for _ in range(int(rng.integers(1, 30))):
        r = rng.random()
        if r < 0.6:
            t = t + int(rng.integers(0, 3 * Pc))
        elif r < 0.75:
            t = t - int(rng.integers(0, 3 * Pc))
        elif r < 0.87:
            t = t + int(rng.integers(6, 50)) * Pc
        else:
            t = max(0, t - int(rng.integers(6, 50)) * Pc)
        ts = np.sort(t + rng.integers(-Pc, 3 * Pc, int(rng.integers(0, 20))))
        ts = np.maximum(ts, 0)
        ev = _events(ts, rng)
        a, b = new.push(ev, 128, 128), old.push(ev, 128, 128)
        assert [(f.index, f.events.tolist()) for f in a] == \
            [(f.index, f.events.tolist()) for f in b]
        assert (new.current, new.late_events, new.resets) == \
            (old.current, old.late_events, old.resets)
    a, b = new.flush(), old.flush()
    assert [(f.index, f.events.tolist()) for f in a] == [(f.index, f.events.tolist()) for f in b]


# ------------------------------------------------------------------ decode_columns
_TYPES = np.array([0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xA, 0xE, 0xF])
_PROBS = np.array([12, 20, 6, 10, 8, 14, 2, 6, 3, 2, 2], dtype=float)


def _random_words(rng, n):
    """Random EVT 3.0 words of every defined type (as tests/test_codecs.py)."""
    typ = rng.choice(_TYPES, n, p=_PROBS / _PROBS.sum()).astype(np.uint16)
    return ((typ << 12) | rng.integers(0, 4096, n).astype(np.uint16)).astype("<u2")


def _cols(ev):
    xp = ev["x"].astype(np.int64) | (ev["p"].astype(np.int64) << 11)
    return ev["t"], ev["y"].astype(np.int64), xp


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.integers(1, 500), st.lists(st.integers(0, 500), max_size=5))
def test_decode_columns_equals_decode(seed, n, cuts):
    words = _random_words(np.random.default_rng(seed), n)
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    ref, got = Evt3Decoder(), Evt3Decoder()
    for a, b in zip(bounds, bounds[1:]):
        part = words[a:b].tobytes()
        ev = ref.decode(part)
        try:
            t, y, xp, ends = got.decode_columns(part)
        except EventDecodeError:             # only a vector past x = 2047 (no sensor size given)
            assert int(ev["x"].max()) > 0x7FF
            return
        for u, v in zip(_cols(ev), (t, y, xp)):
            np.testing.assert_array_equal(u, v)
        assert ends is None and ref._s == got._s
        assert (ref.events_decoded, ref.triggers_rising, ref.triggers_falling, ref.packets) == \
               (got.events_decoded, got.triggers_rising, got.triggers_falling, got.packets)
        np.testing.assert_array_equal(ref.last_triggers, got.last_triggers)
    # several packets joined, with their event ends
    joined = Evt3Decoder()
    try:
        t, y, xp, ends = joined.decode_columns(words.tobytes(), ends=[2 * b for b in bounds[1:]])
    except EventDecodeError:
        return
    solo = Evt3Decoder()
    evs = [solo.decode(words[a:b].tobytes()) for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_array_equal(ends, np.cumsum([len(e) for e in evs]))
    np.testing.assert_array_equal(t, concat_events(evs)["t"])
    assert joined._s == solo._s


def test_decode_columns_errors_leave_state():
    dec = Evt3Decoder(640, 480)
    good = np.array([0x8000 | 5, 0x6000 | 7, 0x0000 | 10, 0x2000 | 20], dtype="<u2")
    dec.decode_columns(good.tobytes())
    before = dec._s.copy()
    for bad, msg in ((np.array([0x8000 | 6, 0x1000], dtype="<u2").tobytes(), "word type 0x1"),
                     (np.array([0x0000 | 479, 0x2000 | 640], dtype="<u2").tobytes(), "x=640"),
                     (np.array([0x0000 | 480, 0x2000 | 1], dtype="<u2").tobytes(), "y=480"),
                     (b"\x00\x20\x01", "whole number")):
        with pytest.raises(EventDecodeError, match=msg):
            dec.decode_columns(bad)
        assert dec._s == before


# ------------------------------------------------------------------ FrameBinner == per-packet
@pytest.mark.parametrize("packet_ms", [2, 10, 40])
def test_binner_equals_per_packet_simulated(sim, packet_ms):
    pn = packet_ms * 1_000_000
    ref = both(_mono_packets(sim, pn))
    assert sum(f[1] for f in ref[0]) == len(sim)
    evt3 = [("evt3",) + p[:3] + (p[3],) for p in bench.packetize_evt3(sim, packet_ns=pn)]
    both(evt3)
    fast = bench.compress_time(sim, 20)
    both(_mono_packets(fast, pn))


@pytest.mark.skipif(not REAL, reason="real evt3 bags not present")
@pytest.mark.parametrize("bag", REAL, ids=os.path.basename)
def test_binner_equals_per_packet_real_bags(bag):
    enc, pk = bench.bag_packets(bag)
    packets = [(enc,) + p for p in pk]
    ref = both(packets)
    assert ref[1][0] == 0 and sum(f[1] for f in ref[0]) > 80_000
    # the same stream cut at other (even) byte offsets: the tail peek finds no time words at times
    data = b"".join(p[0] for p in pk)
    rng = np.random.default_rng(0)
    cuts = np.unique(rng.integers(0, len(data) // 2, len(pk)) * 2).tolist()
    w, h = pk[0][1], pk[0][2]
    recut = [(enc, data[a:b], w, h, 0) for a, b in zip([0, *cuts], [*cuts, len(data)])]
    both(recut[:300])


def test_binner_irregular_mono_streams():
    """Unsorted packets, late packets, bag loops, long gaps, empty packets, several time bases."""
    rng = np.random.default_rng(7)
    Pk = 10_000_000
    packets, t = [], 5_000 * Pk
    for i in range(400):
        r = rng.random()
        if r < 0.03:
            t -= int(rng.integers(40, 200)) * P           # backwards jump (bag loop)
        elif r < 0.06:
            t += int(rng.integers(31, 90)) * P            # gap longer than max_gap
        elif r < 0.1:
            t -= int(rng.integers(1, 3)) * Pk             # a late packet
        n = int(rng.integers(0, 60))
        ts = t + np.sort(rng.integers(0, Pk, n))
        if rng.random() < 0.1 and n > 2:                  # jitter: unsorted inside the packet
            ts[: n // 2] = ts[: n // 2][::-1]
        tb = t if rng.random() < 0.8 else t - int(rng.integers(0, Pk))
        if rng.random() < 0.05:
            # empty: time only
            packets.append(("mono", b"", 128, 128, t + int(rng.integers(0, 3)) * P))
        packets.append(("mono", encode_mono(_events(ts, rng), tb), 128, 128, tb))
        t += Pk
    ref = both(packets, period=P)
    assert ref[1][1] > 0 and ref[1][2] > 0          # late events and resets happened


def test_binner_scaled_sensor_and_other_encodings(sim):
    """640x480 mono (coordinates scaled to 128x128) and libcaer_cmp (decoded packet by packet)."""
    from edge_vlm.io.codecs.libcaer_cmp import encode_libcaer_cmp

    rng = np.random.default_rng(3)
    ev = sim.copy()
    ev["x"] = rng.integers(0, 640, len(ev))
    ev["y"] = rng.integers(0, 480, len(ev))
    both(_mono_packets(ev, 10_000_000, 640, 480))
    us = sim.copy()
    us["t"] = us["t"] // 1000 * 1000                   # libcaer_cmp has microsecond times
    pk = bench.packetize_mono(us, packet_ns=10_000_000)
    caer = [("libcaer_cmp", encode_libcaer_cmp(make_decoder("mono").decode(*p), p[3]), 128, 128,
             p[3])
            for p in pk]
    both(caer)


def _bad_coords(enc, tb):
    """A packet with one event at x=300 on a 128x128 sensor."""
    if enc == "mono":
        return encode_mono(make_events([tb], [300], [5], [1]), tb)
    return np.array([0x8000 | 1, 0x6000 | 2, 0x0000 | 5, 0x2000 | 300], "<u2").tobytes()


def test_binner_rejects_malformed_packets_inside_a_batch(sim):
    """Malformed packets between good ones (same frame): each counted once, the good ones kept."""
    rng = np.random.default_rng(11)
    mono = _mono_packets(sim, 2_000_000)
    evt3 = [("evt3",) + p[:3] + (p[3],) for p in bench.packetize_evt3(sim, packet_ns=2_000_000)]
    for stream in (mono, evt3):
        packets, n_bad = [], 0
        for enc, data, w, h, tb in stream:
            packets.append((enc, data, w, h, tb))
            if rng.random() < 0.3:
                kind = int(rng.integers(0, 5))
                unknown = (np.array([0x9000, 0x1000], "<u2").tobytes() if enc == "evt3"
                           else data[:-3])
                packets.append([(enc, data + b"\x01", w, h, tb),       # truncated / odd length
                                (enc, _bad_coords(enc, tb), w, h, tb),  # outside the sensor
                                ("bogus", data, w, h, tb),              # unsupported encoding
                                (enc, data, 0, h, tb),                  # zero size
                                (enc, unknown, w, h, tb)][kind])        # unknown word type
                n_bad += 1
        ref = both(packets)
        assert ref[1][0] == n_bad > 10 and sum(f[1] for f in ref[0]) == len(sim)


def test_binner_rejection_tags_and_fed_packets(sim):
    pk = _mono_packets(sim, 10_000_000)
    b = FrameBinner(P, track_packets=True)
    frames, fed = [], []
    for i, (enc, data, w, h, tb) in enumerate(pk):
        frames += b.push(enc, data, w, h, tb, tag=i)
        if i == 5:
            frames += b.push(enc, data[:-1] if data else b"\x00", w, h, tb, tag="truncated")
            frames += b.push(enc, _bad_coords(enc, tb), 16, 16, tb, tag="coords")
        fed += b.pop_fed()
    frames += b.flush()
    fed += b.pop_fed()
    reasons = dict(b.pop_rejections())
    assert set(reasons) == {"truncated", "coords"} and "outside sensor 16x16" in reasons["coords"]
    assert b.rejected == 2 and b.packets == len(pk) + 2 and b.pop_rejections() == []
    ev = make_decoder("mono")
    for i, k0, k1, t0 in fed:              # every packet with events: its exact frames, first time
        e = ev.decode(*pk[i][1:])
        assert (k0, k1, t0) == (int(e["t"][0]) // P, int(e["t"][-1]) // P, int(e["t"][0]))
    assert sorted(i for i, *_ in fed) == [i for i, p in enumerate(pk) if p[1]]


def test_cores_take_binned_frames(sim):
    """PerceptionCore / RouterCore give the same results on binned and event frames."""
    pk = _mono_packets(sim, 10_000_000)
    clock, dec = FrameClock(P), make_decoder("mono")
    ref = [f for p in pk for f in clock.push(dec.decode(*p[1:]), 128, 128)]
    b = FrameBinner(P)
    got = [f for p in pk for f in b.push(*p)]
    assert [f.index for f in ref] == [f.index for f in got]
    perc, router = PerceptionCore({"mask_method": "event_count"}), RouterCore()
    for fr, fb in zip(ref, got):
        assert fr.n_events == fb.n_events
        a, c = perc.process(fr), perc.process(fb)
        np.testing.assert_array_equal(a.active_indices, c.active_indices)
        assert a.event_count == c.event_count
        assert router.process(fr).level == router.process(fb).level


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["mono", "evt3"]), st.binary(max_size=96),
                          st.sampled_from([-1, 0, 1]), st.integers(-(1 << 40), 1 << 40)),
                min_size=1, max_size=8),
       st.sampled_from([16, 128, 640]))
def test_fuzz_binner_never_raises_and_matches(packets, size):
    """Random payloads: never an exception, the same frames and rejections as per packet."""
    pk = [(enc, data, size * (1 + s) if s < 1 else 0, size, tb) for enc, data, s, tb in packets]
    ref = reference(pk)
    details = {}
    for backend in BACKENDS:
        assert_same(binned(pk, backend=backend, details=details.setdefault(backend, {})), ref)
    if NATIVE:
        same_details(details["numpy"], details["native"], pk)


# ------------------------------------------------------------------ native kernel
def test_native_kernel_built():
    """Where gcc is (CI, the dev machines), scripts/setup.sh builds the kernel: it must load."""
    if shutil.which("gcc") is None or os.environ.get("EDGE_VLM_NO_NATIVE", "") not in ("", "0"):
        pytest.skip("no gcc, or the native kernel is disabled")
    assert native.load(quiet=True) is not None, "run scripts/setup.sh (builds _native/libevbin.so)"
    assert FrameBinner(P).backend == "native" and native.backend() == "native"
    if os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")) \
            and os.environ.get("EDGE_VLM_NO_NATIVE_EXT", "") in ("", "0"):
        assert native.load_ext() is not None, \
            f"run scripts/setup.sh (builds the extension): {native.ext_why}"
        assert FrameBinner(P).fast_path == "evbinext"


def test_no_native_env_forces_numpy(monkeypatch):
    monkeypatch.setenv("EDGE_VLM_NO_NATIVE", "1")
    assert native.load() is None and native.backend() == "numpy"
    assert FrameBinner(P).backend == "numpy"
    with pytest.raises(RuntimeError):
        FrameBinner(P, backend="native")
    with pytest.raises(ValueError):
        FrameBinner(P, backend="cuda")


def _random_evt3_stream(rng, n_words, t_jumps=True, w=2048, h=2048):
    """Valid-type EVT 3.0 words: runs of time / y / x / vector words, time going forward with
    jitter (backward TIME_HIGH steps), 24-bit wraps and, with ``t_jumps``, jumps; coordinates
    mostly inside a ``w`` x ``h`` sensor."""
    def coord(n):
        if rng.random() < 0.98:
            return int(rng.integers(0, min(max(n, 1), 2048)))
        return int(rng.integers(0, 2048))

    words, hi, lo = [], int(rng.integers(0, 4096)), 0
    while len(words) < n_words:
        r = rng.random()
        if r < 0.15:
            step = (int(rng.integers(-3, 4)) if rng.random() < 0.9
                    else int(rng.integers(-4095, 4096)))
            hi = (hi + step) % 4096 if t_jumps else min(4095, max(hi, hi + step))
            words.append(0x8000 | hi)
        elif r < 0.4:
            lo = (lo + int(rng.integers(0, 400))) % 4096
            words.append(0x6000 | lo)
        elif r < 0.55:
            words.append(0x0000 | coord(h) | int(rng.integers(0, 2)) << 11)   # y (+ system bit)
        elif r < 0.8:
            words.append(0x2000 | coord(w) | int(rng.integers(0, 2)) << 11)   # single CD event
        elif r < 0.87:
            words.append(0x3000 | coord(w - 24) | int(rng.integers(0, 2)) << 11)   # vector base
        elif r < 0.95:
            words.append((0x4000 if rng.random() < 0.5 else 0x5000) | int(rng.integers(0, 4096)))
        else:
            words.append(int(rng.choice([0x7000, 0xA000, 0xE000,
                                         0xF000])) | int(rng.integers(0, 4096)))
    return np.array(words[:n_words], dtype="<u2")


@pytest.mark.parametrize("size", [(16, 16), (128, 128), (640, 480), (2048, 2048), (5000, 100)])
def test_evt3_structured_fuzz_both_backends(size):
    """Vectors (also past x = 2047), wraps, late events, jumps, out-of-sensor events, undefined
    word types, odd lengths: the same frames, rejections, counters and decoder state."""
    rng = np.random.default_rng(size[0])
    w, h = size
    for trial in range(4):
        words = _random_evt3_stream(rng, 2500, t_jumps=trial % 2 == 1, w=w, h=h)
        cuts = np.unique(rng.integers(0, words.size, 40)).tolist()
        packets = []
        for a, b in zip([0, *cuts], [*cuts, words.size]):
            data = words[a:b].tobytes()
            r = rng.random()
            if r < 0.03:
                data += b"\x01"                                           # odd length
            elif r < 0.06:
                data = data + np.array([0x9000], "<u2").tobytes()         # undefined word type
            packets.append(("evt3", data, w, h, 0))
        both(packets)


def test_evt3_vector_past_2047_both_backends():
    """A vector running past x = 2047 on a 5000-wide sensor: rejected ("beyond 11 bits") by both
    backends (the per-packet reference accepts it: a documented difference)."""
    head = [0x8000 | 1, 0x6000 | 2, 0x0000 | 3]
    good = np.array(head + [0x3000 | 2030, 0x4FFF], "<u2").tobytes()             # x 2030..2041
    past = np.array([0x3000 | 2040, 0x4FFF, 0x2000 | 7], "<u2").tobytes()          # x 2040..2051
    pk = [("evt3", good, 5000, 100, 0), ("evt3", past, 5000, 100, 0),
          ("evt3", good[6:], 5000, 100, 0)]
    details = {}
    for backend in BACKENDS:
        binned(pk, backend=backend, details=details.setdefault(backend, {}))
        assert [r[0] for r in details[backend]["rejections"]] == [1]
        assert "beyond 11 bits" in details[backend]["rejections"][0][1]
    if NATIVE:
        same_details(details["numpy"], details["native"], pk)


def test_mono_structured_fuzz_both_backends():
    rng = np.random.default_rng(5)
    for w, h in ((128, 128), (346, 260), (16, 16)):
        packets, t = [], 10 * P
        for i in range(150):
            n = int(rng.integers(0, 200))
            x = rng.integers(0, w + (2 if rng.random() < 0.05 else 0), n)   # some outside
            y = rng.integers(0, h, n)
            tb = t + int(rng.integers(-P, P)) if rng.random() < 0.1 else t
            off = np.sort(rng.integers(0, 1 << 32 if rng.random() < 0.05 else 20_000_000, n))
            if rng.random() < 0.1 and n > 3:
                off[: n // 2] = off[: n // 2][::-1]                          # unsorted
            words = (off.astype(np.uint64) | (x.astype(np.uint64) << np.uint64(32))
                     | (y.astype(np.uint64) << np.uint64(48))
                     | (rng.integers(0, 2, n).astype(np.uint64) << np.uint64(63)))
            packets.append(("mono", words.astype("<u8").tobytes(), w, h, tb))
            t += (int(rng.integers(0, 3 * P)) if rng.random() < 0.97
                  else int(rng.integers(-60, 60)) * P)
        both(packets)


@needs_native
def test_native_payload_types_and_big_packets(sim):
    """bytes / array('B') (rclpy) / memoryview / ndarray payloads, and packets beyond the
    kernel's initial scratch (4096 events; evt3 vectors: 12 events per word)."""
    pk = _mono_packets(bench.compress_time(sim, 200), 50_000_000)       # ~30k events per packet
    assert max(len(p[1]) for p in pk) // 8 > 4096
    ref = both(pk)
    for conv in (lambda d: array.array("B", d), memoryview, lambda d: np.frombuffer(d, np.uint8)):
        assert_same(binned([(e, conv(d), w, h, tb) for e, d, w, h, tb in pk], backend="native"),
                    ref)
    vec = np.array([0x8000 | 1, 0x6000 | 2, 0x0000 | 3,
                    0x3000 | 0] + [0x4FFF] * 10 + [0x3000] + [0x4FFF] * 10,
                   dtype="<u2")
    big = np.tile(vec, 400)                     # 400 x 240 = 96,000 events in one packet
    pk3 = [("evt3", big.tobytes(), 128, 128, 0),
           ("evt3", np.array([0x8000 | 30, 0x6000], "<u2").tobytes(), 128, 128, 0)]
    both(pk3)
    assert_same(binned([(e, array.array("B", d), w, h, tb) for e, d, w, h, tb in pk3],
                       backend="native"),
                reference(pk3))


@needs_native
def test_native_frames_keep_their_histograms(sim):
    """Output histograms are reused only once nothing references them: frames held by the
    caller keep their values, and so do views of dropped frames' histograms; no one can change
    one in place (read-only, and cannot be made writable again)."""
    pk = _mono_packets(sim, 10_000_000)
    ref, _ = binned(pk, backend="numpy")
    b = FrameBinner(P, backend="native")
    held, views, got = [], [], []
    for i, (enc, data, w, h, tb) in enumerate(pk):
        for f in b.push(enc, data, w, h, tb):
            got.append((f.index, f.count, f.hist.copy()))
            if len(got) % 3 == 0:
                held.append((f, f.hist.copy()))
            elif len(got) % 3 == 1:
                views.append((f.hist[1:3], f.hist[1:3].copy()))        # a view only
            else:
                with pytest.raises(ValueError):
                    f.hist += 7.0                                      # read-only
                with pytest.raises(ValueError):
                    f.hist.flags.writeable = True
                with pytest.raises(ValueError):
                    f.hist[1:3].flags.writeable = True
    got += [(f.index, f.count, f.hist.copy()) for f in b.flush()]
    assert_same((got, ()), (ref, ()))
    for f, copy in held:
        np.testing.assert_array_equal(f.hist, copy)
    for v, copy in views:
        np.testing.assert_array_equal(v, copy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_histograms_are_read_only(sim, backend):
    b = FrameBinner(P, backend=backend)
    frames = [f for p in _mono_packets(sim, 10_000_000) for f in b.push(*p)] + b.flush()
    assert len(frames) > 10
    for f in frames:
        assert not f.hist.flags.writeable
        with pytest.raises(ValueError):
            f.hist[0, 0, 0] = 1.0


def _dense_sparse_packets(rng, w=128, h=128, k0=100):
    """mono packets, one per frame: dense (most bins: a full memset on reuse), medium (a few
    thousand bins: zeroed from the buffer's list), sparse, one event, and empty frames (gaps);
    an empty packet closes the last frame."""
    packets, k = [], k0
    for n in (30_000, 5, 2_000, 0, 1, 40_000, 300, 3_500, 0, 0, 7, 60_000, 1, 2_500, 12):
        if n:
            ts = k * P + np.sort(rng.integers(0, P, n))
            packets.append(("mono", encode_mono(_events(ts, rng, w, h), k * P), w, h, k * P))
        k += 1
    packets.append(("mono", encode_mono(_events([k * P], rng, w, h), k * P), w, h, k * P))
    packets.append(("mono", b"", w, h, (k + 1) * P))     # closes it (before another sensor size)
    return packets


@needs_native
@pytest.mark.parametrize("drop", [True, False])
def test_native_reused_buffers_equal_fresh_ones(drop):
    """A pooled output buffer reused after a dense frame, then a sparse one, ... gives exactly
    the histogram of a fresh buffer (numpy's); with the frames dropped at once, buffers are
    reused (a handful of them for every frame), and held frames keep theirs."""
    rng = np.random.default_rng(21)
    packets = _dense_sparse_packets(rng) + _dense_sparse_packets(rng, 640, 480, 120)
    ref = reference(packets)
    assert_same(binned(packets, backend="numpy"), ref)
    b = FrameBinner(P, backend="native")
    got, held, addresses = [], [], set()
    for p in packets:
        for f in b.push(*p):
            got.append((f.index, f.count, f.hist.copy()))
            addresses.add(f.hist.__array_interface__["data"][0])
            if not drop:
                held.append((f, got[-1][2]))
    for f in b.flush():
        got.append((f.index, f.count, f.hist.copy()))
        addresses.add(f.hist.__array_interface__["data"][0])
    assert_same((got, (b.rejected, b.late_events, b.resets)), ref)
    # (a packet closing several frames holds them all at once: a few more buffers then)
    assert len(got) > 25 and (len(addresses) <= 8 if drop else len(addresses) == len(got))
    for f, copy in held:
        np.testing.assert_array_equal(f.hist, copy)


@needs_native
def test_native_extension_equals_ctypes(sim, monkeypatch):
    """The per-packet call through the evbinext extension == through ctypes == numpy, in every
    detail (payload types, odd time bases, malformed packets, evt3)."""
    if native.load_ext() is None:
        pytest.skip(f"evbinext extension not built: {native.ext_why}")
    rng = np.random.default_rng(4)
    mono = _mono_packets(sim, 10_000_000)
    evt3 = [("evt3",) + p[:3] + (p[3],) for p in bench.packetize_evt3(sim, packet_ns=10_000_000)]
    odd = []
    for i, (enc, data, w, h, tb) in enumerate(mono[:60]):
        conv = (bytes, lambda d: array.array("B", d), memoryview,
                lambda d: array.array("b", d))[i % 4]
        odd.append((enc, conv(data), w, h, [tb, np.int64(tb), 1 << 70, float(tb), True][i % 5]))
        if i % 9 == 0:
            odd.append((enc, data + b"\x01", w, h, tb))
            odd.append((enc, _bad_coords(enc, tb), w, h, tb))
    streams = [mono, evt3, odd, _dense_sparse_packets(rng)]
    for packets in streams:
        ref = reference(packets)
        dn, de, dc = {}, {}, {}
        assert_same(binned(packets, backend="numpy", details=dn), ref)
        b = FrameBinner(P, backend="native")
        assert b.fast_path == "evbinext"
        assert_same(binned(packets, backend="native", details=de), ref)
        with monkeypatch.context() as m:
            m.setenv("EDGE_VLM_NO_NATIVE_EXT", "1")
            assert FrameBinner(P, backend="native").fast_path == "ctypes"
            assert_same(binned(packets, backend="native", details=dc), ref)
        assert de == dc
        same_details(dn, de, packets)


@needs_native
def test_native_odd_arguments_never_raise(sim):
    """time_base of another int type or beyond int64, empty packets: as the numpy path."""
    pk = _mono_packets(sim, 10_000_000)[:40]
    odd = []
    for i, (enc, data, w, h, tb) in enumerate(pk):
        odd.append((enc, data, w, h, np.int64(tb) if i % 3 else tb))
        if i % 7 == 0:
            odd.append((enc, data, w, h, 1 << 70))                  # rejected: time_base range
            odd.append(("evt3", np.array([0x8000 | i, 0x6000], "<u2").tobytes(), w, h, 1 << 70))
            odd.append((enc, b"", w, h, tb + 3 * P))
    both(odd)

