"""The captioning model (Foundation version), in one readable file.

Pipeline per frame (batch 1 at inference):

1. ``PatchEncoder``: every 8x8 patch of the frame (event histogram channels,
   plus RGB when a camera provides it) becomes one token. The encoder is
   patch-local, so a token depends only on its own patch: reusing the token of
   an unchanged patch from the token memory is *exact*, and only active patches
   are recomputed (a gather, not a zero-mask).
2. ``AttentionPool``: a few learned queries summarise the frame's tokens; the
   last ``history`` summaries form the temporal context (a ring buffer).
3. ``Fusion``: learned query tokens cross-attend to the current tokens plus the
   temporal tokens; the change mask enters as an additive attention bias
   (learned strength) that favours dynamic content.
4. ``MicroGPT``: a small causal transformer with a KV cache writes the caption
   after the fused prefix; a linear head on the fused tokens gives the gesture.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    image_size: int = 128
    patch: int = 8
    event_channels: int = 4
    rgb_channels: int = 3
    dim: int = 96
    heads: int = 4
    summary_tokens: int = 4
    history: int = 8
    fusion_queries: int = 8
    dec_layers: int = 2
    max_len: int = 24
    num_classes: int = 11
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

    def to_dict(self) -> dict:
        return asdict(self)


def patchify(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, C*patch*patch)`` with N row-major patches."""
    b, c, h, w = frames.shape
    x = frames.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


