"""Event generation: a log-intensity contrast-threshold DVS pixel model.

Per pixel the sensor keeps a reference log intensity ``ref``.  Between two
internal time steps the log intensity ``L`` is assumed to move linearly; each
crossing of ``ref + j * C`` (``j = 1 .. floor(|L - ref| / C)``) is an event
(ON if ``L`` rose), stamped at the linearly interpolated crossing time, and
``ref`` moves by ``n * C``.  ``C`` is a per-pixel threshold drawn once per
sensor seed from ``N(0.2, 0.03)`` (mismatch).  A refractory period per pixel
drops crossings closer than ``refractory`` to the previous emitted event
(crossings inside a step are equally spaced, so this is closed-form).
Background activity (Poisson, uniform over pixels) and a few hot pixels
(fixed per sensor seed) are added independently.

Vectorization: per batch of steps only the pixels whose log intensity can
reach a threshold inside the batch (``max|L - ref| >= C``) are visited; the
loop runs over *time steps*, never over pixels or events.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from edge_vlm.events import EVENT_DTYPE


@dataclass(frozen=True)
class DVSSensor:
    """Fixed-pattern properties of one physical sensor (deterministic from its seed)."""

    width: int
    height: int
    threshold: np.ndarray      # (H*W,) float32 contrast threshold C per pixel
    hot_idx: np.ndarray        # (k,) flat pixel indices of hot pixels
    hot_gain: np.ndarray       # (k,) rate multiplier of each hot pixel
    hot_pol: np.ndarray        # (k,) uint8 polarity of each hot pixel
    refractory_ns: int


class PixelEvents(NamedTuple):
    """Events by flat pixel index, in no particular order."""

    t: np.ndarray           # int64 ns
    idx: np.ndarray         # int64 flat pixel index (y * width + x)
    p: np.ndarray           # uint8 polarity


@lru_cache(maxsize=16)
def make_sensor(width: int = 128, height: int = 128, seed: int = 0, c_mean: float = 0.2,
                c_std: float = 0.03, refractory_s: float = 5e-4, n_hot: int = 4) -> DVSSensor:
    """Sensor with per-pixel thresholds ``N(c_mean, c_std)`` and ``n_hot`` hot pixels."""
    rng = np.random.default_rng([0xD75, int(seed), width, height])
    c = np.clip(rng.normal(c_mean, c_std, width * height), 0.05, None).astype(np.float32)
    c.setflags(write=False)
    hot = rng.choice(width * height, n_hot, replace=False)
    return DVSSensor(width, height, c, np.sort(hot), rng.uniform(0.5, 2.0, n_hot),
                     rng.integers(0, 2, n_hot).astype(np.uint8), int(round(refractory_s * 1e9)))


class EventSimulator:
    """Stateful contrast-threshold simulator fed with batches of log-intensity images."""

    def __init__(self, sensor: DVSSensor, L0: np.ndarray, t0_ns: int, rng: np.random.Generator):
        C = sensor.threshold
        self.sensor = sensor
        self.C = C
        # reference starts at a random point of the threshold interval (no initial burst)
        self.ref = (L0.ravel() + rng.uniform(-0.45, 0.45, C.shape) * C).astype(np.float32)
        self.L_prev = L0.ravel().astype(np.float32).copy()
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
        C, ref, Lp = self.C[idx], self.ref[idx], self.L_prev[idx]
        lo = np.minimum(L.min(axis=0), Lp)
        hi = np.maximum(L.max(axis=0), Lp)
        act = np.flatnonzero((hi - ref >= C) | (ref - lo >= C))
        if act.size:
            self._run(idx[act], t_ns, L[:, act])
        self.L_prev[idx] = L[-1]
        self.t_prev = int(t_ns[-1])

    def _run(self, act: np.ndarray, t_ns: np.ndarray, La: np.ndarray) -> None:
        """Sequential reference update over the steps, then vectorized event emission."""
        C = self.C[act]
        inv_c = 1.0 / C
        ref = self.ref[act]
        rec_k, rec_f, rec_n, rec_r = [], [], [], []
        for k in range(La.shape[0]):          # loop over time steps only
            n = np.trunc((La[k] - ref) * inv_c)   # signed number of threshold crossings
            f = np.flatnonzero(n)
            if f.size:
                nf = n[f]
                rec_k.append(np.full(f.size, k))
                rec_f.append(f)
                rec_n.append(nf)
                rec_r.append(ref[f])
                ref[f] += nf * C[f]
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
        Cf = self.C[act[F]].astype(np.float64)
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
            self._t.append(np.minimum(te, tk[rep] - 1).astype(np.int64) + self.t0)
            self._i.append(act[F[rep]])
            self._p.append((sgn[rep] > 0).astype(np.uint8))
        # state: time of the last kept event of each pixel
        has = cnt > 0
        kept_last = np.minimum(t1 + (j0 + (cnt - 1) * m) * gap, tk - 1)
        self.t_last[act[F[has]]] = kept_last[has].astype(np.int64) + self.t0

    def signal(self) -> PixelEvents:
        """All signal events so far, unsorted."""
        if not self._t:
            return PixelEvents(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8))
        return PixelEvents(np.concatenate(self._t), np.concatenate(self._i),
                           np.concatenate(self._p))


def noise_events(sensor: DVSSensor, t0_ns: int, t1_ns: int, ba_rate_hz: float,
                 hot_rate_hz: float, rng: np.random.Generator) -> PixelEvents:
    """Background-activity (Poisson, ``ba_rate_hz`` per pixel) and hot-pixel events in [t0, t1)."""
    dur = max(0, t1_ns - t0_ns) / 1e9
    npx = sensor.width * sensor.height
    n_ba = int(rng.poisson(ba_rate_hz * npx * dur))
    n_hot = rng.poisson(hot_rate_hz * sensor.hot_gain * dur)
    idx = np.concatenate([rng.integers(0, npx, n_ba), np.repeat(sensor.hot_idx, n_hot)])
    pol = np.concatenate([rng.integers(0, 2, n_ba).astype(np.uint8),
                          np.repeat(sensor.hot_pol, n_hot)])
    t = rng.integers(t0_ns, max(t1_ns, t0_ns + 1), idx.size, dtype=np.int64)
    return PixelEvents(t, idx.astype(np.int64), pol)


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
