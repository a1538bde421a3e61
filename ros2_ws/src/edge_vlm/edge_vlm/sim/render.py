"""Scene rendering: textured room, articulated 2D figure, lighting, RGB frames.

The scene is rendered as linear *reflectance* in [0, 1] (gray for the DVS,
RGB for frames); :class:`LightingModel` turns reflectance into irradiance
(``I = gain * R + offset``, times a 100 Hz flicker for ``fluorescent``).

Rendering is vectorized over time *and* pixels: a batch of T poses is drawn
at once, every limb being an anti-aliased capsule (segment + radius) whose
coverage ``clip(r - dist + 0.5, 0, 1)`` is evaluated only inside the limb's
bounding box swept over the batch.  The torso, head and room never move and
are drawn once (:func:`render_static`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_vlm.sim.gestures import (FOREARM, HEAD_R, HEAD_UP, R_FORE, R_HAND, R_UPPER, TORSO_R,
    Subject, _hsv, luma)

LIGHTING_NAMES = ("lab", "fluorescent", "natural")


@dataclass(frozen=True)
class LightingSpec:
    """One of the three recording conditions."""

    name: str
    illum: float          # mean irradiance scale
    contrast: float       # reflectance contrast kept (1 = full)
    gradient: float       # left-right illumination gradient (window light)
    flicker_amp: float    # global relative flicker amplitude (100 Hz)
    lamp_amp: float       # extra flicker amplitude at the lamp spot
    flicker_hz: float
    ba_rate_hz: float     # background-activity noise, events / pixel / s
    hot_rate_hz: float    # hot pixel event rate
    frame_noise: float    # RGB frame noise sigma (of 255)


LIGHTINGS: dict[str, LightingSpec] = {
    "lab": LightingSpec("lab", 1.0, 1.0, 0.05, 0.0, 0.0, 100.0, 0.05, 120.0, 1.0),
    "fluorescent": LightingSpec("fluorescent", 0.55, 0.85, 0.0, 0.025, 0.09, 100.0, 0.15, 120.0,
                                2.5),
    "natural": LightingSpec("natural", 0.25, 0.65, 0.35, 0.0, 0.0, 100.0, 0.5, 120.0, 5.0),
}

HAND_EXT = 2.5  # bu the hand extends beyond the wrist joint

#: DVS log offset: ``L = log(I + LOG_EPS)`` (dark current; compresses dim contrast).
LOG_EPS = 0.02


def lighting_spec(name: str) -> LightingSpec:
    try:
        return LIGHTINGS[name]
    except KeyError:
        raise ValueError(f"unknown lighting {name!r}; expected one of {LIGHTING_NAMES}") from None


class LightingModel:
    """Per-pixel irradiance maps of one lighting condition (static gain/offset + flicker)."""

    def __init__(self, spec: LightingSpec, width: int, height: int, rng: np.random.Generator):
        self.spec = spec
        xs = (np.arange(width) + 0.5) / width
        ys = (np.arange(height) + 0.5) / height
        field = (spec.illum
                 * (1.0 + spec.gradient * (xs[None, :] - 0.5) * 2 * rng.choice([-1, 1]))
                 * np.ones((height, 1)))
        mean_r = 0.4  # contrast is compressed towards a mid gray
        self.gain = (field * spec.contrast).astype(np.float32)
        self.offset = (field * (1 - spec.contrast) * mean_r).astype(np.float32)
        self.flicker = None
        if spec.flicker_amp > 0 or spec.lamp_amp > 0:
            lx, ly = rng.uniform(0.15, 0.85), rng.uniform(0.0, 0.2)
            sig = rng.uniform(0.08, 0.12)
            spot = np.exp(-((xs[None, :] - lx) ** 2 + (ys[:, None] - ly) ** 2) / (2 * sig ** 2))
            self.flicker = (spec.flicker_amp + spec.lamp_amp * spot).astype(np.float32)
            self.flicker_phase = float(rng.uniform(0, 2 * np.pi))

    def irradiance(self, refl: np.ndarray, t_s: np.ndarray | None = None,
                   window: tuple[slice, slice] | None = None) -> np.ndarray:
        """Reflectance (T, h, w[, 3]) -> irradiance; flicker applied at times ``t_s`` (s).

        ``window`` = (rows, cols) slices when ``refl`` is a crop of the sensor.
        """
        win = window if window is not None else (slice(None), slice(None))
        rgb = refl.ndim == 4
        g, o = self.gain[win], self.offset[win]
        if rgb:
            g, o = g[..., None], o[..., None]
        out = refl * g
        out += o
        if self.flicker is not None and t_s is not None:
            f = 1.0 + self.flicker[win][None] * self.flicker_wave(t_s)[:, None, None]
            out *= f[..., None] if rgb else f
        return out

    def flicker_wave(self, t_s: np.ndarray) -> np.ndarray:
        """cos of the 100 Hz flicker at absolute times ``t_s`` (s), float32 (T,)."""
        phase = 2 * np.pi * self.spec.flicker_hz * np.asarray(t_s) + self.flicker_phase
        return np.cos(phase).astype(np.float32)


# --------------------------------------------------------------------------
# static scene
# --------------------------------------------------------------------------

def _color_with_luma(rng: np.random.Generator, target: float) -> np.ndarray:
    c = _hsv(rng.uniform(), rng.uniform(0.05, 0.5), 1.0)
    return np.clip(c * target / max(float(luma(c)), 1e-3), 0.0, 1.0)


def _soft_box(xs: np.ndarray, ys: np.ndarray, x0: float, y0: float, w: float,
              h: float) -> np.ndarray:
    """Anti-aliased coverage (H, W) of the box [x0, x0 + w) x [y0, y0 + h) (image fractions)
    over the pixel fractions ``xs`` (1, W), ``ys`` (H, 1)."""
    width, height = xs.shape[1], ys.shape[0]
    return (np.clip((xs - x0) * width + 0.5, 0, 1) * np.clip((x0 + w - xs) * width + 0.5, 0, 1)
            * np.clip((ys - y0) * height + 0.5, 0, 1)
            * np.clip((y0 + h - ys) * height + 0.5, 0, 1))


def render_room(subject: Subject, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Textured static background (H, W, 3) reflectance contrasting with the subject's shirt."""
    shirt_l, skin_l = luma(np.array([subject.shirt, subject.skin]))
    cand = rng.uniform(0.06, 0.92, 12)   # wall brightness far from the shirt, and from the skin
    target = float(cand[np.argmax(np.minimum(np.abs(cand - shirt_l), 2 * np.abs(cand - skin_l)))])
    wall = _color_with_luma(rng, target)
    xs = np.arange(width, dtype=np.float32)[None, :] / width
    ys = np.arange(height, dtype=np.float32)[:, None] / height
    shade = np.zeros((height, width), np.float32)
    for _ in range(4):  # smooth low-frequency shading
        kx, ky = rng.uniform(0.5, 3.0, 2)
        shade += rng.uniform(0.01, 0.03) * np.cos(2 * np.pi * (kx * xs + ky * ys)
                                                  + rng.uniform(0, 6.3))
    img = wall[None, None, :] * (1.0 + shade[..., None])
    for _ in range(int(rng.integers(2, 5))):  # furniture, doors, posters (soft-edged boxes)
        x0, y0 = rng.uniform(-0.1, 0.9), rng.uniform(-0.1, 0.8)
        w, h = rng.uniform(0.08, 0.35), rng.uniform(0.08, 0.5)
        m = _soft_box(xs, ys, x0, y0, w, h)
        col = _color_with_luma(rng, float(np.clip(target + rng.uniform(-0.2, 0.2), 0.05, 0.95)))
        img = img * (1 - m[..., None]) + col * m[..., None]
    img *= 1.0 + rng.normal(0.0, 0.05, (height, width, 1))  # fine static texture
    return np.clip(img, 0.02, 1.0).astype(np.float32)


