"""What a frame of the streaming engine (:mod:`.engine`) passes between its stages and returns:
the published result, the stage boundaries' times, the encoder's output, the perception (every
stage but the text decoder) and the last decoded caption."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from edge_vlm.inference.grounding import SceneReport
from edge_vlm.inference.routing import Route

__all__ = ["DecodedCaption", "EncoderOutput", "FrameResult", "Perception", "StageTimes"]


@dataclass
class FrameResult:
    text: str
    score: float               # mean token log-probability of a decoded text; 0.0 verbalised
    label: int                 # published gesture 1..11, 0 = no gesture (grounding.decide)
    gesture_name: str          # "" for no gesture
    confidence: float          # calibrated, smoothed probability of ``label``
    active_tokens: int         # tokens re-encoded this frame
    total_tokens: int
    change_tokens: int         # tokens in the change mask (subset of active_tokens)
    refreshed: bool
    flops: dict[str, float]
    flops_dense: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    frame_index: int = 0
    caption_fresh: bool = True  # False: text reused (caption_period, caption_reuse_threshold)
    layer_tokens: list = field(default_factory=list)   # tokens recomputed per encoder layer
    route: Route | None = None                         # the joint STTF+ANC engine's route
    scene: SceneReport | None = None                   # what the heads found (grounding)

    @property
    def flops_executed(self) -> float:
        return float(sum(self.flops.values()))


@dataclass(slots=True)
class StageTimes:
    """``time.perf_counter()`` at the stage boundaries of one frame (s)."""

    start: float
    mask: float             # change mask done
    memory: float           # token memory updated
    encoder: float          # encoder done
    fusion: float           # fusion and gesture head done
    decoder: float = 0.0    # text decoder done

    def latency_ms(self, router_ms: float | None) -> dict[str, float]:
        """Per-stage wall time (ms); an ANC router that ran inside the encoder stage is reported
        as its own stage (the encoder time is the ViT's alone)."""
        lat = {"mask": (self.mask - self.start) * 1e3, "memory": (self.memory - self.mask) * 1e3}
        enc = (self.encoder - self.memory) * 1e3
        if router_ms is not None:
            lat["router"] = router_ms
            enc -= router_ms
        lat.update({"encoder": enc, "fusion": (self.fusion - self.encoder) * 1e3,
                    "decoder": (self.decoder - self.fusion) * 1e3,
                    "total": (self.decoder - self.start) * 1e3})
        return lat


@dataclass(slots=True)
class EncoderOutput:
    """The encoder stage of a frame (``_encode``)."""

    vis: torch.Tensor                   # vision tokens (N, D)
    layer_tokens: list[int]             # tokens recomputed per layer (ANC: the dominant branch's)
    dense: bool                         # a dense pass ran
    decoder_layers: int | None = None   # ANC: decoder blocks of the dominant level (None: all)
    decoder_beam: int | None = None     # ANC: its widest beam (None: the engine's beam_size)
    route: Route | None = None          # ANC
    branch_tokens: dict[int, list[int]] = field(default_factory=dict)   # ANC: per branch that ran
    router_ms: float | None = None      # ANC: the routing stage's wall time (in the encoder stage)


@dataclass(slots=True)
class Perception:
    """Every stage of a frame but the text decoder (:meth:`StreamingCaptioner.perceive`)."""

    change: np.ndarray                  # the change mask (bool, N)
    changed: np.ndarray                 # tokens whose memory input changed (indices)
    enc: EncoderOutput
    resync: bool                        # the whole memory was re-embedded
    fused: torch.Tensor                 # fused queries (1, Q, D)
    logits: torch.Tensor                # gesture logits (K,)
    vision_logits: torch.Tensor         # the vision head's (K,)
    motion: torch.Tensor | None         # the motion state the motion head read (1, C, g, g)
    learned_mask: bool                  # the change mask came from the mask net
    times: StageTimes
    fusion_tokens: int = 0              # tokens whose fusion keys/values were recomputed
    head: torch.nn.Module | None = None  # the motion head that answered (None: the vision head)


@dataclass(slots=True)
class DecodedCaption:
    """The last decoded text and what it was decoded from (the reference of the caption gate)."""

    ids: list[int]
    score: float
    key: tuple                          # what it says (grounding key: kind, gesture, ...)
    pathway: tuple                      # (decoder layers, beam width)
    prefix: torch.Tensor                # the fused queries it was decoded from
    text: str = ""                      # the published text
