"""Per-frame targets of the gesture and scene heads (:data:`edge_vlm.model.motion.HEADS`) from
a simulated recording's ground truth, and their left-right mirror.

A frame's targets come from the segment holding its end time: a gesture clip gives its label,
kind ``gesture``, speed and the subject's position (direction "none"); a scene clip gives
label 0 and its kind, direction, speed and position; frames between segments show nothing
moving (label 0, kind ``nothing``). Targets a scene does not define (the speed of an empty
room, the position of a walk across the view) are :data:`IGNORE` and add no loss.
"""
from __future__ import annotations

from typing import TypedDict

import numpy as np

from edge_vlm.model.motion import HEADS, MIRROR_LABEL

IGNORE = -100
#: the attributes each scene kind defines (the others are IGNORE)
KIND_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "nothing": ("direction",), "camera_shake": ("direction",),
    "gesture": ("direction", "speed", "position"),
    "walk": ("direction", "speed"), "two_movers": ("direction", "speed"),
    "stand_up": ("direction", "speed", "position"), "sit_down": ("direction", "speed", "position"),
    "object_moved": ("direction", "speed", "position"),
    "object_swings": ("direction", "speed", "position")}
_MIRROR = {"direction": {"left_to_right": "right_to_left", "right_to_left": "left_to_right"},
           "position": {"left": "right", "right": "left"}}


class FrameTargets(TypedDict):
    """(F,) int64 arrays, one per head group (IGNORE: no target)."""
    gesture: np.ndarray
    kind: np.ndarray
    direction: np.ndarray
    speed: np.ndarray
    position: np.ndarray


def _index(group: str, value: str) -> int:
    return HEADS[group].index(value)


def _fill(out: FrameTargets, inside: np.ndarray, gesture: int, kind: str, attrs: dict) -> None:
    out["gesture"][inside] = gesture
    out["kind"][inside] = _index("kind", kind)
    for group in ("direction", "speed", "position"):
        if group in KIND_ATTRIBUTES[kind]:
            value = "none" if group == "direction" and kind == "gesture" else attrs[group]
            out[group][inside] = _index(group, value)
        else:
            out[group][inside] = IGNORE


def frame_targets(rec, t_end: np.ndarray) -> FrameTargets:
    """Targets of the frames ending at ``t_end`` (ns) of a simulated ``rec`` (its ``clips``
    and, when it has them, ``scenes``)."""
    n = len(t_end)
    out = FrameTargets(gesture=np.zeros(n, np.int64),
                       kind=np.full(n, _index("kind", "nothing"), np.int64),
                       direction=np.full(n, _index("direction", "none"), np.int64),
                       speed=np.full(n, IGNORE, np.int64), position=np.full(n, IGNORE, np.int64))
    for clip in rec.clips:
        inside = (t_end > clip.t_start_ns) & (t_end <= clip.t_end_ns)
        _fill(out, inside, int(clip.label), "gesture", clip.attributes)
    for sc in getattr(rec, "scenes", []):
        inside = (t_end > sc.t_start_ns) & (t_end <= sc.t_end_ns)
        _fill(out, inside, 0, sc.kind, sc.attributes)
    return out


def mirror_targets(t: FrameTargets) -> FrameTargets:
    """The targets of the left-right mirrored frames: a gesture's arm and rotation sense swap
    (:data:`MIRROR_LABEL`), left/right directions and positions swap."""
    out = FrameTargets(**{k: v.copy() for k, v in t.items()})
    out["gesture"] = np.asarray(MIRROR_LABEL)[t["gesture"]]
    for group, swap in _MIRROR.items():
        for a, b in swap.items():
            out[group][t[group] == _index(group, a)] = _index(group, b)
    return out


def concat_targets(parts: list[FrameTargets]) -> FrameTargets:
    return FrameTargets(**{k: np.concatenate([p[k] for p in parts]) for k in HEADS})


__all__ = ["FrameTargets", "IGNORE", "KIND_ATTRIBUTES", "concat_targets", "frame_targets",
           "mirror_targets"]
