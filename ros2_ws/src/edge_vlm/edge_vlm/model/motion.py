"""The gesture head's temporal input: the token memory's motion state, and the head that reads
it.

Why: gestures differ in *how* the arm moves over the last second (clockwise vs
counter-clockwise, clap vs drums), which a single memory snapshot with coarse age buckets (the
vision head: fusion queries + recently changed tokens) hardly shows. The token memory keeps,
per patch, the frames since it last changed (its age): over a gesture that is a time surface
of the trajectory, whose gradient is the direction of motion.

Motion state of one frame (``motion_channels(cfg)`` maps of ``grid x grid``, one cell per patch):

* 4 age maps: ``exp(-age / 2)``, ``exp(-age / 6)``, ``exp(-age / 16)`` and ``age < max_age``
  (the patch changed within the memory's horizon);
* ``event_channels`` maps: ``log1p`` of the frame's event count per patch and channel;
* one map per entry of ``MOTION_HISTORY``: ``log1p`` of all events of the patch over that many
  last frames.

:class:`MotionHead` is a small conv net on these maps plus two coordinate maps (which arm
moves is *where* it moves); its logits are added to the vision head's log-probabilities
times a learned weight, so the vision tokens still take part (and the sparse encoder's
effect on them shows in the gesture accuracy). Trained by ``edge-vlm train --model gesture``
(:mod:`.train_gesture`) on frozen encoder outputs, with mirrored recordings
(:data:`MIRROR_LABEL`) and random one-patch translations of the state as augmentation.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_vlm.model.config import ModelConfig
from edge_vlm.sim.captions import DIRECTIONS, SCENE_KINDS
from edge_vlm.sim.gestures import POSITIONS, SPEEDS

#: frames summed in the event-history maps
MOTION_HISTORY = (4, 12)
#: time constants (frames) of the age maps
AGE_SCALES = (2.0, 6.0, 16.0)
_NEG_INV_SCALES = (-1.0 / np.array(AGE_SCALES, dtype=np.float32))[:, None, None]

#: label (1-based; index 0 = no gesture) of the horizontally mirrored performance: the subject's
#: right arm becomes the left one and a rotation's sense flips (right clockwise <-> left
#: counter-clockwise); symmetric gestures keep their label
MIRROR_LABEL = (0, 1, 3, 2, 7, 6, 5, 4, 8, 9, 10, 11)


#: the scene head's output groups and their classes (``cfg.scene_head``): ``gesture`` index 0
#: is "no gesture", 1..11 the DVS128 ids; the others index their vocabularies
HEADS: dict[str, tuple[str, ...]] = {
    "gesture": ("no_gesture",) + tuple(f"g{k}" for k in range(1, 12)),
    "kind": SCENE_KINDS, "direction": DIRECTIONS, "speed": SPEEDS, "position": POSITIONS}


class HeadLogits(NamedTuple):
    """The motion head's logits by group (each (B, classes)); without a scene head, ``gesture``
    is the 11 DVS128 classes behind a "no gesture" column of -inf and the rest are None."""

    gesture: torch.Tensor
    kind: torch.Tensor | None = None
    direction: torch.Tensor | None = None
    speed: torch.Tensor | None = None
    position: torch.Tensor | None = None


def split_heads(cfg: ModelConfig, out: torch.Tensor) -> HeadLogits:
    """A gesture head's output (B, K) as :class:`HeadLogits`."""
    if not cfg.scene_head:
        return HeadLogits(F.pad(out, (1, 0), value=float("-inf")))
    parts = torch.split(out, [len(v) for v in HEADS.values()], dim=-1)
    return HeadLogits(*parts)


def head_outputs(cfg: ModelConfig) -> int:
    """Width of the motion head's output."""
    return sum(len(v) for v in HEADS.values()) if cfg.scene_head else cfg.num_classes


def motion_channels(cfg: ModelConfig) -> int:
    return len(AGE_SCALES) + 1 + cfg.event_channels + len(MOTION_HISTORY)