class PatchEncoder(nn.Module):
    """Patch-local token encoder: Linear-GELU-Linear plus position and modality embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.patch_dim, cfg.dim)
        self.fc2 = nn.Linear(cfg.dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.num_tokens, cfg.dim) * 0.02)
        self.rgb_flag = nn.Parameter(torch.zeros(cfg.dim))

    def empty_tokens(self, has_rgb: torch.Tensor) -> torch.Tensor:
        """Tokens of all-zero patches for every position: ``(len(has_rgb), N, D)`` (exact, cheap)."""
        base = self.fc2(F.gelu(self.fc1.bias)) + self.pos
        return base[None] + has_rgb.to(base.dtype)[:, None, None] * self.rgb_flag

    def forward(self, patches: torch.Tensor, pos_index: torch.Tensor | None = None,
                has_rgb: bool | torch.Tensor = False) -> torch.Tensor:
        """``patches (..., n, patch_dim)``; ``pos_index`` selects position rows (default all)."""
        pos = self.pos if pos_index is None else self.pos[pos_index]
        tok = self.fc2(F.gelu(self.fc1(patches))) + pos
        if isinstance(has_rgb, torch.Tensor):
            tok = tok + has_rgb.view(-1, *([1] * (tok.dim() - 1))).to(tok.dtype) * self.rgb_flag
        elif has_rgb:
            tok = tok + self.rgb_flag
        return tok


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, nq, d = q.shape
        nk = kv.shape[1]
        h = self.heads
        qh = self.q(q).view(b, nq, h, d // h).transpose(1, 2)
        k, v = self.kv(kv).view(b, nk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if bias is None else bias[:, None, None, :].to(qh.dtype)
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class AttentionPool(nn.Module):
    """``summary_tokens`` learned queries attend over a frame's tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.summary_tokens, cfg.dim) * 0.02)
        self.norm = nn.LayerNorm(cfg.dim)
        self.attn = CrossAttention(cfg.dim, cfg.heads)

    def forward(self, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q = self.queries.expand(tokens.shape[0], -1, -1)
        return self.attn(q, self.norm(tokens), bias)


class Fusion(nn.Module):
    """Temporal cross-attention of query tokens over current + temporal vision tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.fusion_queries, cfg.dim) * 0.02)
        self.time = nn.Parameter(torch.randn(cfg.history, 1, cfg.dim) * 0.02)
        self.norm_kv = nn.LayerNorm(cfg.dim)
        self.attn = CrossAttention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))

    def forward(self, tokens: torch.Tensor, mask_bias: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """tokens (B,N,D), mask_bias (B,N), history (B,K,S,D) oldest first."""
        b = tokens.shape[0]
        hist = (history + self.time).reshape(b, -1, tokens.shape[-1])
        kv = self.norm_kv(torch.cat([tokens, hist], dim=1))
        bias = torch.cat([mask_bias, mask_bias.new_zeros(b, hist.shape[1])], dim=1)
        x = self.queries.expand(b, -1, -1)
        x = x + self.attn(x, kv, bias)
        return x + self.mlp(self.norm2(x))


class Block(nn.Module):
    """Pre-norm causal transformer block with an optional KV cache."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, cache: dict | None = None, causal_from: int = 0) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        if cache is not None and "k" in cache:
            k = torch.cat([cache["k"], k], dim=2)
            v = torch.cat([cache["v"], v], dim=2)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        total = k.shape[2]
        if t == 1:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            # prefix (first causal_from positions) is fully visible, the rest is causal
            i = torch.arange(total - t, total, device=x.device)[:, None]
            j = torch.arange(total, device=x.device)[None, :]
            allowed = (j <= i) | (j < causal_from)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.proj(out.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class MicroGPT(nn.Module):
    """A tiny GPT that continues a vision prefix with caption tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = len(cfg.vocab)
        self.tok = nn.Embedding(v, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.fusion_queries + cfg.max_len + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads) for _ in range(cfg.dec_layers)])
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, v, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        self.prefix_len = cfg.fusion_queries

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for ``tokens`` (B,T) after ``prefix`` (B,P,D): (B,T,V)."""
        x = torch.cat([prefix, self.tok(tokens)], dim=1)
        x = x + self.pos[: x.shape[1]]
        for blk in self.blocks:
            x = blk(x, causal_from=self.prefix_len)
        return self.head(self.ln(x[:, self.prefix_len:]))

    def start(self, prefix: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """Fill the KV cache with the prefix and the first token; return logits of the next token."""
        caches = [dict() for _ in self.blocks]
        x = torch.cat([prefix, self.tok(first)], dim=1)
        x = x + self.pos[: x.shape[1]]
        for blk, c in zip(self.blocks, caches):
            x = blk(x, cache=c, causal_from=self.prefix_len)
        return self.head(self.ln(x[:, -1])), caches

    def step(self, token: torch.Tensor, position: int, caches: list[dict]) -> torch.Tensor:
        """One cached decoding step for ``token`` (B,1) at absolute ``position``."""
        x = self.tok(token) + self.pos[position]
        for blk, c in zip(self.blocks, caches):
            x = blk(x, cache=c)
        return self.head(self.ln(x[:, -1]))


class CaptionModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = PatchEncoder(cfg)
        self.pool = AttentionPool(cfg)
        self.fusion = Fusion(cfg)
        # strong initial bias: dynamic (changed) tokens dominate attention from the start
        self.mask_strength = nn.Parameter(torch.tensor(3.0))
        self.decoder = MicroGPT(cfg)
        self.gesture = nn.Sequential(nn.LayerNorm(2 * cfg.dim), nn.Linear(2 * cfg.dim, cfg.num_classes))

    # -- pieces used by both training and streaming inference --
    def mask_bias(self, active: torch.Tensor) -> torch.Tensor:
        return self.mask_strength * active.to(torch.float32)

    def summarize(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        return self.pool(tokens, self.mask_bias(active))

    def fuse(self, tokens: torch.Tensor, active: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.fusion(tokens, self.mask_bias(active), history)

    def gesture_logits(self, fused: torch.Tensor, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Gesture from the fused queries plus a direct path: the mean of the frame's changed tokens."""
        w = active.to(tokens.dtype)[..., None]
        dyn = (tokens * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        return self.gesture(torch.cat([fused.mean(dim=1), dyn], dim=-1))

    # -- training: a clip window of K frames, the last one captioned --
    def forward(self, patches: torch.Tensor, active: torch.Tensor, has_rgb: torch.Tensor,
                tokens_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (B,K,N,patch_dim) as :func:`patchify` lays them out, active (B,K,N) bool,
        has_rgb (B,), tokens_in (B,T). Returns (gesture logits (B,classes), caption logits (B,T,V)).
        """
        b, k = patches.shape[:2]
        # history frames are context only: encoded without gradients, and only their non-empty
        # patches (denoised empty patches are exactly zero, so their token is the cheap empty token)
        with torch.no_grad():
            h_rgb = has_rgb.repeat_interleave(k - 1)
            h_act = active[:, :-1].flatten(0, 1)
            past = self.encoder.empty_tokens(h_rgb)
            rows, cols = (h_act | h_rgb[:, None]).nonzero(as_tuple=True)
            if len(rows):
                hp = patches[:, :-1].flatten(0, 1)
                past[rows, cols] = self.encoder(hp[rows, cols], pos_index=cols, has_rgb=h_rgb[rows])
            past_summ = self.summarize(past, h_act)
        cur = self.encoder(patches[:, -1], has_rgb=has_rgb)
        cur_summ = self.summarize(cur, active[:, -1])
        summ = torch.cat([past_summ.view(b, k - 1, self.cfg.summary_tokens, -1), cur_summ[:, None]], dim=1)
        fused = self.fuse(cur, active[:, -1], summ)
        return self.gesture_logits(fused, cur, active[:, -1]), self.decoder(fused, tokens_in)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def decode_greedy(model: CaptionModel, fused: torch.Tensor, bos: int, eos: int,
                  max_len: int) -> tuple[list[int], float]:
    """Greedy KV-cached decoding of one caption; returns (token ids, mean log-prob)."""
    logits, caches = model.decoder.start(fused, torch.tensor([[bos]]))
    out: list[int] = []
    logp_sum = 0.0
    pos = fused.shape[1] + 1
    for _ in range(max_len):
        logp = torch.log_softmax(logits, dim=-1)[0]
        nxt = int(torch.argmax(logp))
        logp_sum += float(logp[nxt])
        if nxt == eos:
            break
        out.append(nxt)
        logits = model.decoder.step(torch.tensor([[nxt]]), pos, caches)
        pos += 1
    return out, logp_sum / max(1, len(out) + 1)


@torch.no_grad()
def decode_beam(model: CaptionModel, fused: torch.Tensor, bos: int, eos: int, max_len: int,
                beam: int = 3) -> tuple[list[int], float]:
    """Beam search (batched beams, KV cache reordered per step); length-normalised score."""
    logits, caches = model.decoder.start(fused, torch.tensor([[bos]]))
    logp = torch.log_softmax(logits, dim=-1)[0]
    top = torch.topk(logp, beam)
    beams = [([int(i)], float(s)) for s, i in zip(top.values, top.indices)]
    caches = [{"k": c["k"].repeat(beam, 1, 1, 1), "v": c["v"].repeat(beam, 1, 1, 1)} for c in caches]
    finished: list[tuple[list[int], float]] = []
    pos = fused.shape[1] + 1
    for _ in range(max_len - 1):
        alive = [(i, b) for i, b in enumerate(beams) if b[0][-1] != eos]
        for b in beams:
            if b[0][-1] == eos:
                finished.append((b[0][:-1], b[1] / len(b[0])))
        if not alive:
            break
        idx = torch.tensor([i for i, _ in alive])
        caches = [{"k": c["k"][idx], "v": c["v"][idx]} for c in caches]
        last = torch.tensor([[b[0][-1]] for _, b in alive])
        lp = torch.log_softmax(model.decoder.step(last, pos, caches), dim=-1)
        pos += 1
        scores = torch.tensor([b[1] for _, b in alive])[:, None] + lp
        flat = torch.topk(scores.flatten(), min(beam, scores.numel()))
        v = lp.shape[1]
        new_beams, sel = [], []
        for s, f in zip(flat.values, flat.indices):
            r, tkn = divmod(int(f), v)
            new_beams.append((alive[r][1][0] + [tkn], float(s)))
            sel.append(r)
        sel_t = torch.tensor(sel)
        caches = [{"k": c["k"][sel_t], "v": c["v"][sel_t]} for c in caches]
        beams = new_beams
    for b in beams:
        if b[0][-1] != eos:
            finished.append((b[0], b[1] / max(1, len(b[0]))))
    best = max(finished, key=lambda z: z[1])
    return best[0], best[1]


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, pad: int) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad)


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    # scale residual projections as in GPT-2
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.trunc_normal_(p, std=0.02 / math.sqrt(2 * 2))
