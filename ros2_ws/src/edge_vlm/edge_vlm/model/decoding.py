"""Caption decoding with the MicroGPT's KV cache: greedy (with a speculative draft) and beam
search."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from edge_vlm.model.sttf import CaptionModel

#: a decoding constraint: the token ids allowed after a prefix of generated ids (None: any)
Allowed = Callable[[list[int]], list[int]] | None


def _choose(logp: np.ndarray, prefix: list[int], allowed: Allowed) -> int:
    """The greedy choice among the allowed tokens (``logp`` (V,), a tensor's numpy view: numpy
    and torch both take the first of equal maxima, so the choice is torch.argmax's)."""
    if allowed is None:
        return int(np.argmax(logp))
    ids = allowed(prefix)
    if not ids:
        return int(np.argmax(logp))
    if len(ids) == 1:               # the constraint decides alone (the argmax of one token)
        return int(ids[0])
    return int(ids[int(np.argmax(logp[ids]))])


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


#: teacher-forced passes of one speculative greedy decoding at most (the draft, then redrafts)
MAX_PASSES = 3


class StepCache:
    """A decoder KV cache kept elsewhere than PyTorch's per-block ``{"k", "v"}`` dicts (e.g. the
    native kernel's layer memories, :class:`edge_vlm.inference.native_decoder.NativeKV`): a
    teacher-forced pass (:data:`Start`) may return one instead of the dicts, and
    :func:`decode_greedy` then cuts it with :meth:`trim` and continues with :meth:`step`."""

    def trim(self, n: int) -> None:
        """Keep the first ``n`` positions (prefix included)."""
        raise NotImplementedError

    def step(self, token: int, position: int) -> torch.Tensor:
        """:meth:`MicroGPT.step` of one token at absolute ``position`` (the cache's length): the
        next-token logits (1, V); extends the cache."""
        raise NotImplementedError


def _trim(caches: list[dict] | StepCache, n: int) -> None:
    if isinstance(caches, StepCache):
        caches.trim(n)
        return
    for c in caches:
        c["k"], c["v"] = c["k"][:, :, :n], c["v"][:, :, :n]


def _step(model: CaptionModel, token: int, position: int,
          caches: list[dict] | StepCache) -> torch.Tensor:
    if isinstance(caches, StepCache):
        return caches.step(token, position)
    return model.decoder.step(torch.tensor([[token]]), position, caches)


class _Spec:
    """The state of a speculative greedy decoding: the tokens so far, their log-prob sum, the
    teacher-forced passes' lengths (BOS included)."""

    def __init__(self):
        self.out: list[int] = []
        self.logp_sum = 0.0
        self.passes: list[int] = []
        self.done = False

    def result(self, stats: dict | None, steps: int) -> tuple[list[int], float]:
        if stats is not None:
            stats.update(first=self.passes[0] if self.passes else 1, steps=steps,
                         passes=list(self.passes))
        return self.out, self.logp_sum / max(1, len(self.out) + 1)


#: the decoder's teacher-forced pass: MicroGPT.start's signature (decoder first; the caches it
#: returns PyTorch's dicts or a :class:`StepCache`); None: start
Start = Callable[..., tuple[torch.Tensor, "list[dict] | StepCache"]] | None


def _verify(model: CaptionModel, fused: torch.Tensor, bos: int, eos: int, max_len: int,
            layers: int | None, guess: list[int], st: _Spec, allowed: Allowed,
            start: Start = None) -> list[dict] | StepCache:
    """One teacher-forced pass over BOS + the tokens so far + ``guess``: greedy's choice after
    every guessed prefix, kept up to the first disagreement (the disagreeing choice included);
    returns the KV cache of BOS + the kept tokens but the last."""
    seq = st.out + guess
    p, k0 = fused.shape[1], len(st.out)
    run = start or type(model.decoder).start
    logits, caches = run(model.decoder, fused, torch.tensor([[bos] + seq]), layers,
                         all_logits=True)
    st.passes.append(len(seq) + 1)
    lp = torch.log_softmax(logits[0], dim=-1).numpy()     # read without a tensor per element
    for i in range(k0, len(seq) + 1):
        nxt = _choose(lp[i], st.out, allowed)
        st.logp_sum += float(lp[i, nxt])
        if nxt == eos:
            st.done = True
            break
        st.out.append(nxt)
        if len(st.out) == max_len:
            st.done = True
            break
        if i < len(seq) and nxt != seq[i]:      # disagreement: keep the cache up to here
            _trim(caches, p + i + 1)
            break
    return caches


@torch.no_grad()
def decode_greedy(model: CaptionModel, fused: torch.Tensor, bos: int, eos: int,
                  max_len: int, layers: int | None = None, draft: list[int] | None = None,
                  stats: dict | None = None, allowed: Allowed = None,
                  redraft: Callable[[list[int]], list[int]] | None = None,
                  start: Start = None) -> tuple[list[int], float]:
    """Greedy KV-cached decoding of one caption; returns (token ids, mean log-prob).

    ``draft`` (e.g. the previous frame's caption): speculative decoding with the draft as the
    guess -- one teacher-forced pass over BOS + draft gives greedy's choice after every draft
    prefix; the draft is kept up to its first disagreement (or entirely, with the EOS check),
    the KV cache is cut there and plain steps continue. ``redraft(tokens so far)``: after a
    disagreement, a new guess of the rest (e.g. the caption constraint's completion), verified
    by another teacher-forced pass from BOS (at most :data:`MAX_PASSES` passes in all). The
    result is greedy decoding's (the same argmax decisions), at one pass (or a few) instead of
    one step per token when the guess is right. ``stats`` receives ``first`` (tokens of the
    first pass, BOS included), ``passes`` (every teacher-forced pass's tokens) and ``steps``
    (single-token steps after them), for the FLOPs counter. ``allowed``: constrained decoding
    (the argmax over the tokens it allows after the prefix; the score stays the model's own
    log-probability of the chosen tokens). ``start``: the teacher-forced pass
    (:meth:`MicroGPT.start` or a function of the same signature with the decoder first, e.g.
    :func:`edge_vlm.inference.native_decoder.decoder_start`)."""
    st = _Spec()
    if max_len <= 0:
        return st.out, 0.0
    p = fused.shape[1]
    guess = list(draft or [])[:max_len]
    if guess:
        while True:
            caches = _verify(model, fused, bos, eos, max_len, layers, guess, st, allowed,
                             start)
            if st.done:
                return st.result(stats, 0)
            if redraft is None or len(st.passes) >= MAX_PASSES:
                break
            guess = list(redraft(list(st.out)))[:max_len - len(st.out)]
            if not guess:
                break
            # the cache of the last pass keeps BOS + out[:-1]; a new pass starts from BOS
        logits = _step(model, st.out[-1], p + len(st.out), caches)
        pos, steps = p + len(st.out) + 1, 1
    else:
        logits, caches = (start or type(model.decoder).start)(model.decoder, fused,
                                                              torch.tensor([[bos]]), layers)
        st.passes.append(1)
        steps, pos = 0, p + 1
    out = st.out
    while True:
        logp = torch.log_softmax(logits, dim=-1)[0].numpy()
        nxt = _choose(logp, out, allowed)
        st.logp_sum += float(logp[nxt])
        if nxt == eos:
            break
        out.append(nxt)
        if len(out) >= max_len:
            break
        logits = _step(model, nxt, pos, caches)
        pos += 1
        steps += 1
    return st.result(stats, steps)


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
