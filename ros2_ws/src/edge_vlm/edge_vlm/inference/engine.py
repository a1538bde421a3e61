"""Streaming STTF inference: one frame at a time, batch 1, persistent token memory.

Per frame:

* change mask: the learned :class:`~edge_vlm.model.sttf.ChangeMaskNet` (default),
  the rule "patch has >= ``event_count_threshold`` events", or a mask given by the caller
  (sttf_perception's TokenMask, or a frame difference in RGB-only mode);
* token memory update (model semantics, identical in sparse and dense mode): patches in
  the mask are embedded and merged into their cached token by the learned gate, tokens
  that reach ``max_age`` frames without change expire (re-embedded from the current
  frame), the first frame / a forced resync / an RGB on-off switch re-embeds every patch;
* encoder (:mod:`.vit`): ``sparse=True`` recomputes only the tokens whose memory input changed,
  through every layer (per-layer gate against the last propagated value); a dense pass over all
  tokens runs on the first frame, every ``refresh_period`` frames, and when the
  accumulated memory change since the last dense pass exceeds ``drift_bound``.
  ``sparse=False`` is the dense baseline (every token, every layer, every frame);
* fusion (age embedding, mask-biased cross-attention; the sparse engine keeps every token's
  keys/values and recomputes only the rows whose vision token or age bucket changed,
  :mod:`.fusion_cache`, exact up to float rounding), gesture and scene heads, and the
  grounded caption (:mod:`.grounding`: calibrated, smoothed head outputs, the publication
  threshold; a gesture's caption is written by the KV-cached MicroGPT (greedy or beam) under a
  constraint that only lets it name the published class; any other scene is verbalised from
  the heads without the decoder). The text decoder, the costliest stage of a sparse
  frame, is gated like the tokens: the last text is republished while the fused prefix
  stays within ``caption_reuse_threshold`` (relative L2) of the prefix it was decoded from
  and the gesture and decoder pathway are unchanged; ``caption_period`` > 1 decodes at
  most every N frames.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from edge_vlm.inference.grounding import (SHAKE_WINDOW_FRAMES, CaptionTrie, SceneReport,
                                          SceneSmoother, calibrated, caption_key, decide,
                                          gesture_captions, scene_text)
from edge_vlm.inference.frame_tensors import FrameTensors
from edge_vlm.inference.records import (DecodedCaption, EncoderOutput, FrameResult, Perception,
                                        StageTimes)
from edge_vlm.inference.fusion_cache import FusionCache
from edge_vlm.inference.native_convs import mask_net_logits, motion_state_maps, motion_trunk
from edge_vlm.inference.native_decoder import decoder_start
from edge_vlm.inference.native_stages import NativeEmbed
from edge_vlm.inference.memory import new_memory
from edge_vlm.inference.vit import dense_infer, sparse_infer
from edge_vlm.model.config import ModelConfig, age_bucket_np
from edge_vlm.model.decoding import decode_beam, decode_greedy
from edge_vlm.model.flops import decoder_flops, frame_flops
from edge_vlm.model.motion import MotionState, split_heads
from edge_vlm.model.sttf import CaptionModel
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.stream.histogram import patch_counts


MASK_MODES = ("learned", "event_count")


def _mask_method(eng: StreamingCaptioner, value) -> str:
    if str(value) not in MASK_MODES:
        raise ValueError(f"mask_method must be one of {MASK_MODES}, got {value!r}")
    return str(value)


#: the engine's parameters by their vlm_captioner node names: (attribute, its value from the
#: parameter's); set alike at construction and at runtime (:meth:`StreamingCaptioner.set_param`,
#: :func:`edge_vlm.inference.factory.apply_params`)
PARAMS: dict[str, tuple[str, Callable]] = {
    "event_count_threshold": ("k", lambda eng, v: int(v)),
    "refresh_period": ("refresh_period", lambda eng, v: int(v)),
    "decoding": ("decoding", lambda eng, v: str(v)),
    "beam_size": ("beam_size", lambda eng, v: int(v)),
    "max_caption_tokens": ("max_tokens", lambda eng, v: min(int(v), eng.cfg.max_len)),
    "caption_period": ("caption_period", lambda eng, v: max(1, int(v))),
    "caption_reuse_threshold": ("caption_reuse", lambda eng, v: float(v)),
    "mask_method": ("mask_method", _mask_method),
    "drift_bound": ("drift_bound", lambda eng, v: float(v)),
    "gesture_threshold": ("threshold", lambda eng, v: float(v)),
    "gesture_smoothing_frames": ("smoothing_frames", lambda eng, v: max(1.0, float(v))),
    "gesture_hold": ("hold", lambda eng, v: float(v)),
    "shake_min_patches": ("shake_min", lambda eng, v: int(v)),
}

#: the caption of a frame without a published gesture when the model has no scene head
NO_GESTURE_TEXT = "no gesture is recognised"


class StreamingCaptioner:
    """Stateful captioner: feed one frame at a time with :meth:`process`."""

    def __init__(self, model: CaptionModel, *, event_count_threshold: int = 3,
                 refresh_period: int = 0, decoding: str = "greedy", beam_size: int = 3,
                 max_caption_tokens: int = 20, sparse: bool = True, rgb_hold_frames: int = 3,
                 caption_period: int = 1, mask_method: str = "learned",
                 layer_thresholds: list[float] | None = None, drift_bound: float = 0.0,
                 caption_reuse_threshold: float = 0.0, gesture_threshold: float = 0.0,
                 gesture_smoothing_frames: float = 1.0, gesture_hold: float = 0.0,
                 shake_min_patches: int = 0):
        self.model = model
        self.cfg: ModelConfig = model.cfg
        self.tok = Tokenizer(self.cfg.vocab)
        for name, value in (("mask_method", mask_method),
                            ("event_count_threshold", event_count_threshold),
                            ("refresh_period", refresh_period), ("decoding", decoding),
                            ("beam_size", beam_size), ("max_caption_tokens", max_caption_tokens),
                            ("caption_period", caption_period),
                            ("caption_reuse_threshold", caption_reuse_threshold),
                            ("drift_bound", drift_bound),
                            ("gesture_threshold", gesture_threshold),
                            ("gesture_smoothing_frames", gesture_smoothing_frames),
                            ("gesture_hold", gesture_hold),
                            ("shake_min_patches", shake_min_patches)):
            self.set_param(name, value)
        self._tries: dict[int, CaptionTrie] = {}
        self.sparse = sparse
        self.rgb_hold_frames = int(rgb_hold_frames)
        self.layer_thresholds = [float(x) for x in (layer_thresholds or [])]
        with torch.no_grad():
            self._empty = model.embed.empty()
        self.reset()

    def set_param(self, name: str, value) -> None:
        """Set the engine parameter ``name`` (a key of :data:`PARAMS`); the next frame sees it."""
        attr, convert = PARAMS[name]
        setattr(self, attr, convert(self, value))

    def reset(self) -> None:
        """Forget the token memory (the next frame re-embeds every patch and runs dense)."""
        c = self.cfg
        self.e = torch.zeros(c.num_tokens, c.dim)                # memory input tokens (gated)
        self.age = np.full(c.num_tokens, c.max_age, dtype=np.int64)
        self.layers = new_memory(self.model.vit) if hasattr(self.model, "vit") else []
        # encoder output (vision tokens): after a frame, the encoder memory's own tensor, which
        # the next frame updates in place (clone it to keep a frame's)
        self.memory = torch.zeros(c.num_tokens, c.dim)
        self.frames_seen = 0
        self.since_dense = 0
        self.drift = 0.0
        self.last_rgb: bool | None = None
        self.held_rgb: np.ndarray | None = None
        self.held_age = 0
        self._resync = True
        self._force_dense = False
        self.last_caption: DecodedCaption | None = None
        self.motion_state = MotionState(c.grid)
        # the sparse engine's fusion keys/values (the dense baseline recomputes every token)
        self.fusion_cache = FusionCache(self.model)
        self.smoother = SceneSmoother()
        self.published = 0                  # the gesture published on the last frame
        self.frame: FrameTensors | None = None  # the frame in progress as tensors (its stages')
        self._native_embed: NativeEmbed | None | bool = None   # (False: PyTorch's)

    def force_refresh(self) -> None:
        """Resynchronise on the next frame (after dropped frames): re-embed every patch, dense
        pass."""
        self._resync = True

    # -- inputs --
    def change_mask(self, hist: np.ndarray) -> np.ndarray:
        """The change mask of one histogram (bool, N) with this engine's mask method."""
        c = self.cfg
        if self.mask_method == "learned":
            ft = FrameTensors.of(hist, self.frame)
            with torch.no_grad():
                logits = mask_net_logits(self.model.mask_net, ft.hist, lambda: ft.log)
            return (logits[0] > 0).numpy()
        return patch_counts(hist, c.patch).reshape(-1) >= self.k

    def _content(self, hist: np.ndarray, rgb: np.ndarray | None, idx: np.ndarray,
                 events_on: np.ndarray) -> torch.Tensor:
        """Model input rows (len(idx), patch_dim) of patches ``idx``: log1p events where
        ``events_on`` (denoised), RGB (or zeros)."""
        c = self.cfg
        g, p = c.grid, c.patch
        n, pp = len(idx), p * p
        gy, gx = np.divmod(idx, g)      # only the patches idx are gathered (no full transpose)
        ev = hist.reshape(c.event_channels, g, p, g, p)[:, gy, :, gx, :]     # (n, C, p, p)
        rows = np.log1p(ev.reshape(n, c.event_channels * pp).astype(np.float32))
        rows *= events_on[idx, None]
        if rgb is not None:
            im = rgb.reshape(g, p, g, p, 3)[gy, :, gx].transpose(0, 3, 1, 2)  # (n, 3, p, p)
            rgbr = im.reshape(n, 3 * pp).astype(np.float32) / 255.0 - 0.5
        else:
            rgbr = np.zeros((len(idx), c.rgb_channels * p * p), dtype=np.float32)
        return torch.from_numpy(np.concatenate([rows, rgbr], axis=1))

    def _hold_rgb(self, rgb: np.ndarray | None) -> np.ndarray | None:
        # An RGB camera slower than the frame rate must not flip the input mode (and force a
        # resync) every other frame: the last image is held for up to rgb_hold_frames frames.
        if rgb is not None:
            self.held_rgb, self.held_age = rgb, 0
        elif self.held_rgb is not None and self.held_age < self.rgb_hold_frames:
            rgb = self.held_rgb
            self.held_age += 1
        else:
            self.held_rgb = None
        return rgb

    def _update_memory(self, hist: np.ndarray, rgb: np.ndarray | None, change: np.ndarray,
                       resync: bool) -> np.ndarray:
        """Token memory update (model semantics, the same in sparse and dense mode); returns the
        indices of the tokens whose memory input changed."""
        c = self.cfg
        if resync:
            idx = np.arange(c.num_tokens)
            e = torch.empty(c.num_tokens, c.dim)
            if not self._embed_native(e, hist, rgb, idx, change, np.zeros(c.num_tokens, bool)):
                e = self.model.embed(self._content(hist, rgb, idx, change))
            self.e = e
            self.age = np.where(change, 0, c.max_age)
            return idx
        expired = (self.age == c.max_age - 1) & ~change
        self.age = np.where(change, 0, np.minimum(self.age + 1, c.max_age))
        upd, exp = np.flatnonzero(change), np.flatnonzero(expired)
        before = self.e
        if len(upd) or len(exp):
            self.e = self.e.clone()
            rows = np.concatenate([upd, exp])
            flags = np.arange(len(rows)) < len(upd)     # the changed ones: events on, merged
            if not self._embed_native(self.e, hist, rgb, rows, flags, flags):
                self._embed(hist, rgb, change, upd, exp)
        changed = np.union1d(upd, exp)
        if self.drift_bound > 0 and len(changed):
            ct = torch.from_numpy(changed)
            self.drift += float((self.e[ct] - before[ct]).norm(dim=-1).sum()
                                / before.norm(dim=-1).sum().clamp(min=1e-6))
        return changed

    def _embed(self, hist: np.ndarray, rgb: np.ndarray | None, change: np.ndarray,
               upd: np.ndarray, exp: np.ndarray) -> None:
        """Into ``self.e``: the changed patches ``upd`` embedded and gated into their tokens, the
        expired tokens ``exp`` re-embedded (from empty patches: they are not in ``change``)."""
        if len(upd):
            ut = torch.from_numpy(upd)
            new = self.model.embed(self._content(hist, rgb, upd, change))
            self.e[ut] = self.model.embed.merge(new, self.e[ut])
        if len(exp):
            self.e[torch.from_numpy(exp)] = self.model.embed(self._content(hist, rgb, exp, change))

    def _embed_native(self, e: torch.Tensor, hist: np.ndarray, rgb: np.ndarray | None,
                      rows: np.ndarray, on: np.ndarray, merge: np.ndarray) -> bool:
        """Memory tokens ``rows`` of ``e`` from an events-only frame in one native call
        (:meth:`.native_stages.NativeEmbed.run`); False when it does not apply (nothing
        written)."""
        nat = self._native_embed
        if rgb is not None or nat is False or torch.is_grad_enabled():
            return False
        if nat is None or nat.stale():
            nat = self._native_embed = NativeEmbed.build(self.model.embed, self.cfg) or False
        return bool(nat) and nat.run(e, hist, rows, on, merge)

    def _encode(self, hist: np.ndarray, change: np.ndarray, changed: np.ndarray, resync: bool,
                refresh: bool) -> EncoderOutput:
        """The encoder stage: the ViT over the memory, dense when ``refresh`` (:meth:`perceive`
        decides) else sparse over the tokens ``changed``; subclasses add routing."""
        if refresh:
            vis = dense_infer(self.model.vit, self.e, self.layers, inplace=True)
            return EncoderOutput(vis, [self.cfg.num_tokens] * self.cfg.depth, True)
        vis, layer_tokens = sparse_infer(self.model.vit, self.e, torch.from_numpy(changed),
                                         self.layers, self.layer_thresholds, inplace=True)
        return EncoderOutput(vis, layer_tokens, False)

    def _flops(self, enc: EncoderOutput, n_embed: int, generated: int, beams: int,
               learned_mask: bool, fusion_tokens: int | None = None) -> tuple[dict, float]:
        """(per-stage FLOPs of this frame, FLOPs of the dense model on it); ``fusion_tokens``:
        the tokens whose fusion keys/values were recomputed (None: all)."""
        c = self.cfg
        flops = frame_flops(c, enc.layer_tokens, n_embed, generated, beams,
                            learned_mask=learned_mask, fusion_tokens=fusion_tokens)
        dense = sum(frame_flops(c, [c.num_tokens] * c.depth, n_embed, generated, beams,
                                learned_mask=learned_mask).values())
        return flops, dense

    @torch.no_grad()
    def perceive(self, hist: np.ndarray, rgb: np.ndarray | None = None,
                 change_mask: np.ndarray | None = None) -> Perception:
        """Every stage of :meth:`process` but the text decoder: change mask, memory, encoder,
        fusion and gesture logits (with the vision head's and the ``motion`` state it read).
        ``edge-vlm train --model gesture`` streams recordings through it."""
        t0 = time.perf_counter()
        c = self.cfg
        rgb = self._hold_rgb(rgb)
        hist = np.asarray(hist, dtype=np.float32)
        self.frame = FrameTensors(hist)
        learned = change_mask is None and self.mask_method == "learned"
        change = (self.change_mask(hist) if change_mask is None
                  else np.asarray(change_mask, dtype=bool))
        has_rgb = rgb is not None
        resync = self._resync or self.last_rgb != has_rgb
        self._resync = False
        t1 = time.perf_counter()
        changed = self._update_memory(hist, rgb, change, resync)
        t1b = time.perf_counter()
        # the dense-refresh rule of every engine: dense baseline, resync (first frame, dropped
        # frames, RGB on/off), forced, every refresh_period frames, memory drift over its bound
        refresh = (not self.sparse or resync or self._force_dense
                   or (self.refresh_period > 0 and self.since_dense >= self.refresh_period)
                   or (self.drift_bound > 0 and self.drift > self.drift_bound))
        enc = self._encode(hist, change, changed, resync, refresh)
        if refresh:
            self.since_dense, self.drift, self._force_dense = 1, 0.0, False
        else:
            self.since_dense += 1
        self.memory = enc.vis
        t2 = time.perf_counter()
        bucket = age_bucket_np(self.age, c.max_age)
        change_t = torch.from_numpy(change)
        # the sparse engine recomputes keys/values only where a vision token or age bucket
        # moved; the dense baseline every row, on the same (native or PyTorch) path
        ff = self.fusion_cache.fuse(self.memory, bucket, change_t, every_row=not self.sparse)
        fused, z, fusion_tokens, vision = ff.fused, ff.z, ff.recomputed, ff.vision
        motion, head = None, self.motion_head(enc)
        if head is not None:
            maps = motion_state_maps(self.motion_state, self.frame.hist[0].numpy(), self.age,
                                     c.patch, c.max_age)
            motion = torch.from_numpy(maps)[None]
        if vision is None:
            vision = self.model.gesture_logits(fused, z, bucket[None])
        logits = vision if motion is None else head(motion, vision, trunk=motion_trunk)
        self.last_rgb = has_rgb
        self.frame = None
        return Perception(change, changed, enc, resync, fused, logits[0], vision[0], motion,
                          learned, StageTimes(t0, t1, t1b, t2, time.perf_counter()),
                          fusion_tokens, head)

    def motion_head(self, enc: EncoderOutput) -> torch.nn.Module | None:
        """The motion head that answers the frame ``enc`` encoded (None: the vision head alone);
        an ANC engine's depends on the level that ran."""
        return self.model.motion

    def report(self, p: Perception) -> SceneReport:
        """What the heads found about the perceived frame (:mod:`.grounding`: calibrated,
        smoothed over frames, the publication threshold)."""
        temp = getattr(p.head, "temperature", None) if p.motion is not None else None
        frame = calibrated(split_heads(self.cfg, p.logits[None]), temp)
        self.smoother.frames = self.smoothing_frames
        # patches changed in the ego-motion rule's window (an age of max_age: never changed)
        recent = int(np.count_nonzero(self.age < min(SHAKE_WINDOW_FRAMES, self.cfg.max_age)))
        report = decide(self.smoother.update(frame), frame, self.threshold, self.published,
                        self.hold, recent, self.shake_min)
        self.published = report.gesture
        return report

    def _trie(self, label: int) -> CaptionTrie:
        """The constraint of a gesture's caption: its canonical captions as token ids (the
        trie's ``texts`` maps each id sequence back to its canonical text, punctuation kept)."""
        if label not in self._tries:
            texts = {}
            for t in gesture_captions(label):
                q = self.tok.encode(t, self.cfg.max_len)[1:]
                texts[tuple(q[:q.index(self.tok.eos)])] = t
            self._tries[label] = CaptionTrie(list(texts), self.tok.eos, texts)
        return self._tries[label]

    def _decode(self, p: Perception, report: SceneReport, key: tuple, beams: int,
                spec: dict) -> DecodedCaption:
        """The caption of a frame (grounding step 4): a gesture's under the constrained
        decoder, any other scene verbalised (no decoder: ``ids`` empty)."""
        layers, fused, last = p.enc.decoder_layers, p.fused, self.last_caption
        if report.gesture == 0:
            text = scene_text(report) if report.kind else NO_GESTURE_TEXT
            return DecodedCaption([], 0.0, key, (layers, beams), fused, text)
        tok, trie = self.tok, self._trie(report.gesture)
        allowed = trie.allowed
        if beams > 1:
            ids, score = decode_beam(self.model, fused, tok.bos, tok.eos, self.max_tokens, beams,
                                     layers, allowed=allowed)
        else:   # speculative: the last text as the draft (exact greedy result, one pass if same)
            draft = last.ids if last is not None else None
            ids, score = decode_greedy(self.model, fused, tok.bos, tok.eos, self.max_tokens,
                                       layers, draft=draft, stats=spec, allowed=allowed,
                                       redraft=lambda out: trie.complete(out, draft[len(out):]),
                                       start=decoder_start)
        return DecodedCaption(ids, score, key, (layers, beams), fused,
                              trie.texts.get(tuple(ids), tok.decode(ids)))

    @torch.no_grad()
    def process(self, hist: np.ndarray, rgb: np.ndarray | None = None,
                change_mask: np.ndarray | None = None) -> FrameResult:
        """Process one frame. ``hist``: (C,H,W) event counts on the model grid; ``rgb``: (H,W,3)
        uint8.

        ``change_mask`` (bool, N): an externally computed change mask (e.g. from
        sttf_perception); this engine's ``mask_method`` is used when it is None.
        """
        c = self.cfg
        p = self.perceive(hist, rgb, change_mask)
        enc = p.enc
        report = self.report(p)
        layers = enc.decoder_layers
        # beam width: the node's beam_size, capped by the decoder pathway (ANC: Tiny is greedy)
        cap = self.beam_size if enc.decoder_beam is None else enc.decoder_beam
        beams = min(self.beam_size, cap) if self.decoding == "beam" else 1
        # the caption is made again after a resync and whenever what the heads found or the
        # decoder pathway changes, else every caption_period frames if the fused prefix moved
        # more than caption_reuse from the one the last text was made from; other frames
        # republish the last text
        last = self.last_caption
        key = caption_key(report)
        spec: dict = {}
        fresh = (last is None or p.resync or last.key != key or last.pathway != (layers, beams)
                 or (self.frames_seen % self.caption_period == 0
                     and (self.caption_reuse <= 0 or float((p.fused - last.prefix).norm())
                          > self.caption_reuse * float(last.prefix.norm()))))
        made = self._decode(p, report, key, beams, spec) if fresh else last
        if fresh:
            self.last_caption = made
        p.times.decoder = time.perf_counter()
        n_embed = c.num_tokens if p.resync else int(len(p.changed))
        flops, dense_fl = self._flops(enc, n_embed, len(made.ids) + 1, beams, p.learned_mask,
                                      p.fusion_tokens)
        if not fresh or report.gesture == 0:       # reused, or verbalised without the decoder
            flops["decoder"] = 0.0
        elif spec.get("first", 1) > 1:     # speculative: every teacher-forced pass, the steps
            flops["decoder"] = decoder_flops(c, spec["steps"], 1, layers, first=spec["first"]) \
                + sum(decoder_flops(c, 0, 1, layers, first=f) for f in spec["passes"][1:])
        self.frames_seen += 1
        return FrameResult(
            text=made.text, score=float(made.score), label=report.gesture,
            gesture_name=report.gesture_name, confidence=report.gesture_confidence,
            active_tokens=int(enc.layer_tokens[0]), total_tokens=c.num_tokens,
            change_tokens=int(p.change.sum()), refreshed=bool(enc.dense),
            flops=flops, flops_dense=float(dense_fl), latency_ms=p.times.latency_ms(enc.router_ms),
            frame_index=self.frames_seen - 1, caption_fresh=fresh,
            layer_tokens=list(enc.layer_tokens), route=enc.route, scene=report)
