"""The captioning model's configuration and the pure helpers on its token grid."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import torch

#: upper bounds (inclusive) of the age buckets, in frames; the last bucket is "older / never"
AGE_BUCKETS = (0, 1, 2, 4, 8, 16, 31)


@dataclass
class ModelConfig:
    image_size: int = 128
    patch: int = 8
    event_channels: int = 4
    rgb_channels: int = 3
    dim: int = 128
    heads: int = 4
    depth: int = 4
    mlp_ratio: int = 4
    # ReLU in the encoder: at batch 1 on CPU, GELU's erf costs as much as a matmul
    encoder_act: str = "relu"
    fusion_queries: int = 8
    dec_layers: int = 2
    max_len: int = 24
    num_classes: int = 11
    max_age: int = 32            # frames; a token not refreshed for this long expires
    mask_hidden: int = 16        # channels of the change-mask net
    mask_count_threshold: float = 3.0   # the rule the mask net starts from (events per patch)
    # the gesture head reads the memory's motion state too (edge-vlm train --model gesture)
    motion_head: bool = False
    motion_width: int = 32       # channels of the motion head's first convs
    # the motion head also says "no gesture" and describes the scene (model/motion.py HEADS)
    scene_head: bool = False
    vocab: list = field(default_factory=list)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def in_channels(self) -> int:
        return self.event_channels + self.rgb_channels

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch * self.patch

    @property
    def age_buckets(self) -> int:
        return len(AGE_BUCKETS) + 1

    def to_dict(self) -> dict:
        return asdict(self)


def patchify(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, C*patch*patch)`` with N row-major patches."""
    b, c, h, w = frames.shape
    x = frames.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def age_bucket(age: torch.Tensor, max_age: int) -> torch.Tensor:
    """Bucket index of token ages (frames since the patch last changed; >= max_age = never)."""
    edges = torch.tensor(AGE_BUCKETS, dtype=age.dtype, device=age.device)
    b = torch.bucketize(age, edges)
    return torch.where(age >= max_age, torch.full_like(b, len(AGE_BUCKETS)), b)


@lru_cache(maxsize=8)
def _bucket_table(max_age: int) -> np.ndarray:
    """:func:`age_bucket` of every age 0..max_age (read-only)."""
    t = age_bucket(torch.arange(max_age + 1), max_age).numpy()
    t.flags.writeable = False
    return t


def age_bucket_np(age: np.ndarray, max_age: int) -> torch.Tensor:
    """:func:`age_bucket` of an integer numpy ``age`` array (a streaming engine's, per token),
    by looking up a table of it: the same values, without four tensor calls per frame."""
    return torch.from_numpy(_bucket_table(max_age)[np.clip(age, 0, max_age)])
