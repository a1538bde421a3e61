"""Kinematics of the 11 DVS128 Gesture classes and procedurally varied subjects.

Conventions
-----------
* Image coordinates: x to the right, y **down**, pixels.  Angles are measured
  in image coordinates from +x towards +y, so an *increasing* angle turns
  clockwise **on screen**.
* The subject faces the camera, so the subject's **right** arm appears on the
  image's **left** (arm index 0) and the subject's left arm on the image's
  right (arm index 1).  "right hand wave" therefore produces motion on the
  left half of the figure.
* "clockwise" in the class names is as seen **by the subject** (the way the
  instruction "rotate your right arm clockwise" is meant), which the camera,
  looking back at the subject, sees as counter-clockwise: on screen the arm
  angle decreases.  Flip :data:`CLOCKWISE_AS_SEEN_BY` to change that.
* Each arm is a 2-link chain shoulder -> elbow -> hand described by two
  absolute angles (upper arm, forearm).  Gestures are written in an arm's
  *canonical frame*: origin at that arm's shoulder, +x pointing towards the
  body midline (inwards), +y down.  For the right arm (image left) the
  canonical frame is the image frame; for the left arm it is mirrored
  (canonical angle ``a`` -> image angle ``pi - a``).
* Lengths are in *body units* (bu): 1 bu = 1 px for a medium subject on a
  128x128 sensor, scaled by the subject's ``scale`` and the sensor size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from edge_vlm.datasets.dvs128_gesture import check_label
CLOCKWISE_AS_SEEN_BY = "subject"   # or "camera"

SPEEDS = ("slow", "normal", "fast")
SPEED_FACTOR = {"slow": 0.55, "normal": 1.0, "fast": 1.5}
POSITIONS = ("left", "center", "right")
SIZES = ("small", "medium", "tall")
SIZE_SCALE = {"small": 0.82, "medium": 1.0, "tall": 1.16}

#: Base gesture frequency (Hz) at "normal" speed, per label.
BASE_FREQ_HZ = {1: 1.7, 2: 1.8, 3: 1.8, 4: 0.85, 5: 0.85, 6: 0.85, 7: 0.85,
                8: 1.3, 9: 1.9, 10: 2.3, 11: 0.8}

# body geometry in bu (medium subject)
SHOULDER_HALF = 13.0
UPPER_ARM = 16.0
FOREARM = 14.5
R_UPPER, R_FORE, R_HAND = 3.6, 3.0, 3.6
HEAD_R, HEAD_UP = 8.5, 17.0
TORSO_R = 12.5

#: Rest pose (canonical angles): arms hanging, slightly away from the body.
REST = np.array([np.pi / 2 + 0.14, np.pi / 2 + 0.04])

#: Mean speed (px/s at 128 px) of the faster hand below which a clip is "low" motion.
LOW_MOTION_HAND_SPEED = 45.0

SKIN_TONES = np.array([[0.95, 0.80, 0.69], [0.87, 0.67, 0.53], [0.76, 0.57, 0.42],
                       [0.55, 0.38, 0.26], [0.36, 0.24, 0.16]])
HAIR_COLORS = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.09], [0.75, 0.62, 0.35],
                        [0.55, 0.55, 0.55], [0.45, 0.15, 0.05]])
LUMA = np.array([0.299, 0.587, 0.114])


def luma(rgb: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Relative luminance of linear RGB in [0, 1] (last axis), in ``dtype`` (float64 or float32).

    The same bits on every CPU. A matrix product ``rgb @ LUMA`` (this function before) rounds as
    the BLAS kernel that the CPU selects does: OpenBLAS's Zen and SkylakeX kernels differ in the
    last bit, so a seeded recording differed between an AMD EPYC and an Intel Xeon. Here every
    product and sum is exact and each multiply-add rounded once, in the order of the SkylakeX
    kernels that made the earlier recordings (images in float32: red, green, blue; one colour in
    float64 as its dot product: red, green, blue; several as its matrix-vector product: green,
    red, blue), so those keep their bits (``tests/test_sim_stats.py``)."""
    if np.dtype(dtype) == np.float32:
        x = np.asarray(rgb, dtype=np.float32).astype(np.float64)
        w = LUMA.astype(np.float32).astype(np.float64)
        acc = (x[..., 0] * w[0]).astype(np.float32)
        for i in (1, 2):
            acc = _fma32(x[..., i] * w[i], acc)     # the product of two float32 is exact
        return acc
    x = np.asarray(rgb, dtype=np.float64)
    order = (0, 1, 2) if x.ndim == 1 else (1, 0, 2)
    flat = [_fma64_chain(v, order) for v in x.reshape(-1, 3)]
    return np.asarray(flat, dtype=np.float64).reshape(x.shape[:-1])


