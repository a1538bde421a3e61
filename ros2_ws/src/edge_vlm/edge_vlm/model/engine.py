"""Streaming inference with a persistent token memory (batch 1, one frame at a time).

Token memory rule (Foundation version, patch-local encoder):

* the event part of a patch is *denoised*: a patch with fewer than
  ``event_count_threshold`` events in the frame counts as empty;
* a token is recomputed when its patch is in the change mask (it has events),
  when its memory still holds activity but the patch went quiet (so the memory
  never keeps a stale token), on the first frame, after an RGB on/off switch,
  and every ``refresh_period`` frames (dense refresh);
* every other token is reused from the memory. Because the encoder is
  patch-local, a reused token equals what a dense re-encode would give.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..dvs128 import GESTURE_CLASSES
from ..repr import normalize_histogram, patch_counts
from .captioner import CaptionModel, ModelConfig, decode_beam, decode_greedy, patchify
from .flops import frame_flops
from .tokenizer import Tokenizer

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "checkpoints", "captioner.pt")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or incompatible."""


def save_checkpoint(path: str, model: CaptionModel, extra: dict | None = None, half: bool = True) -> None:
    """Save config + weights (fp16 by default to keep shipped checkpoints small)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"format": "edge_vlm.captioner/1", "config": model.cfg.to_dict(), "state": state,
                "extra": extra or {}}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str = "") -> tuple[CaptionModel, dict]:
    """Load a checkpoint (empty path = the shipped default). Raises CheckpointError."""
    path = path or DEFAULT_CHECKPOINT
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} (train one with `edge-vlm train`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != "edge_vlm.captioner/1":
            raise CheckpointError(f"not an edge_vlm captioner checkpoint: {path}")
        cfg = ModelConfig(**blob["config"])
        model = CaptionModel(cfg)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state"].items()})
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file, wrong tensors, pickle errors...
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    return model, blob.get("extra", {})


@dataclass
class FrameResult:
    text: str
    score: float
    label: int                 # 1..11
    gesture_name: str
    confidence: float
    active_tokens: int         # tokens re-encoded this frame
    total_tokens: int
    change_tokens: int         # tokens in the change mask (subset of active_tokens)
    refreshed: bool
    flops: dict[str, float]
    flops_dense: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    frame_index: int = 0
    caption_fresh: bool = True  # False: text reused from an earlier frame (caption_period)

    @property
    def flops_executed(self) -> float:
        return float(sum(self.flops.values()))


class StreamingCaptioner:
    """Stateful captioner: feed one frame at a time with :meth:`process`."""

    def __init__(self, model: CaptionModel, *, event_count_threshold: int = 3, refresh_period: int = 30,
                 decoding: str = "greedy", beam_size: int = 3, max_caption_tokens: int = 20,
                 sparse: bool = True, rgb_hold_frames: int = 3, caption_period: int = 1):
        self.model = model
        self.cfg: ModelConfig = model.cfg
        self.tok = Tokenizer(self.cfg.vocab)
        self.k = int(event_count_threshold)
        self.refresh_period = int(refresh_period)
        self.decoding = decoding
        self.beam_size = int(beam_size)
        self.max_tokens = min(int(max_caption_tokens), self.cfg.max_len)
        self.sparse = sparse
        self.rgb_hold_frames = int(rgb_hold_frames)
        self.caption_period = max(1, int(caption_period))
        self.reset()

    def reset(self) -> None:
        """Forget the token memory and temporal context (next frame is dense)."""
        c = self.cfg
        self.memory = torch.zeros(c.num_tokens, c.dim)
        self.memory_active = np.zeros(c.num_tokens, dtype=bool)   # memory holds events for this patch
        self.history = torch.zeros(1, c.history, c.summary_tokens, c.dim)
        self.frames_seen = 0
        self.last_rgb: bool | None = None
        self.held_rgb: np.ndarray | None = None
        self.held_age = 0
        self._force = False
        self.last_caption: tuple[list[int], float, int] | None = None   # (ids, score, label)

    def force_refresh(self) -> None:
        """Re-encode every token on the next frame (e.g. after frames were dropped)."""
        self._force = True

    def input_tensor(self, hist: np.ndarray, rgb: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray]:
        """Denoised model input ``(1, C, H, W)`` and the per-patch change mask (bool, N)."""
        c = self.cfg
        counts = patch_counts(hist, c.patch).reshape(-1)
        change = counts >= self.k
        keep = np.repeat(np.repeat(change.reshape(c.grid, c.grid), c.patch, 0), c.patch, 1)
        ev = normalize_histogram(hist) * keep[None]
        if rgb is not None:
            img = rgb.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5
        else:
            img = np.zeros((c.rgb_channels, c.image_size, c.image_size), dtype=np.float32)
        x = np.concatenate([ev, img], axis=0)[None]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), change

    @torch.no_grad()
    def process(self, hist: np.ndarray, rgb: np.ndarray | None = None,
                change_mask: np.ndarray | None = None) -> FrameResult:
        """Process one frame. ``hist``: (C,H,W) event counts on the model grid; ``rgb``: (H,W,3) uint8.

        ``change_mask`` (bool, N): an externally computed change mask (e.g. from
        sttf_perception); the local event-count rule is used when it is None.
        """
        t0 = time.perf_counter()
        c = self.cfg
        # An RGB camera slower than the frame rate must not flip the input mode (and force a dense
        # refresh) every other frame: the last image is held for up to rgb_hold_frames frames.
        if rgb is not None:
            self.held_rgb, self.held_age = rgb, 0
        elif self.held_rgb is not None and self.held_age < self.rgb_hold_frames:
            rgb = self.held_rgb
            self.held_age += 1
        else:
            self.held_rgb = None
        x, local_change = self.input_tensor(hist, rgb)
        change = local_change if change_mask is None else np.asarray(change_mask, dtype=bool)
        has_rgb = rgb is not None
        refresh = (not self.sparse or self._force or self.frames_seen == 0 or self.last_rgb != has_rgb
                   or (self.refresh_period > 0 and self.frames_seen % self.refresh_period == 0))
        self._force = False
        if refresh:
            active = np.ones(c.num_tokens, dtype=bool)
        else:
            # changed patches, plus patches whose memory must be cleared because they went quiet
            active = change | (self.memory_active & ~local_change)
        idx = np.flatnonzero(active)
        t1 = time.perf_counter()
        if len(idx):
            patches = patchify(x, c.patch)[0]
            idx_t = torch.from_numpy(idx)
            self.memory[idx_t] = self.model.encoder(patches[idx_t], pos_index=idx_t, has_rgb=has_rgb)
        self.memory_active = local_change.copy()
        t2 = time.perf_counter()
        tokens = self.memory[None]
        act_t = torch.from_numpy(change)[None]
        summary = self.model.summarize(tokens, act_t)
        self.history = torch.cat([self.history[:, 1:], summary[:, None]], dim=1)
        fused = self.model.fuse(tokens, act_t, self.history)
        probs = torch.softmax(self.model.gesture_logits(fused, tokens, act_t), dim=-1)[0]
        t3 = time.perf_counter()
        cls = int(torch.argmax(probs))
        # the text decoder (the costliest stage) runs every caption_period frames, on a refresh and
        # whenever the recognised gesture changes; frames in between republish the last text
        fresh = (self.last_caption is None or refresh or self.last_caption[2] != cls
                 or self.frames_seen % self.caption_period == 0)
        if not fresh:
            ids, score, _ = self.last_caption
        elif self.decoding == "beam":
            ids, score = decode_beam(self.model, fused, self.tok.bos, self.tok.eos, self.max_tokens, self.beam_size)
        else:
            ids, score = decode_greedy(self.model, fused, self.tok.bos, self.tok.eos, self.max_tokens)
        self.last_caption = (ids, score, cls)
        t4 = time.perf_counter()
        beams = self.beam_size if self.decoding == "beam" else 1
        flops = frame_flops(c, len(idx), len(ids) + 1, beams)
        dense = sum(frame_flops(c, c.num_tokens, len(ids) + 1, beams).values())
        if not fresh:
            flops["decoder"] = 0.0
        self.frames_seen += 1
        self.last_rgb = has_rgb
        return FrameResult(
            text=self.tok.decode(ids), score=float(score), label=cls + 1, gesture_name=GESTURE_CLASSES[cls],
            confidence=float(probs[cls]), active_tokens=int(len(idx)), total_tokens=c.num_tokens,
            change_tokens=int(change.sum()), refreshed=bool(refresh), flops=flops, flops_dense=float(dense),
            latency_ms={"mask": (t1 - t0) * 1e3, "encoder": (t2 - t1) * 1e3, "fusion": (t3 - t2) * 1e3,
                        "decoder": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3},
            frame_index=self.frames_seen - 1, caption_fresh=fresh)
