"""Analytic FLOPs of the STTF captioning model per stage (1 multiply-add = 2 FLOPs).

Counts convolutions, matrix multiplications and attention products, the terms that
``torch.utils.flop_counter`` counts; norms, activations, pooling and gathers are left
out there and here. ``tests/test_model.py`` checks every stage's dense count against
``torch.utils.flop_counter`` (within 5%).

Stages: ``change_mask`` (the conv net; 0 when the mask comes from the rule or from
outside), ``encoder`` (patch embedding + gate of the changed patches, then the ViT with
``layer_tokens[l]`` tokens recomputed at layer ``l``: their qkv / projection / MLP, and
their attention over all N keys), ``fusion`` (age-embedded tokens, mask-biased
cross-attention, gesture head with its motion net), ``decoder`` (KV-cached MicroGPT).
"""
from __future__ import annotations

from edge_vlm.model.config import ModelConfig
from edge_vlm.model.motion import head_outputs, motion_channels


def linear(n: int, d_in: int, d_out: int) -> float:
    return 2.0 * n * d_in * d_out


def attention(nq: int, nk: int, d: int) -> float:
    """Scores plus weighted sum."""
    return 2.0 * 2.0 * nq * nk * d


def conv(h: int, w: int, c_in: int, c_out: int, k: int) -> float:
    return 2.0 * h * w * c_in * c_out * k * k


def mask_flops(cfg: ModelConfig) -> float:
    s, hid = cfg.image_size, cfg.mask_hidden
    return (conv(s // 2, s // 2, cfg.event_channels, hid // 2, 3)
            + conv(s // 4, s // 4, hid // 2, hid, 3)
            + conv(cfg.grid, cfg.grid, hid, 1, 1))


def embed_flops(cfg: ModelConfig, n: int, merged: int | None = None) -> float:
    """Embedding of ``n`` patches; ``merged`` of them also go through the memory gate."""
    d = cfg.dim
    m = n if merged is None else merged
    return linear(n, cfg.patch_dim, d) + linear(n, d, d) + linear(m, 2 * d, d)


def vit_flops(cfg: ModelConfig, layer_tokens: list[int], hidden: list[int] | None = None) -> float:
    """``layer_tokens[l]`` tokens recomputed at layer l, ``hidden[l]`` MLP channels kept there
    (default: all, ``mlp_ratio * dim``)."""
    d, n_all = cfg.dim, cfg.num_tokens
    total = 0.0
    for li, n in enumerate(layer_tokens):
        h = cfg.mlp_ratio * d if hidden is None else hidden[li]
        total += (linear(n, d, 3 * d) + attention(n, n_all, d) + linear(n, d, d)
                  + linear(n, d, h) + linear(n, h, d))
    return total


def estimator_flops(cfg: ModelConfig, hidden: int = 8) -> float:
    """ANC complexity estimator (two stride-2 convs on the 4x-pooled histogram, a linear layer)."""
    s = cfg.image_size // 4
    return (conv(s // 2, s // 2, cfg.event_channels, hidden, 3)
            + conv(s // 4, s // 4, hidden, hidden, 3)
            + linear(1, hidden + 3, 3))


def encoder_flops(cfg: ModelConfig, layer_tokens: list[int], n_embed: int) -> float:
    return embed_flops(cfg, n_embed) + vit_flops(cfg, layer_tokens)


def motion_head_flops(cfg: ModelConfig, width: int | None = None) -> float:
    """The gesture head's conv net on the motion state (:class:`.motion.MotionHead`, ``width``
    channels, default ``cfg.motion_width``: an ANC level's own head may be narrower); 0 without
    it."""
    if not cfg.motion_head:
        return 0.0
    g, w = cfg.grid, width or cfg.motion_width
    return (conv(g, g, motion_channels(cfg) + 2, w, 3) + conv(g, g, w, w, 3)
            + conv(g // 2, g // 2, w, 2 * w, 3) + conv(g // 4, g // 4, 2 * w, 2 * w, 3)
            + linear(1, 2 * w * (g // 4) ** 2, head_outputs(cfg)))


def fusion_flops(cfg: ModelConfig, kv_tokens: int | None = None,
                 motion_width: int | None = None) -> float:
    """Mask-biased cross-attention of the fusion queries over all tokens, MLP, gesture head
    (with the motion head when the model has one, ``motion_width`` channels: see
    :func:`motion_head_flops`); ``kv_tokens``: the tokens whose keys and values were computed
    (the streaming cache's recomputed rows; default: all)."""
    d, n, q = cfg.dim, cfg.num_tokens, cfg.fusion_queries
    kv = n if kv_tokens is None else kv_tokens
    cross = linear(q, d, d) + linear(kv, d, 2 * d) + attention(q, n, d) + linear(q, d, d)
    mlp = linear(q, d, 4 * d) + linear(q, 4 * d, d)
    head = linear(1, 2 * d, cfg.num_classes)
    return cross + mlp + head + motion_head_flops(cfg, motion_width)


def decoder_flops(cfg: ModelConfig, generated: int, beams: int = 1, layers: int | None = None,
                  first: int = 1) -> float:
    """KV-cached decoding: prefix + ``first`` tokens in one pass (BOS; speculative greedy
    decoding: BOS + the draft, with logits at each), then ``generated`` single-token steps
    (per beam); ``layers`` decoder blocks (ANC's early exit; default all)."""
    d, v = cfg.dim, len(cfg.vocab)

    def block(nq: int, nk: int) -> float:
        return (linear(nq, d, 3 * d) + attention(nq, nk, d) + linear(nq, d, d)
                + linear(nq, d, 4 * d) + linear(nq, 4 * d, d))

    nl = cfg.dec_layers if layers is None else layers
    p = cfg.fusion_queries + first
    total = nl * block(p, p) + linear(first, d, v)
    if generated > 0:
        # the steps i = 0 .. generated-1 of one query over p + i + 1 keys, summed in closed form
        # (every term an integer below 2**53: the same float as the per-step sum, in any order;
        # the engines count every frame, and the loop was most of that count's time)
        keys = generated * (p + 1) + generated * (generated - 1) // 2
        total += beams * (generated * (nl * block(1, 0) + linear(1, d, v))
                          + nl * attention(1, keys, d))
    return total


def frame_flops(cfg: ModelConfig, layer_tokens: list[int], n_embed: int, generated: int,
                beams: int = 1, learned_mask: bool = True,
                fusion_tokens: int | None = None) -> dict[str, float]:
    """Per-stage FLOPs of one processed frame (``fusion_tokens``: see :func:`fusion_flops`)."""
    return {
        "change_mask": mask_flops(cfg) if learned_mask else 0.0,
        "encoder": encoder_flops(cfg, layer_tokens, n_embed),
        "fusion": fusion_flops(cfg, fusion_tokens),
        "decoder": decoder_flops(cfg, generated, beams),
    }