def _fma32(prod: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """float32(prod + acc) rounded once: ``prod`` exact in float64, ``acc`` float32. The float64
    sum is made round-to-odd (its error, from Knuth's two-sum, moves an inexact even result one
    step towards the exact one), after which rounding to float32 is the correct rounding."""
    a = acc.astype(np.float64)
    s = prod + a
    bb = s - prod
    err = (prod - (s - bb)) + (a - bb)
    even = (s.view(np.int64) & 1) == 0
    s = np.where((err != 0) & even, np.nextafter(s, s + err), s)
    return s.astype(np.float32)


def _fma64_chain(v: np.ndarray, order: tuple[int, int, int]) -> float:
    """One colour's luminance in float64, each multiply-add in ``order`` rounded once (exact
    rationals: only for the few colours the simulator asks in float64)."""
    acc = float(Fraction(float(v[order[0]])) * Fraction(float(LUMA[order[0]])))
    for i in order[1:]:
        acc = float(Fraction(float(v[i])) * Fraction(float(LUMA[i])) + Fraction(acc))
    return acc


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


class BodyGeometry(NamedTuple):
    """Where a subject stands on the sensor, in pixels."""

    ppu: float                 # pixels per body unit
    cx: float                  # body midline x
    sy: float                  # shoulder height y
    shoulders: np.ndarray      # (2, 2) shoulder points (x, y): image left, image right


@dataclass(frozen=True)
class Subject:
    """A procedurally generated person (deterministic from ``subject_id``)."""

    subject_id: int
    size: str                  # small | medium | tall
    scale: float
    position: str              # left | center | right (of the camera's view)
    x_frac: float              # body midline, fraction of the width
    y_offset: float            # bu, vertical shift of the shoulders
    tempo: float               # personal tempo factor (multiplies gesture frequency)
    speed_probs: tuple         # P(slow, normal, fast) of this subject's clips
    handedness: str            # right | left (strumming hand, lead hand of "other")
    skin: tuple                # RGB in [0, 1]
    shirt: tuple
    hair: tuple
    short_sleeves: bool

    def geometry(self, width: int = 128, height: int = 128) -> BodyGeometry:
        """Pixel geometry: scale ``ppu`` (px per bu), midline, shoulder points."""
        ppu = self.scale * min(width, height) / 128.0
        cx = self.x_frac * width
        sy = (height * 0.43
              + (self.y_offset - 9.0 * (self.scale - 1.0)) * min(width, height) / 128.0)
        shoulders = np.array([[cx - SHOULDER_HALF * ppu, sy], [cx + SHOULDER_HALF * ppu, sy]])
        return BodyGeometry(ppu, cx, sy, shoulders)


def make_subject(subject_id: int) -> Subject:
    """Deterministic subject ``subject_id`` (any int; DVS128 uses 1..29).

    Size and position cycle with the id (balanced over subjects); everything
    else (colours, tempo, handedness, offsets) is drawn from a per-id seed.
    """
    rng = np.random.default_rng([0x5EB1EC7, int(subject_id) % (1 << 64)])
    # size and position cycle with the id so any 9 consecutive subjects cover all 9 combinations
    sid = int(subject_id)
    position = POSITIONS[sid % 3]
    size = SIZES[(sid // 3) % 3]
    x_frac = {"left": 0.35, "center": 0.5, "right": 0.65}[position] + rng.uniform(-0.025, 0.025)
    tempo = float(rng.uniform(0.92, 1.08))
    speed_probs = tuple(float(v) for v in rng.dirichlet([4.0, 5.0, 4.0]))
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))] * rng.uniform(0.93, 1.05)
    sl = float(luma(skin))
    while True:  # shirt must contrast with the skin so hands are visible over it
        shirt = _hsv(rng.uniform(), rng.uniform(0.15, 0.85), rng.uniform(0.12, 0.95))
        if abs(float(luma(shirt)) - sl) > 0.18:
            break
    return Subject(
        subject_id=int(subject_id), size=size,
        scale=SIZE_SCALE[size] * float(rng.uniform(0.97, 1.03)),
        position=position, x_frac=float(x_frac), y_offset=float(rng.uniform(-5.0, 5.0)),
        tempo=tempo, speed_probs=speed_probs,
        handedness="left" if rng.uniform() < 0.2 else "right",
        skin=tuple(float(v) for v in np.clip(skin, 0, 1)), shirt=tuple(float(v) for v in shirt),
        hair=tuple(float(v) for v in HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))]),
        short_sleeves=bool(rng.uniform() < 0.4))


