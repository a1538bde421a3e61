"""Grounded outputs: what the recognition heads found about a frame (:class:`SceneReport`), and
the captions that may say it.

Why: a free-running caption decoder names whatever its language prior likes (on the demo bag the
class in the text matched the truth on 0.32 of frames while the gesture head was right on 0.91).
Here the heads decide the content and the caption only verbalises it:

1. :func:`calibrated` -- the motion head's logits per group (:data:`~edge_vlm.model.motion.HEADS`)
   divided by their fitted temperatures, softmaxed (:class:`HeadProbs`);
2. :class:`SceneSmoother` -- an exponential moving average of those probabilities over frames
   (``gesture_smoothing_frames``);
3. :func:`decide` -- THE publication rule: a gesture is published only when its smoothed
   probability reaches ``gesture_threshold`` and beats "no gesture" and the scene head's most
   likely kind is ``gesture`` (the heads agree: a walk that the gesture head mistakes for a wave
   stays a walk), and a published gesture is
   kept while it stays above ``gesture_hold`` of that (hysteresis: a held gesture does not
   flicker, and its onset is not delayed as a longer average would); otherwise the label is 0
   ("no gesture") and the scene kind (nothing, walk, ...) comes from the scene head, with the
   direction restricted to those the kind can have (:data:`KIND_DIRECTIONS`). Ego-motion
   (:func:`still_view`): "the camera shakes" is not a possible kind while fewer than
   ``shake_min_patches`` patches changed in the last :data:`SHAKE_WINDOW_FRAMES` frames;
4. the caption: for a gesture, the KV-cached decoder writes it under a constraint
   (:func:`gesture_captions` + :class:`CaptionTrie`: only the canonical captions of the
   published class are reachable, the decoder picks the subject, position and speed words);
   for any other scene, :func:`edge_vlm.sim.captions.scene_caption` verbalises the heads'
   kind, direction, speed and position (the decoder does not run).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch

from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES
from edge_vlm.model.motion import HEADS, HeadLogits
from edge_vlm.sim.captions import (DIRECTIONS, POSITION_WORDS, SCENE_KINDS, SPEED_WORDS,
                                   SUBJECT_WORDS, canonical_caption, scene_caption)

#: the directions each scene kind can have (the first is used when the head is unsure)
KIND_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "walk": ("left_to_right", "right_to_left"),
    "object_moved": ("left_to_right", "right_to_left", "up", "down"),
    "stand_up": ("up",), "sit_down": ("down",)}

#: frames over which the ego-motion rule counts changed patches (:func:`still_view`)
SHAKE_WINDOW_FRAMES = 10


@dataclass(frozen=True)
class SceneReport:
    """What the heads found about one frame (after calibration, smoothing and threshold)."""

    kind: str                   # one of edge_vlm.sim.captions.SCENE_KINDS ("": no scene head)
    kind_confidence: float      # calibrated, smoothed probability of ``kind``
    gesture: int                # published gesture: 1..11 DVS128 id, 0 = no gesture
    gesture_confidence: float   # calibrated, smoothed probability of ``gesture`` (0: of "no
    #                             gesture")
    direction: str              # one of DIRECTIONS ("none" for gestures and still scenes)
    speed: str                  # one of SPEEDS
    position: str               # one of POSITIONS
    frame_gesture: int          # this frame's own best class (0..11) before smoothing/threshold
    frame_gesture_confidence: float

    @property
    def gesture_name(self) -> str:
        """DVS128 class name of the published gesture ("" for no gesture)."""
        return GESTURE_CLASSES[self.gesture - 1] if self.gesture > 0 else ""

    def to_dict(self) -> dict:
        return asdict(self)


class HeadProbs(NamedTuple):
    """Calibrated probabilities per head group (1-D arrays; None: the model has no such head)."""

    gesture: np.ndarray                 # (12,): [0] = no gesture, [k] = DVS128 id k
    kind: np.ndarray | None = None
    direction: np.ndarray | None = None
    speed: np.ndarray | None = None
    position: np.ndarray | None = None


def calibrated(logits: HeadLogits, temperature: torch.Tensor | None) -> HeadProbs:
    """Softmax of each group of one frame's logits (batch 1) after dividing by its
    temperature (``temperature`` (groups,) or None = 1)."""
    out = []
    for i, lg in enumerate(logits):
        if lg is None:
            out.append(None)
            continue
        t = float(temperature[i]) if temperature is not None else 1.0
        out.append(torch.softmax(lg[0].float() / t, dim=-1).numpy().astype(np.float64))
    return HeadProbs(*out)


class SceneSmoother:
    """Exponential moving average of :class:`HeadProbs` over frames with a time constant of
    ``frames`` (<= 1: no smoothing). :meth:`reset` on a stream restart."""

    def __init__(self, frames: float = 1.0):
        self.frames = float(frames)
        self.state: HeadProbs | None = None

    def reset(self) -> None:
        self.state = None

    def update(self, probs: HeadProbs) -> HeadProbs:
        if self.state is None or self.frames <= 1.0:
            self.state = probs
            return probs
        a = 1.0 / self.frames
        self.state = HeadProbs(*(None if p is None else (1 - a) * s + a * p
                                 for s, p in zip(self.state, probs)))
        return self.state


def _pick(p: np.ndarray | None, names: tuple[str, ...], allowed: tuple[str, ...] | None = None,
          default: str = "") -> str:
    if p is None:
        return default or (allowed or names)[0]
    idx = [names.index(a) for a in (allowed or names)]
    return names[idx[int(np.argmax(p[idx]))]]


def still_view(kind: np.ndarray | None, recent_patches: int | None,
               shake_min: int) -> np.ndarray | None:
    """The ego-motion rule (module doc, step 3): scene-kind probabilities ``kind`` without
    "the camera shakes" when fewer than ``shake_min`` patches changed in the last
    :data:`SHAKE_WINDOW_FRAMES` frames (``recent_patches``; None or ``shake_min`` 0: no rule).
    A shaking camera moves every edge in view, so a view this still cannot be shaking."""
    if kind is None or shake_min <= 0 or recent_patches is None or recent_patches >= shake_min:
        return kind
    kind = kind.copy()
    kind[SCENE_KINDS.index("camera_shake")] = 0.0
    return kind


def decide(smooth: HeadProbs, frame: HeadProbs, threshold: float, current: int = 0,
           hold: float = 0.0, recent_patches: int | None = None,
           shake_min: int = 0) -> SceneReport:
    """THE publication rule (module doc, step 3) on smoothed probabilities ``smooth``;
    ``frame``: this frame's own (for the report's ``frame_gesture``). Hysteresis: the gesture
    published on the previous frame (``current``) stays while its probability is at least
    ``hold`` x ``threshold`` and at least ``hold`` x the best gesture's. Ego-motion:
    :func:`still_view` of ``recent_patches`` and ``shake_min``."""
    g = smooth.gesture
    best = 1 + int(np.argmax(g[1:]))
    fbest = int(np.argmax(frame.gesture))
    kinds = still_view(smooth.kind, recent_patches, shake_min)
    # the two heads must agree: no gesture while the scene head sees another kind of scene
    agree = kinds is None or SCENE_KINDS[int(np.argmax(kinds))] == "gesture"
    kept = (agree and current > 0 and hold > 0 and g[current] >= hold * threshold
            and g[current] >= hold * g[best])
    if kept:
        best = current
    if kept or (agree and g[best] >= threshold and g[best] >= g[0]):
        gesture, conf, kind, kconf = best, float(g[best]), "gesture", float(g[best])
    else:
        gesture, conf = 0, float(g[0])
        if kinds is None:               # no scene head: the kind is unknown
            kind, kconf = "", conf
        else:
            k = kinds.copy()
            k[SCENE_KINDS.index("gesture")] = 0.0
            kind = SCENE_KINDS[int(np.argmax(k))]
            kconf = float(k.max() / max(k.sum(), 1e-12))
    direction = _pick(smooth.direction, DIRECTIONS, KIND_DIRECTIONS.get(kind, ("none",)))
    return SceneReport(kind, kconf, gesture, conf, direction,
                       _pick(smooth.speed, HEADS["speed"], default="normal"),
                       _pick(smooth.position, HEADS["position"], default="center"),
                       fbest, float(frame.gesture[fbest]))


def caption_key(report: SceneReport) -> tuple:
    """What a frame's caption says: the published gesture, or the verbalised scene (the caption
    gate makes the text again when it changes)."""
    if report.gesture:
        return ("gesture", report.gesture)
    return (report.kind, 0, report.direction, report.speed, report.position)


def scene_text(report: SceneReport) -> str:
    """The caption of a frame without a published gesture (the verbaliser)."""
    return scene_caption(report.kind, {"direction": report.direction, "speed": report.speed,
                                       "position": report.position})


def gesture_captions(label: int) -> list[str]:
    """Every canonical caption of gesture ``label`` (subject size x position x speed): the
    texts the constrained decoder may write for it."""
    return [canonical_caption(label, {"size": s, "position": p, "speed": v})
            for s, p, v in itertools.product(SUBJECT_WORDS, POSITION_WORDS, SPEED_WORDS)]


class CaptionTrie:
    """Prefix tree of token id sequences (each ends with ``eos``): :meth:`allowed` gives the
    tokens that continue some sequence after a prefix; ``texts`` the text of each sequence."""

    def __init__(self, sequences: list, eos: int, texts: dict | None = None):
        self.root: dict = {}
        self.texts = texts or {}        # id sequence (tuple) -> its text
        for seq in sequences:
            node = self.root
            for t in list(seq) + [eos]:
                node = node.setdefault(int(t), {})

    def allowed(self, prefix: list[int]) -> list[int]:
        node = self._node(prefix)
        return [] if node is None else list(node)

    def _node(self, prefix: list[int]) -> dict | None:
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return None
        return node

    def complete(self, prefix: list[int], hint: list[int]) -> list[int]:
        """A guess of how a sequence that starts with ``prefix`` goes on (EOS not included):
        a token that is the only continuation is taken; at a branch, the first token of
        ``hint`` (e.g. an earlier caption's rest) that continues the sequence, the hint read on
        after it; no such token: the guess ends. Only a guess (a speculative decoder's draft):
        any result is safe."""
        node, out, h = self._node(prefix), [], 0
        while node:
            if len(node) == 1:
                t = next(iter(node))
            else:
                k = next((j for j in range(h, len(hint)) if int(hint[j]) in node), None)
                if k is None:
                    break
                t, h = int(hint[k]), k + 1
            if not node[t]:                 # the EOS leaf: the sequence is complete
                break
            out.append(t)
            node = node[t]
        return out


__all__ = ["CaptionTrie", "HeadProbs", "KIND_DIRECTIONS", "SceneReport", "SceneSmoother",
           "calibrated", "caption_key", "decide", "gesture_captions", "scene_text"]