@lru_cache(maxsize=8)
def _block_sum(n: int, patch: int) -> torch.Tensor:
    """(n, n // patch) 0/1 matrix summing runs of ``patch`` rows."""
    return torch.kron(torch.eye(n // patch), torch.ones(patch, 1))


def patch_channel_counts(hist: np.ndarray | torch.Tensor, patch: int) -> np.ndarray:
    """``(C, H, W)`` event counts (array, or float32 tensor: the engine passes its frame's
    :class:`~edge_vlm.inference.frame_tensors.FrameTensors`, which copy the binner's read-only
    frames) -> ``(C, H/patch, W/patch)`` counts per patch and channel.
    Two small matmuls with 0/1 block matrices: faster than numpy's multi-axis sum, and exact
    for counts (integers below 2**24 in float32). In torch, not numpy: numpy's BLAS starts its
    own threads, which spin against the other nodes' processes (torch keeps to the node's
    ``num_threads``)."""
    c, h, w = hist.shape
    x = (hist if isinstance(hist, torch.Tensor)
         else torch.from_numpy(np.ascontiguousarray(hist, dtype=np.float32)))
    x = x.reshape(c * h, w)
    r = (x @ _block_sum(w, patch)).reshape(c, h, w // patch).transpose(1, 2) @ _block_sum(h, patch)
    return r.transpose(1, 2).contiguous().numpy()


def age_channels(age: np.ndarray, max_age: int, out: np.ndarray) -> np.ndarray:
    """The age channels of the motion state into ``out`` (len(AGE_SCALES) + 1, *age.shape):
    ``exp(-age / scale)`` per time constant, then ``age < max_age`` (changed within the
    horizon)."""
    a = np.asarray(age, dtype=np.float32)
    na = len(AGE_SCALES)
    np.exp(a[None] * _NEG_INV_SCALES.reshape((na,) + (1,) * a.ndim), out=out[:na])
    np.less(a, max_age, out=out[na])
    return out


def motion_features(age: np.ndarray, counts: np.ndarray, history: list[np.ndarray],
                    max_age: int) -> np.ndarray:
    """The motion state maps (float32, ``(motion_channels, g, g)``).

    ``age`` (N,) frames since each patch last changed (``max_age`` = not within the horizon),
    ``counts`` (C, g, g) this frame's events per patch and channel, ``history`` one (g, g) map
    of summed events per entry of :data:`MOTION_HISTORY`."""
    c, g = counts.shape[0], counts.shape[-1]
    na = len(AGE_SCALES)
    out = np.empty((na + 1 + c + len(history), g, g), dtype=np.float32)
    age_channels(np.asarray(age).reshape(g, g), max_age, out[:na + 1])
    np.log1p(counts, out=out[na + 1:na + 1 + c])
    for i, h in enumerate(history):
        np.log1p(h, out=out[na + 1 + c + i])
    return out


class MotionState:
    """Per-stream ring of the last ``max(MOTION_HISTORY)`` frames' per-patch event totals."""

    def __init__(self, grid: int):
        self.ring = np.zeros((max(MOTION_HISTORY), grid, grid), dtype=np.float32)
        self.pos = 0

    def reset(self) -> None:
        self.ring[:] = 0.0
        self.pos = 0

    def update(self, age: np.ndarray, counts: np.ndarray, max_age: int) -> np.ndarray:
        """Push this frame's ``counts`` (C, g, g) and return its motion state maps."""
        n = len(self.ring)
        self.ring[self.pos % n] = counts.sum(axis=0)
        self.pos += 1
        hist = [self.ring[[(self.pos - 1 - i) % n for i in range(min(k, n))]].sum(axis=0)
                for k in MOTION_HISTORY]
        return motion_features(age, counts, hist, max_age)


class MotionHead(nn.Module):
    """Conv net on the motion state (+ coordinate maps) -> gesture logits, plus the vision
    head's log-probabilities times a learned weight. With ``cfg.scene_head`` the output is
    every group of :data:`HEADS` (the vision log-probabilities go to gestures 1..11) and
    ``temperature`` holds one calibration temperature per group (fitted on validation
    subjects by ``edge-vlm train --model gesture``)."""

    def __init__(self, cfg: ModelConfig, width: int | None = None):
        super().__init__()
        w, g = width or cfg.motion_width, cfg.grid
        self.cfg, self.width = cfg, w
        self.scene = bool(cfg.scene_head)
        self.net = nn.Sequential(
            nn.Conv2d(motion_channels(cfg) + 2, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * w * (g // 4) ** 2, head_outputs(cfg)))
        # the convs (each followed by a ReLU) and the final linear layer, for :meth:`_infer`
        self.__dict__["_infer_layers"] = tuple(
            m for m in self.net if isinstance(m, (nn.Conv2d, nn.Linear)))
        self.vision_weight = nn.Parameter(torch.tensor(0.5))
        if self.scene:
            self.register_buffer("temperature", torch.ones(len(HEADS)))
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, g), torch.linspace(-1, 1, g), indexing="ij")
        self.register_buffer("coord", torch.stack([yy, xx])[None], persistent=False)

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """``self.net`` in inference (dropout off) as functional calls with its weights: the
        same arithmetic, without the per-module overhead that dominates at batch 1 on CPU."""
        *convs, fc = self._infer_layers
        for conv in convs:
            x = F.relu(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding))
        return F.linear(x.flatten(1), fc.weight, fc.bias)

    def forward(self, state: torch.Tensor, vision_logits: torch.Tensor | None = None,
                trunk=None) -> torch.Tensor:
        """``state`` (B, motion_channels, g, g); ``vision_logits`` (B, K) or None. ``trunk``:
        in inference, a callable ``trunk(head, x)`` that computes :meth:`_infer` another way
        (the streaming engine passes the native kernel's,
        :func:`edge_vlm.inference.native_convs.motion_trunk`)."""
        x = torch.cat([state, self.coord.expand(state.shape[0], -1, -1, -1)], dim=1)
        if self.training:
            out = self.net(x)
        else:
            out = self._infer(x) if trunk is None else trunk(self, x)
        if vision_logits is not None:
            v = self.vision_weight * F.log_softmax(vision_logits, dim=-1)
            if self.scene:
                v = F.pad(v, (1, out.shape[-1] - v.shape[-1] - 1))
            out = out + v
        return out


__all__ = ["HEADS", "HeadLogits", "MOTION_HISTORY", "MIRROR_LABEL", "MotionHead", "MotionState",
           "age_channels", "head_outputs", "motion_channels", "split_heads",
           "motion_features",
           "patch_channel_counts"]