# --------------------------------------------------------------------------
# per-clip gesture parameters
# --------------------------------------------------------------------------

@dataclass
class GestureParams:
    """Everything random about one gesture performance."""

    label: int
    speed: str
    freq_hz: float
    phase0: float
    handedness: str
    direction: float                       # +-1, arm roll direction
    pose_jitter: np.ndarray                # (2, 2) rad offsets of base poses
    phase_noise: np.ndarray                # (K, 3) amp, freq, phase  (per-repetition timing)
    amp_noise: np.ndarray                  # (K, 3)                   (per-repetition amplitude)
    other_arms: tuple = (True, True)       # active arms of "other_gestures"
    other_anchor: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))
    other_waves: np.ndarray = field(default_factory=lambda: np.zeros((2, 2, 3, 3)))


def _noise_coeffs(rng: np.random.Generator, k: int, amp: float, fmax: float) -> np.ndarray:
    return np.stack([rng.uniform(0.3, 1.0, k) * amp / k, rng.uniform(0.15, fmax, k),
                     rng.uniform(0, 2 * np.pi, k)], axis=1)


def sample_params(label: int, subject: Subject, rng: np.random.Generator,
                  speed: str | None = None) -> GestureParams:
    """Draw the random parameters of one performance of ``label``."""
    check_label(label)
    if speed is None:
        speed = SPEEDS[int(rng.choice(3, p=np.asarray(subject.speed_probs)))]
    freq = BASE_FREQ_HZ[label] * SPEED_FACTOR[speed] * subject.tempo * rng.uniform(0.95, 1.05)
    p = GestureParams(
        label=label, speed=speed, freq_hz=float(freq), phase0=float(rng.uniform(0, 2 * np.pi)),
        handedness=subject.handedness, direction=float(rng.choice([-1.0, 1.0])),
        pose_jitter=rng.normal(0.0, 0.06, (2, 2)),
        phase_noise=_noise_coeffs(rng, 3, 0.6, 0.6), amp_noise=_noise_coeffs(rng, 3, 0.25, 0.8))
    if label == 11:
        lead = 0 if subject.handedness == "right" else 1
        r = rng.uniform()
        arms = [False, False]
        if r < 0.5:
            arms[lead] = True
        elif r < 0.85:
            arms = [True, True]
        else:
            arms[1 - lead] = True
        p.other_arms = tuple(arms)
        # anchor (canonical, bu): in front of / beside the shoulder
        p.other_anchor = np.stack([rng.uniform(-6, 12, 2), rng.uniform(-4, 20, 2)], axis=1)
        # (arm, coord, component, [amp, freq factor, phase])
        w = np.empty((2, 2, 3, 3))
        w[..., 0] = rng.uniform(3.0, 10.0, (2, 2, 3))
        w[..., 1] = rng.uniform(0.4, 1.6, (2, 2, 3))
        w[..., 2] = rng.uniform(0, 2 * np.pi, (2, 2, 3))
        p.other_waves = w
    return p


# --------------------------------------------------------------------------
# kinematics
# --------------------------------------------------------------------------

