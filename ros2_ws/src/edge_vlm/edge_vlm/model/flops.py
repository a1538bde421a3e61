"""Analytic FLOPs of the captioning model per stage (1 multiply-add = 2 FLOPs).

Counts matrix multiplications and attention products, the terms that
``torch.utils.flop_counter`` counts; norms and activations are left out there
and here. ``tests/test_model.py`` checks the dense count against
``torch.utils.flop_counter`` (within 5%).
"""
from __future__ import annotations

from .captioner import ModelConfig


def linear(n: int, d_in: int, d_out: int) -> float:
    return 2.0 * n * d_in * d_out


def attention(nq: int, nk: int, d: int) -> float:
    """Scores plus weighted sum."""
    return 2.0 * 2.0 * nq * nk * d


def cross_attention(cfg: ModelConfig, nq: int, nk: int) -> float:
    d = cfg.dim
    return linear(nq, d, d) + linear(nk, d, 2 * d) + attention(nq, nk, d) + linear(nq, d, d)


def encoder_flops(cfg: ModelConfig, active_tokens: int) -> float:
    """Patch encoder on ``active_tokens`` patches."""
    return linear(active_tokens, cfg.patch_dim, cfg.dim) + linear(active_tokens, cfg.dim, cfg.dim)


def fusion_flops(cfg: ModelConfig) -> float:
    """Frame summary + temporal cross-attention fusion + gesture head."""
    n = cfg.num_tokens
    hist = cfg.history * cfg.summary_tokens
    pool = cross_attention(cfg, cfg.summary_tokens, n)
    fuse = cross_attention(cfg, cfg.fusion_queries, n + hist)
    mlp = linear(cfg.fusion_queries, cfg.dim, 4 * cfg.dim) + linear(cfg.fusion_queries, 4 * cfg.dim, cfg.dim)
    head = linear(1, 2 * cfg.dim, cfg.num_classes)
    return pool + fuse + mlp + head


def decoder_flops(cfg: ModelConfig, generated: int, beams: int = 1) -> float:
    """KV-cached decoding: prefix+BOS once, then one step per generated token (per beam)."""
    d, v = cfg.dim, len(cfg.vocab)

    def block(nq: int, nk: int) -> float:
        return (linear(nq, d, 3 * d) + attention(nq, nk, d) + linear(nq, d, d)
                + linear(nq, d, 4 * d) + linear(nq, 4 * d, d))

    p = cfg.fusion_queries + 1
    total = cfg.dec_layers * block(p, p) + linear(1, d, v)
    for i in range(generated):
        total += beams * (cfg.dec_layers * block(1, p + i + 1) + linear(1, d, v))
    return total


def frame_flops(cfg: ModelConfig, active_tokens: int, generated: int, beams: int = 1) -> dict[str, float]:
    """Per-stage FLOPs of one processed frame."""
    return {
        "encoder": encoder_flops(cfg, active_tokens),
        "fusion": fusion_flops(cfg),
        "decoder": decoder_flops(cfg, generated, beams),
    }
