"""Caption decoding with the MicroGPT's KV cache: greedy (with a speculative draft) and beam
search."""
from __future__ import annotations

from typing import Callable

import torch

from edge_vlm.model.sttf import CaptionModel

#: a decoding constraint: the token ids allowed after a prefix of generated ids (None: any)
Allowed = Callable[[list[int]], list[int]] | None


def _choose(logp: torch.Tensor, prefix: list[int], allowed: Allowed) -> int:
    """The greedy choice among the allowed tokens (``logp`` (V,))."""
    if allowed is None:
        return int(torch.argmax(logp))
    ids = allowed(prefix)
    if not ids:
        return int(torch.argmax(logp))
    t = torch.tensor(ids)
    return int(t[torch.argmax(logp[t])])


def _mask(lp: torch.Tensor, prefixes: list[list[int]], allowed: Allowed) -> torch.Tensor:
    """``lp`` (B, V) with the tokens not allowed after each row's prefix at -inf."""
    if allowed is None:
        return lp
    out = torch.full_like(lp, float("-inf"))
    for r, pre in enumerate(prefixes):
        ids = allowed(pre)
        if ids:
            t = torch.tensor(ids)
            out[r, t] = lp[r, t]
        else:
            out[r] = lp[r]
    return out


@torch.no_grad()
def decode_greedy(model: CaptionModel, fused: torch.Tensor, bos: int, eos: int,
                  max_len: int, layers: int | None = None, draft: list[int] | None = None,
                  stats: dict | None = None, allowed: Allowed = None) -> tuple[list[int], float]:
    """Greedy KV-cached decoding of one caption; returns (token ids, mean log-prob).

    ``draft`` (e.g. the previous frame's caption): speculative decoding with the draft as the
    guess -- one teacher-forced pass over BOS + draft gives greedy's choice after every draft
    prefix; the draft is kept up to its first disagreement (or entirely, with the EOS check),
    the KV cache is cut there and plain steps continue. The result is greedy decoding's
    (the same argmax decisions), at one pass instead of one step per token when the caption
    did not change. ``stats`` receives ``first`` (tokens of the first pass, BOS included) and
    ``steps`` (single-token steps after it), for the FLOPs counter. ``allowed``: constrained
    decoding (the argmax over the tokens it allows after the prefix; the score stays the
    model's own log-probability of the chosen tokens)."""
    out: list[int] = []
    logp_sum = 0.0
    if max_len <= 0:
        return out, logp_sum
    p = fused.shape[1]
    draft = list(draft or [])[:max_len]
    if draft:
        logits, caches = model.decoder.start(fused, torch.tensor([[bos] + draft]), layers,
                                             all_logits=True)
        logp_all = torch.log_softmax(logits[0], dim=-1)
        for i in range(len(draft) + 1):
            nxt = _choose(logp_all[i], out, allowed)
            logp_sum += float(logp_all[i, nxt])
            if nxt == eos:
                if stats is not None:
                    stats.update(first=len(draft) + 1, steps=0)
                return out, logp_sum / max(1, len(out) + 1)
            out.append(nxt)
            if len(out) == max_len:
                if stats is not None:
                    stats.update(first=len(draft) + 1, steps=0)
                return out, logp_sum / max(1, len(out) + 1)
            if i < len(draft) and nxt != draft[i]:      # disagreement: keep the cache up to here
                for c in caches:
                    c["k"], c["v"] = c["k"][:, :, :p + i + 1], c["v"][:, :, :p + i + 1]
                break
        first = len(draft) + 1
        pos = p + len(out)
        logits = model.decoder.step(torch.tensor([[out[-1]]]), pos, caches)
        pos += 1
        steps = 1
    else:
        logits, caches = model.decoder.start(fused, torch.tensor([[bos]]), layers)
        first, steps, pos = 1, 0, p + 1
    while True:
        logp = torch.log_softmax(logits, dim=-1)[0]
        nxt = _choose(logp, out, allowed)
        logp_sum += float(logp[nxt])
        if nxt == eos:
            break
        out.append(nxt)
        if len(out) >= max_len:
            break
        logits = model.decoder.step(torch.tensor([[nxt]]), pos, caches)
        pos += 1
        steps += 1
    if stats is not None:
        stats.update(first=first, steps=steps)
    return out, logp_sum / max(1, len(out) + 1)


@torch.no_grad()
def decode_beam(model: CaptionModel, fused: torch.Tensor, bos: int, eos: int, max_len: int,
                beam: int = 3, layers: int | None = None,
                allowed: Allowed = None) -> tuple[list[int], float]:
    """Beam search (batched beams, KV cache reordered per step); length-normalised score.
    ``allowed``: constrained decoding (as :func:`decode_greedy`)."""
    logits, caches = model.decoder.start(fused, torch.tensor([[bos]]), layers)
    logp = _mask(torch.log_softmax(logits, dim=-1), [[]], allowed)[0]
    top = torch.topk(logp, beam)
    beams = [([int(i)], float(s)) for s, i in zip(top.values, top.indices)
             if float(s) > float("-inf")]
    beam = len(beams)
    caches = [{"k": c["k"].repeat(beam, 1, 1, 1), "v": c["v"].repeat(beam, 1, 1, 1)}
              for c in caches]
    finished: list[tuple[list[int], float]] = []
    pos = fused.shape[1] + 1
    for _ in range(max_len - 1):
        alive = [(i, b) for i, b in enumerate(beams) if b[0][-1] != eos]
        for b in beams:
            if b[0][-1] == eos:
                finished.append((b[0][:-1], b[1] / len(b[0])))
        if not alive:
            break
        if len(alive) < len(beams):        # drop the finished beams' cache rows
            idx = torch.tensor([i for i, _ in alive])
            caches = [{"k": c["k"][idx], "v": c["v"][idx]} for c in caches]
        last = torch.tensor([[b[0][-1]] for _, b in alive])
        lp = _mask(torch.log_softmax(model.decoder.step(last, pos, caches), dim=-1),
                   [b[0] for _, b in alive], allowed)
        pos += 1
        scores = torch.tensor([b[1] for _, b in alive])[:, None] + lp
        flat = torch.topk(scores.flatten(), min(beam, scores.numel()))
        v = lp.shape[1]
        new_beams, sel = [], []
        for s, f in zip(flat.values, flat.indices):
            if float(s) == float("-inf"):       # constrained: fewer continuations than beams
                continue
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
