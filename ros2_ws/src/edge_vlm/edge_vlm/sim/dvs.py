"""Event generation: a log-intensity contrast-threshold DVS pixel model.

Per pixel the sensor keeps a reference log intensity ``ref``.  Between two
internal time steps the log intensity ``L`` is assumed to move linearly; each
crossing of ``ref + j * C`` (``j = 1 .. floor(|L - ref| / C)``) is an event
(ON if ``L`` rose), stamped at the linearly interpolated crossing time, and
``ref`` moves by ``n * C``.  ``C`` is a per-pixel threshold (mismatch); ON and
OFF crossings use ``C * sqrt(r)`` and ``C / sqrt(r)`` (``r`` = ON/OFF threshold
ratio).  A refractory period per pixel drops crossings closer than
``refractory`` to the previous emitted event (crossings inside a step are
equally spaced, so this is closed-form).  Background activity (Poisson,
uniform over pixels) and a few hot pixels (fixed per sensor) are added
independently.

Sensor realism (:func:`make_sensor`): seed 0 is the *nominal* sensor, the one the shipped
model and recordings were made with (N(0.2, 0.03) thresholds, symmetric ON/OFF, 0.5 ms
refractory period, 4 hot pixels, no photoreceptor low-pass, ns time stamps); its output
never changes.  Any other seed draws every parameter of :data:`SENSOR_RANGES` (threshold
mean and mismatch, ON/OFF ratio, refractory period, background-activity gain and polarity,
hot-pixel density, rates and polarity, photoreceptor cutoff, latency jitter) from the seed;
those sensors also stamp events in whole microseconds, like every real sensor.  The
photoreceptor is a first-order low-pass of log intensity whose cutoff is proportional to the
irradiance (bandwidth grows with photocurrent), so dim scenes blur and delay events.
docs/design.md ("Sensor model") gives the ranges and their sources.

Vectorization: per batch of steps only the pixels whose log intensity can
reach a threshold inside the batch (``max|L - ref| >= C``) are visited; the
loop runs over *time steps*, never over pixels or events.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from edge_vlm.events import EVENT_DTYPE


class ParamRange(NamedTuple):
    """Where a randomised sensor draws one parameter (uniform, or log-uniform if ``log``)."""

    lo: float
    hi: float
    log: bool
    unit: str
    nominal: str            # the value of the nominal sensor (seed 0), as text


#: the ranges of :func:`make_sensor` for seeds other than 0 (docs/design.md, "Sensor model")
SENSOR_RANGES: dict[str, ParamRange] = {
    "c_mean": ParamRange(0.10, 0.35, False, "log intensity", "0.2"),
    "c_sigma_rel": ParamRange(0.05, 0.25, False, "of c_mean", "0.15"),
    "on_off_ratio": ParamRange(0.6, 1.75, True, "C_on / C_off", "1"),
    "refractory_s": ParamRange(1e-4, 1e-3, True, "s", "5e-4"),
    "ba_gain": ParamRange(0.25, 2.5, True, "x the lighting's BA rate", "1"),
    "ba_on_share": ParamRange(0.4, 0.7, False, "of BA events", "0.5"),
    "hot_density": ParamRange(5e-6, 5e-4, True, "of pixels (count ~ Poisson)", "4 pixels"),
    "hot_gain": ParamRange(0.2, 2.0, True, "x the lighting's hot rate, per pixel",
                           "U(0.5, 2)"),
    "hot_on_prob": ParamRange(0.0, 1.0, False, "per hot pixel", "0 or 1"),
    "lp_hz": ParamRange(30.0, 3000.0, True, "Hz at irradiance 1", "none"),
    "jitter_s": ParamRange(1e-6, 1e-4, True, "s (half-normal sigma)", "0"),
}
#: time stamp resolution of every randomised sensor (the nominal one keeps ns)
REAL_T_RES_NS = 1000
#: a low-passed pixel whose output is this close to its input (log) has settled
LP_SETTLED = 1e-3


@dataclass(frozen=True)
class DVSSensor:
    """Fixed-pattern properties of one physical sensor (deterministic from its seed)."""

    width: int
    height: int
    threshold: np.ndarray      # (H*W,) float32 contrast threshold C per pixel (ON/OFF mean)
    hot_idx: np.ndarray        # (k,) flat pixel indices of hot pixels
    hot_gain: np.ndarray       # (k,) rate multiplier of each hot pixel
    hot_pol: np.ndarray        # (k,) uint8 polarity of each hot pixel (if hot_on_prob is None)
    refractory_ns: int
    on_off_ratio: float = 1.0  # C_on / C_off (geometric mean C)
    ba_gain: float = 1.0       # multiplies the lighting's background-activity rate
    ba_on_share: float = 0.5   # share of ON background events
    hot_on_prob: np.ndarray | None = None   # (k,) P(ON) of each hot pixel; None: hot_pol
    lp_hz: float = 0.0         # photoreceptor cutoff at irradiance 1 (0: no low-pass)
    jitter_ns: float = 0.0     # sigma of the half-normal readout latency added to events
    t_res_ns: int = 1          # time stamp resolution
    c_mean: float = 0.2        # the threshold distribution the per-pixel C were drawn from
    c_std: float = 0.03

    @property
    def threshold_on(self) -> np.ndarray:
        return (self.threshold * np.float32(math.sqrt(self.on_off_ratio))).astype(np.float32)

    @property
    def threshold_off(self) -> np.ndarray:
        return (self.threshold / np.float32(math.sqrt(self.on_off_ratio))).astype(np.float32)


class PixelEvents(NamedTuple):
    """Events by flat pixel index, in no particular order."""

    t: np.ndarray           # int64 ns
    idx: np.ndarray         # int64 flat pixel index (y * width + x)
    p: np.ndarray           # uint8 polarity


class _Draw(NamedTuple):
    """The scalar parameters of one sensor."""

    c_mean: float
    c_std: float
    refractory_s: float
    n_hot: int
    on_off_ratio: float = 1.0
    ba_gain: float = 1.0
    ba_on_share: float = 0.5
    lp_hz: float = 0.0
    jitter_s: float = 0.0


def draw_param(name: str, rng: np.random.Generator, size: int | None = None):
    """One draw (or ``size`` draws) of parameter ``name`` from :data:`SENSOR_RANGES`."""
    r = SENSOR_RANGES[name]
    if r.log:
        return np.exp(rng.uniform(math.log(r.lo), math.log(r.hi), size))
    return rng.uniform(r.lo, r.hi, size)


def _draw(seed: int, n_pixels: int) -> _Draw:
    """The scalar parameters of sensor ``seed`` (not 0), independent of its resolution."""
    rng = np.random.default_rng([0xD76, int(seed) % (1 << 64)])
    v = {k: float(draw_param(k, rng)) for k in ("c_mean", "c_sigma_rel", "on_off_ratio",
                                                 "refractory_s", "ba_gain", "ba_on_share",
                                                 "hot_density", "lp_hz", "jitter_s")}
    n_hot = min(int(rng.poisson(v["hot_density"] * n_pixels)), n_pixels)
    return _Draw(v["c_mean"], v["c_mean"] * v["c_sigma_rel"], v["refractory_s"], n_hot,
                 v["on_off_ratio"], v["ba_gain"], v["ba_on_share"], v["lp_hz"], v["jitter_s"])


@lru_cache(maxsize=16)
def make_sensor(width: int = 128, height: int = 128, seed: int = 0,
                c_mean: float | None = None, c_std: float | None = None,
                refractory_s: float | None = None, n_hot: int | None = None) -> DVSSensor:
    """Sensor ``seed``: 0 the nominal one, any other seed drawn from :data:`SENSOR_RANGES`.

    Per-pixel thresholds ``N(c_mean, c_std)`` (clipped at 0.05) and ``n_hot`` hot pixels;
    arguments given explicitly override the nominal or drawn values.
    """
    npx = width * height
    d = _draw(seed, npx) if seed else _Draw(0.2, 0.03, 5e-4, 4)
    d = d._replace(**{k: v for k, v in (("c_mean", c_mean), ("c_std", c_std),
                                        ("refractory_s", refractory_s), ("n_hot", n_hot))
                      if v is not None})
    rng = np.random.default_rng([0xD75, int(seed), width, height])
    c = np.clip(rng.normal(d.c_mean, d.c_std, npx), 0.05, None).astype(np.float32)
    c.setflags(write=False)
    hot = np.sort(rng.choice(npx, d.n_hot, replace=False))
    if not seed:
        return DVSSensor(width, height, c, hot, rng.uniform(0.5, 2.0, d.n_hot),
                         rng.integers(0, 2, d.n_hot).astype(np.uint8),
                         int(round(d.refractory_s * 1e9)), c_mean=d.c_mean, c_std=d.c_std)
    gain = draw_param("hot_gain", rng, d.n_hot)
    on_prob = draw_param("hot_on_prob", rng, d.n_hot)
    return DVSSensor(width, height, c, hot, gain, (on_prob >= 0.5).astype(np.uint8),
                     int(round(d.refractory_s * 1e9)), on_off_ratio=d.on_off_ratio,
                     ba_gain=d.ba_gain, ba_on_share=d.ba_on_share, hot_on_prob=on_prob,
                     lp_hz=d.lp_hz, jitter_ns=d.jitter_s * 1e9, t_res_ns=REAL_T_RES_NS,
                     c_mean=d.c_mean, c_std=d.c_std)


def _quantise(t: np.ndarray, t0: int, res: int) -> np.ndarray:
    """Times ``t`` (int64 ns) floored to the resolution ``res`` of a sensor started at ``t0``."""
    return t if res <= 1 else t - (t - t0) % res


class EventSimulator:
    """Stateful contrast-threshold simulator fed with batches of log-intensity images."""

    def __init__(self, sensor: DVSSensor, L0: np.ndarray, t0_ns: int, rng: np.random.Generator):
        C = sensor.threshold
        self.sensor = sensor
        self.C = C
        self.C_on, self.C_off = sensor.threshold_on, sensor.threshold_off
        self.symmetric = sensor.on_off_ratio == 1.0
        self.rng = rng                # init offsets now; readout jitter later
        # reference starts at a random point of the threshold interval (no initial burst)
        self.ref = (L0.ravel() + rng.uniform(-0.45, 0.45, C.shape) * C).astype(np.float32)
        self.L_prev = L0.ravel().astype(np.float32).copy()   # photoreceptor output
        self.L_in = self.L_prev.copy()                         # its input (low-pass)
        self.t0 = int(t0_ns)          # times are interpolated relative to t0 (float64 exact)
        self.t_prev = int(t0_ns)
        self.t_last = np.full(C.shape, -(1 << 62), dtype=np.int64)
        self._t: list[np.ndarray] = []
        self._i: list[np.ndarray] = []
        self._p: list[np.ndarray] = []

    def step(self, t_ns: np.ndarray, L: np.ndarray, idx: np.ndarray | None = None) -> None:
        """Advance through steps ending at ``t_ns`` (B,) with log intensities ``L`` (B, M).

        ``idx`` (M,) are the flat pixel indices of the columns of ``L`` (default:
        all pixels); pixels not listed keep their previous log intensity.
        """
        t_ns = np.asarray(t_ns, dtype=np.int64)
        if idx is None:
            idx = np.arange(self.C.size)
        if self.sensor.lp_hz > 0:
            idx, L = self._lowpass(t_ns, L, idx)
        ref, Lp = self.ref[idx], self.L_prev[idx]
        lo = np.minimum(L.min(axis=0), Lp)
        hi = np.maximum(L.max(axis=0), Lp)
        act = np.flatnonzero((hi - ref >= self.C_on[idx]) | (ref - lo >= self.C_off[idx]))
        if act.size:
            self._run(idx[act], t_ns, L[:, act])
        self.L_prev[idx] = L[-1]
        self.t_prev = int(t_ns[-1])

    def _lowpass(self, t_ns: np.ndarray, L: np.ndarray, idx: np.ndarray):
        """The photoreceptor: first-order low-pass of log intensity, cutoff ``lp_hz`` times the
        irradiance, per pixel and step (exact for an input held over each step).  Pixels not
        in ``idx`` that have not settled yet join the batch with their last input."""
        lag = np.flatnonzero(np.abs(self.L_prev - self.L_in) > LP_SETTLED)
        lag = lag[~np.isin(lag, idx)]
        if lag.size:
            idx = np.concatenate([idx, lag])
            L = np.concatenate([L, np.broadcast_to(self.L_in[lag], (L.shape[0], lag.size))], 1)
        self.L_in[idx] = L[-1]
        dt = np.diff(np.concatenate([[self.t_prev], t_ns])) / 1e9
        w = 2 * math.pi * self.sensor.lp_hz
        y = self.L_prev[idx]
        out = np.empty(L.shape, np.float32)
        for k in range(L.shape[0]):
            a = np.exp(-w * dt[k] * np.exp(L[k]))
            y = out[k] = L[k] + a * (y - L[k])
        return idx, out

    def _run(self, act: np.ndarray, t_ns: np.ndarray, La: np.ndarray) -> None:
        """Sequential reference update over the steps, then vectorized event emission."""
        c_on, c_off = self.C_on[act], self.C_off[act]
        inv_on, inv_off = 1.0 / c_on, 1.0 / c_off
        ref = self.ref[act]
        rec_k, rec_f, rec_n, rec_r = [], [], [], []
        for k in range(La.shape[0]):          # loop over time steps only
            d = La[k] - ref
            # signed number of threshold crossings
            n = np.trunc(d * (inv_on if self.symmetric else np.where(d > 0, inv_on, inv_off)))
            f = np.flatnonzero(n)
            if f.size:
                nf = n[f]
                rec_k.append(np.full(f.size, k))
                rec_f.append(f)
                rec_n.append(nf)
                rec_r.append(ref[f])
                ref[f] += nf * (c_on[f] if self.symmetric else
                                np.where(nf > 0, c_on[f], c_off[f]))
        self.ref[act] = ref
        if rec_k:
            self._emit(act, t_ns, La, np.concatenate(rec_k), np.concatenate(rec_f),
                       np.concatenate(rec_n), np.concatenate(rec_r))

    def _emit(self, act, t_ns, La, K, F, N, R0) -> None:
        """Events of all (step, pixel) crossings of a batch, with interpolated times and the
        refractory period."""
        refr = float(self.sensor.refractory_ns)
        # order records per pixel, then time (for the refractory period across steps)
        o = np.lexsort((K, F))
        K, F, N, R0 = K[o], F[o], N[o], R0[o]
        Cf = np.where(N > 0, self.C_on[act[F]], self.C_off[act[F]]).astype(np.float64)
        Lk = La[K, F].astype(np.float64)
        Lp = np.where(K > 0, La[np.maximum(K - 1, 0), F], self.L_prev[act[F]]).astype(np.float64)
        rel = t_ns - self.t0
        tk = rel[K].astype(np.float64)
        tp = np.where(K > 0, rel[np.maximum(K - 1, 0)], self.t_prev - self.t0).astype(np.float64)
        sgn = np.sign(N)
        nf = np.abs(N).astype(np.int64)
        dL = np.maximum(np.abs(Lk - Lp), 1e-12)
        dt = tk - tp
        # crossings inside a step are equally spaced: first at t1, then every `gap`
        t1 = tp + np.clip((R0 + sgn * Cf - Lp) * sgn / dL, 0.0, 1.0) * dt
        gap = np.maximum(Cf / dL * dt, 1e-3)
        # time of the previous crossing of the same pixel (earlier record, or the state)
        last_cross = t1 + (nf - 1) * gap
        first = np.ones(F.size, bool)
        first[1:] = F[1:] != F[:-1]
        t_last = np.empty(F.size)
        t_last[first] = np.maximum(self.t_last[act[F[first]]] - self.t0, -(1 << 40))
        t_last[~first] = last_cross[:-1][~first[1:]]
        # refractory: first allowed crossing j0, then every m-th crossing
        j0 = np.maximum(0.0, np.ceil((t_last + refr - t1) / gap)).astype(np.int64)
        m = np.maximum(1.0, np.ceil(refr / gap)).astype(np.int64)
        cnt = np.where(j0 < nf, (nf - 1 - j0) // m + 1, 0)
        tot = int(cnt.sum())
        if tot:
            rep = np.repeat(np.arange(F.size), cnt)
            q = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            te = t1[rep] + (j0[rep] + q * m[rep]) * gap[rep]
            self._t.append(self._readout(np.minimum(te, tk[rep] - 1).astype(np.int64)
                                         + self.t0, int(t_ns[-1]) - 1))
            self._i.append(act[F[rep]])
            self._p.append((sgn[rep] > 0).astype(np.uint8))
        # state: time of the last kept event of each pixel (at the pixel, before readout)
        has = cnt > 0
        kept_last = np.minimum(t1 + (j0 + (cnt - 1) * m) * gap, tk - 1)
        self.t_last[act[F[has]]] = kept_last[has].astype(np.int64) + self.t0

    def _readout(self, t: np.ndarray, t_max: int) -> np.ndarray:
        """Pixel event times -> stamps: half-normal readout latency (capped at ``t_max``, the
        end of the batch), then the sensor's time stamp resolution."""
        s = self.sensor
        if s.jitter_ns > 0:
            lat = np.abs(self.rng.normal(0.0, s.jitter_ns, t.size))
            t = np.minimum(t + np.rint(lat).astype(np.int64), t_max)
        return _quantise(t, self.t0, s.t_res_ns)

    def signal(self) -> PixelEvents:
        """All signal events so far, unsorted."""
        if not self._t:
            return PixelEvents(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8))
        return PixelEvents(np.concatenate(self._t), np.concatenate(self._i),
                           np.concatenate(self._p))