def _smooth(t: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Sum of sinusoids: smooth zero-mean noise evaluated at ``t``."""
    return (coeffs[:, 0]
            * np.sin(2 * np.pi * coeffs[:, 1] * t[:, None] + coeffs[:, 2])).sum(axis=1)


def _body_to_canon(p: np.ndarray, arm: int) -> np.ndarray:
    """Body frame (origin at mid-shoulders, image axes, bu) -> canonical frame of ``arm``."""
    if arm == 0:
        return np.stack([p[..., 0] + SHOULDER_HALF, p[..., 1]], axis=-1)
    return np.stack([SHOULDER_HALF - p[..., 0], p[..., 1]], axis=-1)


def _branch(a: np.ndarray) -> np.ndarray:
    """Map angles to [-pi/2, 3pi/2): keeps canonical poses near REST continuous."""
    return np.mod(a + np.pi / 2, 2 * np.pi) - np.pi / 2


def inverse_kinematics(target: np.ndarray) -> np.ndarray:
    """Canonical hand targets (T, 2) in bu -> (T, 2) angles, elbow pointing out/down."""
    d = np.hypot(target[:, 0], target[:, 1])
    d = np.clip(d, abs(UPPER_ARM - FOREARM) + 1e-3, UPPER_ARM + FOREARM - 1e-3)
    alpha = np.arctan2(target[:, 1], target[:, 0])
    beta = np.arccos(np.clip((UPPER_ARM ** 2 + d ** 2 - FOREARM ** 2) / (2 * UPPER_ARM * d),
                             -1, 1))
    a1 = alpha + beta
    elbow = UPPER_ARM * np.stack([np.cos(a1), np.sin(a1)], axis=1)
    hand = d[:, None] * np.stack([np.cos(alpha), np.sin(alpha)], axis=1)
    a2 = np.arctan2(hand[:, 1] - elbow[:, 1], hand[:, 0] - elbow[:, 0])
    return np.stack([_branch(a1), _branch(a2)], axis=1)


def _circle_dir(arm: int, clockwise: bool) -> float:
    """Canonical angular velocity sign for an arm circle."""
    screen_sign = -1.0 if clockwise else 1.0        # subject's clockwise = screen CCW
    if CLOCKWISE_AS_SEEN_BY == "camera":
        screen_sign = -screen_sign
    return screen_sign if arm == 0 else -screen_sign


def gesture_angles(p: GestureParams, t: np.ndarray) -> np.ndarray:
    """Canonical arm angles (T, 2 arms, 2 links) of the gesture at times ``t`` (s, from its
    start)."""
    t = np.asarray(t, dtype=np.float64)
    T = t.shape[0]
    u = 2 * np.pi * p.freq_hz * t + p.phase0 + _smooth(t, p.phase_noise)
    am = 1.0 + _smooth(t, p.amp_noise)
    out = np.broadcast_to(REST + p.pose_jitter * 0.5, (T, 2, 2)).copy()
    lab = p.label
    if lab == 1:  # hand_clapping: both hands meet in front of the chest
        d = 2.6 + 11.0 * am * ((1 + np.cos(u)) / 2) ** 0.8
        for arm in (0, 1):
            tgt = np.stack([SHOULDER_HALF - d,
                            17.0 + 1.5 * np.sin(u) + 2 * p.pose_jitter[arm, 0]], 1)
            out[:, arm] = inverse_kinematics(tgt)
    elif lab in (2, 3):  # hand waves: upper arm out, forearm up and swinging
        arm = 0 if lab == 2 else 1
        out[:, arm, 0] = np.pi - 0.45 + p.pose_jitter[arm, 0] + 0.05 * np.sin(u)
        out[:, arm, 1] = 1.5 * np.pi - 0.05 + p.pose_jitter[arm, 1] + 0.55 * am * np.sin(u)
    elif lab in (4, 5, 6, 7):  # arm circles around the shoulder
        arm = 0 if lab in (4, 5) else 1
        s = _circle_dir(arm, clockwise=lab in (4, 6))
        a0 = s * (p.phase0 + _smooth(np.zeros(1), p.phase_noise)[0])   # angle at t = 0
        # start near REST so that blending in from rest takes the short way round
        a = s * u - 2 * np.pi * np.round((a0 - np.pi / 2) / (2 * np.pi))
        out[:, arm, 0] = a
        out[:, arm, 1] = out[:, arm, 0] + 0.15 + 0.08 * np.sin(u)
    elif lab == 8:  # arm roll: hands circle around each other in front of the chest
        phi = p.direction * u
        r = 4.8 * am
        c = np.array([0.0, 20.0]) + 2 * p.pose_jitter[0]
        for arm, off in ((0, 0.0), (1, np.pi)):
            body = np.stack([c[0] + r * np.cos(phi + off), c[1] + r * np.sin(phi + off)], 1)
            out[:, arm] = inverse_kinematics(_body_to_canon(body, arm))
    elif lab == 9:  # air drums: hands alternately hit up/down
        for arm, off, x in ((0, 0.0, -9.0), (1, np.pi, 9.0)):
            c = np.cos(u + off)
            y = 21.0 + 6.5 * am * np.sign(c) * np.abs(c) ** 0.6
            body = np.stack([np.full(T, x + 2 * p.pose_jitter[arm, 0]), y], 1)
            out[:, arm] = inverse_kinematics(_body_to_canon(body, arm))
    elif lab == 10:  # air guitar: strum at the waist, other hand on the neck
        strum = 0 if p.handedness == "right" else 1
        sx = -1.0 if strum == 0 else 1.0      # body-frame side of the strumming hand
        body_s = np.stack([np.full(T, 3.0 * sx), 24.0 + 5.5 * am * np.sin(u)], 1)
        slide = 2.5 * np.sin(2 * np.pi * 0.3 * t + p.phase0) + 0.7 * np.sin(3 * u)
        body_f = np.stack([-sx * (25.0 + slide), 15.0 - 0.5 * slide], 1)
        out[:, strum] = inverse_kinematics(_body_to_canon(body_s, strum))
        out[:, 1 - strum] = inverse_kinematics(_body_to_canon(body_f, 1 - strum))
    elif lab == 11:  # other gestures: random smooth motions of random limbs
        w = 2 * np.pi * p.freq_hz * t[:, None]
        for arm in (0, 1):
            if not p.other_arms[arm]:
                continue
            comp = [(p.other_waves[arm, c, :, 0] * np.sin(w * p.other_waves[arm, c, :, 1]
                     + p.other_waves[arm, c, :, 2])).sum(1) for c in (0, 1)]
            tgt = p.other_anchor[arm] + np.stack(comp, 1) * am[:, None]
            out[:, arm] = inverse_kinematics(tgt)
    return out


def blend_weight(t: np.ndarray, duration: float, ramp: float) -> np.ndarray:
    """Smooth 0 -> 1 -> 0 weight over a segment of ``duration`` s (ramps of ``ramp`` s)."""
    if ramp <= 0:
        return np.ones_like(t)
    a = np.clip(np.minimum(t, duration - t) / ramp, 0.0, 1.0)
    return a * a * (3 - 2 * a)


def canon_to_image_angles(canon: np.ndarray) -> np.ndarray:
    """(..., 2 arms, 2) canonical angles -> image angles (left arm mirrored)."""
    img = canon.copy()
    img[..., 1, :] = np.pi - canon[..., 1, :]
    return img


def joints(subject: Subject, canon: np.ndarray, width: int = 128, height: int = 128) -> np.ndarray:
    """Forward kinematics: canonical angles (T, 2, 2) -> pixel joints (T, 2 arms, 3, 2).

    Joint order: shoulder, elbow, hand; coordinates (x, y) in pixels.
    """
    g = subject.geometry(width, height)
    ang = canon_to_image_angles(canon)
    T = canon.shape[0]
    out = np.empty((T, 2, 3, 2))
    out[:, :, 0] = g.shoulders[None]
    e = np.stack([np.cos(ang[..., 0]), np.sin(ang[..., 0])], -1) * (UPPER_ARM * g.ppu)
    h = np.stack([np.cos(ang[..., 1]), np.sin(ang[..., 1])], -1) * (FOREARM * g.ppu)
    out[:, :, 1] = out[:, :, 0] + e
    out[:, :, 2] = out[:, :, 1] + h
    return out


def hand_speed(joint_xy: np.ndarray, t: np.ndarray, width: int = 128) -> float:
    """Mean speed (px/s, normalised to a 128 px sensor) of the faster hand."""
    if len(t) < 2:
        return 0.0
    v = np.hypot(*np.moveaxis(np.diff(joint_xy[:, :, 2], axis=0), -1, 0)) / np.diff(t)[:, None]
    return float(v.max(axis=1).mean() * 128.0 / width)


def motion_level(speed_px_s: float) -> str:
    """'low' or 'high' motion from :func:`hand_speed`."""
    return "low" if speed_px_s < LOW_MOTION_HAND_SPEED else "high"