def _bricks(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A brick-wall shading factor (H, W): rows of 4-7 px, bricks of 5-12 px, each brick's
    brightness log-normal (sigma 0.22)."""
    out = np.ones((height, width), np.float32)
    y = 0
    while y < height:
        h = int(rng.integers(4, 8))
        edges = np.cumsum(rng.integers(5, 13, width // 5 + 2)) - int(rng.integers(0, 12))
        brick = np.searchsorted(edges, np.arange(width), side="right")
        out[y:y + h] = np.exp(rng.normal(0.0, 0.22, brick.max() + 1))[brick][None]
        y += h
    return out


def add_clutter(room: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The room of the scenes beyond the gestures: ``room`` on a brick wall, plus a tiled floor
    and shelves of small objects, so that the image has texture nearly everywhere (a moving
    camera then makes events over most of the image, as in a real room)."""
    height, width = room.shape[:2]
    xs = np.arange(width, dtype=np.float32)[None, :] / width
    ys = np.arange(height, dtype=np.float32)[:, None] / height
    img = room * _bricks(height, width, rng)[..., None]
    wall = float(luma(room.reshape(-1, 3).mean(0)))
    floor_y = rng.uniform(0.8, 0.88)
    m = _soft_box(xs, ys, -0.1, floor_y, 1.2, 0.3)
    floor = _color_with_luma(rng, float(np.clip(wall * rng.choice([0.55, 1.6]), 0.05, 0.9)))
    tiles = 1.0 + 0.18 * np.sign(np.sin(2 * np.pi * (xs * width / rng.uniform(9, 14)
                                                      + rng.uniform(0, 1))))
    img = img * (1 - m[..., None]) + (floor * tiles[..., None]) * m[..., None]
    for _ in range(int(rng.integers(40, 70))):  # books, boxes, frames, switches
        x0, y0 = rng.uniform(-0.02, 0.98), rng.uniform(0.0, floor_y - 0.02)
        w, h = rng.uniform(0.02, 0.08), rng.uniform(0.02, 0.1)
        col = _color_with_luma(rng, float(np.clip(wall * rng.uniform(0.45, 1.8), 0.04, 0.95)))
        m = _soft_box(xs, ys, x0, y0, w, h)
        img = img * (1 - m[..., None]) + col * m[..., None]
    return np.clip(img, 0.02, 1.0).astype(np.float32)


class Capsules(NamedTuple):
    """T poses of K capsules (segment + radius), drawn in order: later ones on top."""

    a: np.ndarray           # (T, K, 2) first end points, px (x, y)
    b: np.ndarray           # (T, K, 2) second end points, px
    r: np.ndarray           # (K,) radii, px
    color: np.ndarray       # (K, 3) RGB reflectance


def draw_capsules(base: np.ndarray, caps: Capsules,
                  offset: np.ndarray | None = None) -> np.ndarray:
    """Draw T poses of capsules over a static image: ``base`` (h, w, 3) RGB or (h, w) gray
    reflectance, possibly a crop whose top-left pixel is at ``offset`` (x, y). Returns
    (T, h, w[, 3]) float32."""
    rgb = base.ndim == 3
    out = np.repeat(base[None], caps.a.shape[0], axis=0)
    off = np.zeros(2) if offset is None else np.asarray(offset, np.float64)
    for k in range(caps.r.size):
        _draw(out, caps.a[:, k] - off, caps.b[:, k] - off, float(caps.r[k]),
              _gray(caps.color[k], rgb))
    return out


def shift_images(img: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``img`` (H, W[, C]) moved by the (sub-pixel) shifts ``shift`` (T, 2) px (x, y),
    bilinear, edges replicated: (T, H, W[, C]) float32 (camera ego-motion)."""
    height, width = img.shape[:2]
    pad = int(np.ceil(np.abs(shift).max(initial=0.0))) + 2
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (img.ndim - 2)
    p = np.pad(np.asarray(img, np.float32), widths, mode="edge")
    out = np.empty((shift.shape[0],) + img.shape, np.float32)
    for i, (dx, dy) in enumerate(np.asarray(shift, np.float64)):
        # out(x, y) = img(x - dx, y - dy)
        ix, iy = int(np.floor(-dx)), int(np.floor(-dy))
        fx, fy = np.float32(-dx - ix), np.float32(-dy - iy)
        x0, y0 = pad + ix, pad + iy
        top = p[y0:y0 + height, x0:x0 + width] * (1 - fx) + p[y0:y0 + height,
                                                             x0 + 1:x0 + 1 + width] * fx
        bot = (p[y0 + 1:y0 + 1 + height, x0:x0 + width] * (1 - fx)
               + p[y0 + 1:y0 + 1 + height, x0 + 1:x0 + 1 + width] * fx)
        out[i] = top * (1 - fy) + bot * fy
    return out


def capsule_coverage(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray,
                     r: float) -> np.ndarray:
    """Anti-aliased coverage of capsules a->b (T, 2) of radius r over pixel centres.

    ``px`` (w,), ``py`` (h,) are pixel-centre coordinates; returns (T, h, w) float32.
    """
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = (b[:, 0] - a[:, 0])[:, None, None], (b[:, 1] - a[:, 1])[:, None, None]
    qx, qy = px[None, None, :] - ax, py[None, :, None] - ay
    den = np.maximum(dx * dx + dy * dy, 1e-9)
    s = np.clip((qx * dx + qy * dy) / den, 0.0, 1.0)
    ex, ey = qx - s * dx, qy - s * dy
    return np.clip(r + 0.5 - np.sqrt(ex * ex + ey * ey), 0.0, 1.0)


def _draw(out: np.ndarray, a: np.ndarray, b: np.ndarray, r: float, color) -> None:
    """Composite capsules (one per image of ``out`` (T, H, W[, C])) in place."""
    T, H, W = out.shape[:3]
    lo = np.floor(np.minimum(a.min(0), b.min(0)) - r - 1).astype(int)
    hi = np.ceil(np.maximum(a.max(0), b.max(0)) + r + 2).astype(int)
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], W), min(hi[1], H)
    if x1 <= x0 or y1 <= y0:
        return
    px = np.arange(x0, x1, dtype=np.float32) + 0.5
    py = np.arange(y0, y1, dtype=np.float32) + 0.5
    cov = capsule_coverage(px, py, a.astype(np.float32), b.astype(np.float32), np.float32(r))
    view = out[:, y0:y1, x0:x1]
    if out.ndim == 4:
        cov = cov[..., None]
    view += cov * (np.asarray(color, np.float32) - view)


def _gray(color, rgb: bool):
    c = np.asarray(color, np.float32)
    return c if rgb else np.float32(luma(c))


def render_static(subject: Subject, room: np.ndarray, width: int, height: int) -> np.ndarray:
    """Room + torso + neck + head (H, W, 3) reflectance; these never move."""
    ppu, cx, sy, _ = subject.geometry(width, height)
    img = room[None].copy()
    one = lambda x, y: np.array([[x, y]], np.float64)  # noqa: E731
    shirt, skin, hair = subject.shirt, subject.skin, subject.hair
    _draw(img, one(cx, sy + 9 * ppu), one(cx, height + 40 * ppu), TORSO_R * ppu, shirt)
    _draw(img, one(cx - 12 * ppu, sy + 2 * ppu), one(cx + 12 * ppu, sy + 2 * ppu), 5.0 * ppu,
          shirt)
    _draw(img, one(cx, sy - 2 * ppu), one(cx, sy - 10 * ppu), 3.2 * ppu, skin)
    hy = sy - HEAD_UP * ppu
    _draw(img, one(cx, hy - 2.5 * ppu), one(cx, hy - 2.5 * ppu), HEAD_R * ppu, hair)
    _draw(img, one(cx, hy + 0.5 * ppu), one(cx, hy + 0.5 * ppu), (HEAD_R - 0.8) * ppu, skin)
    return img[0]


def render_figure(base: np.ndarray, joints_xy: np.ndarray, subject: Subject,
                  ppu: float) -> np.ndarray:
    """Draw the arms of T poses over a static image.

    ``base`` is (h, w, 3) RGB or (h, w) gray reflectance (possibly a crop: then
    ``joints_xy`` must be given relative to the crop), ``joints_xy`` is
    (T, 2, 3, 2) pixels.  Returns (T, h, w[, 3]) float32.
    """
    rgb = base.ndim == 3
    out = np.repeat(base[None], joints_xy.shape[0], axis=0)
    sleeve = subject.skin if subject.short_sleeves else tuple(0.9 * np.asarray(subject.shirt))
    for arm in (0, 1):
        s, e, h = joints_xy[:, arm, 0], joints_xy[:, arm, 1], joints_xy[:, arm, 2]
        tip = h + (h - e) * (HAND_EXT / FOREARM)
        _draw(out, s, e, R_UPPER * ppu, _gray(subject.shirt, rgb))
        _draw(out, e, h, R_FORE * ppu, _gray(sleeve, rgb))
        _draw(out, h, tip, R_HAND * ppu, _gray(subject.skin, rgb))
    return out


def figure_pad(ppu: float) -> float:
    """Pixels the drawn arms extend beyond their joints (for crop windows)."""
    return (R_HAND + HAND_EXT) * ppu + 2.0


_GAMMA_LUT = (255.0 * np.linspace(0.0, 1.0, 4096) ** (1 / 2.2)).astype(np.float32)


def to_rgb8(irr: np.ndarray, spec: LightingSpec, rng: np.random.Generator) -> np.ndarray:
    """Irradiance (T, H, W, 3) -> uint8 frames (partial auto-exposure, gamma 2.2, sensor noise).

    Noise: windows at random offsets into one Gaussian pool per call (cheap, seeded).
    """
    q = np.clip(irr * np.float32(4095 * 0.95 / spec.illum ** 0.6), 0, 4095).astype(np.int16)
    x = np.take(_GAMMA_LUT, q)
    per = int(np.prod(x.shape[1:]))
    pool = rng.standard_normal(per + per // 2, dtype=np.float32) * np.float32(spec.frame_noise)
    for i, o in enumerate(rng.integers(0, per // 2, x.shape[0])):
        x[i] += pool[o:o + per].reshape(x.shape[1:])
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