def _polarities(share: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` polarities, ON with probability ``share`` (a fair coin draws integers)."""
    if share == 0.5:
        return rng.integers(0, 2, n).astype(np.uint8)
    return (rng.random(n) < share).astype(np.uint8)


def noise_events(sensor: DVSSensor, t0_ns: int, t1_ns: int, ba_rate_hz: float,
                 hot_rate_hz: float, rng: np.random.Generator) -> PixelEvents:
    """Background activity (Poisson, ``ba_rate_hz`` times the sensor's ``ba_gain`` per pixel)
    and hot-pixel events (``hot_rate_hz`` times each pixel's gain) in [t0, t1)."""
    dur = max(0, t1_ns - t0_ns) / 1e9
    npx = sensor.width * sensor.height
    n_ba = int(rng.poisson(ba_rate_hz * sensor.ba_gain * npx * dur))
    n_hot = rng.poisson(hot_rate_hz * sensor.hot_gain * dur)
    idx = np.concatenate([rng.integers(0, npx, n_ba), np.repeat(sensor.hot_idx, n_hot)])
    ba_pol = _polarities(sensor.ba_on_share, n_ba, rng)
    if sensor.hot_on_prob is None:
        hot_pol = np.repeat(sensor.hot_pol, n_hot)
    else:
        hot_pol = (rng.random(int(n_hot.sum())) < np.repeat(sensor.hot_on_prob, n_hot))
    pol = np.concatenate([ba_pol, hot_pol.astype(np.uint8)])
    t = rng.integers(t0_ns, max(t1_ns, t0_ns + 1), idx.size, dtype=np.int64)
    return PixelEvents(_quantise(t, t0_ns, sensor.t_res_ns), idx.astype(np.int64), pol)


def assemble(parts: list[PixelEvents], width: int) -> np.ndarray:
    """Pixel events -> one time-sorted EVENT_DTYPE array (stable, deterministic)."""
    t = np.concatenate([p.t for p in parts])
    i = np.concatenate([p.idx for p in parts])
    pol = np.concatenate([p.p for p in parts])
    order = np.argsort(t, kind="stable")
    ev = np.zeros(t.size, dtype=EVENT_DTYPE)  # zeroed: padding bytes are deterministic too
    ev["t"] = t[order]
    i = i[order]
    ev["x"] = i % width
    ev["y"] = i // width
    ev["p"] = pol[order]
    return ev
