"""Evaluation metrics as plain functions returning JSON-safe values (no rclpy, no torch).

Captions (COCO caption protocol, ``pycocoevalcap`` 1.2):

* :func:`ptb_tokenize` -- the Stanford PTB tokenizer of pycocoevalcap (Java):
  lowercases and drops punctuation, exactly as the COCO evaluation server.
  Without Java a Python approximation is used (reported as ``"tokenizer":
  "simple"``).
* :func:`caption_metrics` -- corpus BLEU-1..4, METEOR 1.5, ROUGE-L and
  CIDEr-D for one candidate caption per item against its references.
  SPICE is left out on purpose (it downloads Stanford models at first use).
* :func:`cider_d` -- a small stand-alone CIDEr-D (Vedantam et al. 2015):
  tf-idf n-gram vectors (n = 1..4, idf from the reference corpus), candidate
  tf clipped to the reference tf, Gaussian length penalty
  ``exp(-(l_c - l_r)^2 / (2 sigma^2))`` with sigma = 6, mean over n, mean over
  references, times 10. pycocoevalcap 1.2 ships no separate ``ciderD``
  module: its ``Cider`` scorer *is* this CIDEr-D (clipping and penalty added
  by vrama91), so :func:`caption_metrics` uses pycocoevalcap's scorer and
  :func:`cider_d` documents/cross-checks it (the tests compare both).

Gestures and costs: :func:`gesture_accuracy`, :func:`confusion_matrix`
(11 x 11 over the 1-based DvsGesture labels, or 12 x 12 with 0 = no gesture; rows = truth,
row-normalized),
:func:`percentiles` (p50/p95/p99 + mean/min/max).
"""
from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES, NUM_CLASSES

__all__ = ["CAPTION_METRICS", "EMPTY_CAPTION", "NO_GESTURE_NAME", "ptb_tokenize",
           "caption_metrics", "cider_d", "bleu_scores", "gesture_accuracy", "confusion_matrix",
           "percentiles", "json_safe", "java_available"]

#: class name of label 0 (no gesture: a scene without one, or the model saying so)
NO_GESTURE_NAME = "no_gesture"
#: names of the caption metrics, in report order
CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
#: stands in for an empty candidate caption (an empty line breaks the PTB
#: tokenizer's line alignment and METEOR's protocol); it matches no reference word
EMPTY_CAPTION = "emptycaption"

# the punctuation pycocoevalcap's PTBTokenizer removes after tokenizing
_PTB_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
              "-",
              "--", "...", ";", "-lrb-", "-rrb-", "-lcb-", "-rcb-"}


def json_safe(x):
    """Recursively turn numpy scalars/arrays into Python values and NaN/inf into None."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def java_available() -> bool:
    return shutil.which("java") is not None


# ----------------------------------------------------------------------------- tokenizing
def _simple_tokenize(text: str) -> str:
    """Python fallback close to PTBTokenizer -lowerCase + punctuation removal."""
    text = text.lower().replace("\n", " ")
    text = re.sub(r"([.,!?;:()\[\]{}\"`])", r" \1 ", text)
    text = re.sub(r"(\w)'(\w)", r"\1 '\2", text)
    brackets = {"(", ")", "[", "]", "{", "}", '"'}
    return " ".join(w for w in text.split() if w not in _PTB_PUNCT and w not in brackets)


def ptb_tokenize(captions: Mapping[object, Sequence[str]], *, use_java: bool | None = None
                 ) -> tuple[dict, str]:
    """Tokenize ``{key: [caption, ...]}`` -> (``{key: [tokenized, ...]}``, tokenizer name).

    Uses pycocoevalcap's Stanford PTBTokenizer when Java is available
    (``"ptb"``), else :func:`_simple_tokenize` (``"simple"``). Empty captions
    become :data:`EMPTY_CAPTION`.
    """
    keys = list(captions)
    clean = {k: [(" ".join(str(c).split()) or EMPTY_CAPTION) for c in captions[k]] for k in keys}
    if use_java is None:
        use_java = java_available()
    if use_java and any(clean.values()):
        flat = [c for k in keys for c in clean[k]]
        toks = _run_ptb(flat)
        if toks is not None:
            it = iter(toks)
            return {k: [next(it) or EMPTY_CAPTION for _ in clean[k]] for k in keys}, "ptb"
    simple = {k: [_simple_tokenize(c) or EMPTY_CAPTION for c in v] for k, v in clean.items()}
    return simple, "simple"


def _run_ptb(sentences: list[str]) -> list[str] | None:
    """pycocoevalcap's PTBTokenizer command (same jar, flags and punctuation filter), but with
    the temp file outside site-packages and the tokenizer's stderr chatter captured."""
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer as ptb
    except ImportError:
        return None
    jar = os.path.join(os.path.dirname(os.path.abspath(ptb.__file__)),
                       ptb.STANFORD_CORENLP_3_4_1_JAR)
    if not os.path.isfile(jar):
        return None
    with tempfile.TemporaryDirectory(prefix="edge_vlm_ptb_") as d:
        src = os.path.join(d, "captions.txt")
        with open(src, "w", encoding="utf-8") as f:
            f.write("\n".join(s.replace("\n", " ") for s in sentences))
        try:
            proc = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer",
                                   "-preserveLines", "-lowerCase", src],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
    if proc.returncode != 0:
        return None
    lines = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if len(lines) < len(sentences):
        return None
    punct = set(ptb.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punct)
            for line in lines[:len(sentences)]]


# ----------------------------------------------------------------------------- CIDEr-D
def _ngrams(words: Sequence[str], n: int) -> Counter:
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i:i + k])] += 1
    return c


def cider_d(candidates: Mapping[object, str], references: Mapping[object, Sequence[str]], *,
            n: int = 4, sigma: float = 6.0) -> tuple[float, dict]:
    """CIDEr-D of already tokenized captions: ``(corpus mean, {key: score})``.

    For item i with candidate c and references S_i (m_i of them)::

        idf(g)   = log(N) - log(max(1, df(g)))      df: items whose references contain g, N items
        g_n(s)   = tf(g, s) * idf(g) for n-grams g of length n
        sim_n    = sum_g min(g_n(c), g_n(s)) * g_n(s) / (|g_n(c)| |g_n(s)|)   (0 if a norm is 0)
        CIDEr-D  = 10 / m_i * sum_s exp(-(l(c) - l(s))^2 / (2 sigma^2)) * mean_n sim_n

    ``l`` is the caption length; like the reference code (whose length counts
    the bigrams, i.e. words - 1 for non-empty captions) only the difference
    matters, so word counts are used here.
    """
    keys = list(candidates)
    if not keys:
        return 0.0, {}
    cand = {k: _ngrams(candidates[k].split(), n) for k in keys}
    refs = {k: [_ngrams(r.split(), n) for r in references[k]] for k in keys}
    lens_c = {k: len(candidates[k].split()) for k in keys}
    lens_r = {k: [len(r.split()) for r in references[k]] for k in keys}
    df: Counter = Counter()
    for k in keys:
        df.update(set(g for r in refs[k] for g in r))
    log_n = math.log(float(len(keys)))

    def vec(counts: Counter):
        v = [dict() for _ in range(n)]
        for g, tf in counts.items():
            v[len(g) - 1][g] = tf * (log_n - math.log(max(1.0, df.get(g, 0.0))))
        norms = [math.sqrt(sum(w * w for w in d.values())) for d in v]
        return v, norms

    scores = {}
    for k in keys:
        vc, nc = vec(cand[k])
        total = 0.0
        for r, lr in zip(refs[k], lens_r[k]):
            vr, nr = vec(r)
            sims = []
            for i in range(n):
                s = sum(min(w, vr[i].get(g, 0.0)) * vr[i].get(g, 0.0) for g, w in vc[i].items())
                sims.append(s / (nc[i] * nr[i]) if nc[i] != 0 and nr[i] != 0 else 0.0)
            total += math.exp(-((lens_c[k] - lr) ** 2) / (2.0 * sigma ** 2)) * float(np.mean(sims))
        scores[k] = 10.0 * total / max(1, len(refs[k]))
    return float(np.mean(list(scores.values()))), scores


# ----------------------------------------------------------------------------- captions
def bleu_scores(candidates: Mapping[object, str],
                references: Mapping[object, Sequence[str]]) -> dict:
    """Corpus BLEU-1..4 (pycocoevalcap, 'closest' reference length) of tokenized captions."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {k: list(references[k]) for k in candidates}
    res = {k: [candidates[k]] for k in candidates}
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"BLEU-{i + 1}": float(s) for i, s in enumerate(score)}


def caption_metrics(candidates: Mapping[object, str], references: Mapping[object, Sequence[str]],
                    *,
                    meteor: bool = True, tokenize: bool = True, per_item: bool = False) -> dict:
    """Corpus caption metrics of one candidate per item against its references.

    ``candidates``: ``{key: caption}``; ``references``: ``{key: [captions]}``
    (same keys, at least one reference each). Captions are PTB-tokenized first
    (``tokenize=False``: already tokenized). Returns ``{"BLEU-1".."BLEU-4",
    "METEOR", "ROUGE-L", "CIDEr-D", "n", "tokenizer"}`` (+ ``"per_item"``:
    ``{key: {metric: score}}``); a metric that cannot run (METEOR without
    Java, or ``meteor=False``) is None; with no items every metric is None.
    """
    keys = [k for k in candidates]
    missing = [k for k in keys if not references.get(k)]
    if missing:
        raise ValueError(f"no references for {len(missing)} item(s), e.g. {missing[0]!r}")
    out: dict = {m: None for m in CAPTION_METRICS}
    out.update(n=len(keys), tokenizer=None)
    if not keys:
        return out
    if tokenize:
        toks, name = ptb_tokenize({**{("c", i): [candidates[k]] for i, k in enumerate(keys)},
                                   **{("r", i): list(references[k]) for i, k in enumerate(keys)}})
        res = {i: [toks[("c", i)][0]] for i in range(len(keys))}
        gts = {i: toks[("r", i)] for i in range(len(keys))}
    else:
        name = "none"
        res = {i: [(" ".join(str(candidates[k]).split()) or EMPTY_CAPTION)]
               for i, k in enumerate(keys)}
        gts = {i: [" ".join(str(r).split()) for r in references[k]] for i, k in enumerate(keys)}
    out["tokenizer"] = name
    items: dict = {i: {} for i in range(len(keys))}

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    score, per = Bleu(4).compute_score(gts, res, verbose=0)
    for j in range(4):
        out[f"BLEU-{j + 1}"] = float(score[j])
        for i in range(len(keys)):
            items[i][f"BLEU-{j + 1}"] = float(per[j][i])
    score, per = Rouge().compute_score(gts, res)
    out["ROUGE-L"] = float(score)
    for i in range(len(keys)):
        items[i]["ROUGE-L"] = float(per[i])
    # pycocoevalcap's Cider = CIDEr-D (clipped tf, Gaussian length penalty sigma 6, x10),
    # see cider_d()
    score, per = Cider(n=4, sigma=6.0).compute_score(gts, res)
    out["CIDEr-D"] = float(score)
    for i in range(len(keys)):
        items[i]["CIDEr-D"] = float(per[i])
    if meteor and java_available():
        got = _meteor_score(gts, res)
        if got is not None:
            out["METEOR"] = got[0]
            for i in range(len(keys)):
                items[i]["METEOR"] = got[1][i]
    if per_item:
        out["per_item"] = {str(k): items[i] for i, k in enumerate(keys)}
    return json_safe(out)


_METEOR = None          # one METEOR 1.5 process per Python process (it loads its tables in ~10 s)
_METEOR_LOCK = threading.Lock()


def _meteor_score(gts: dict, res: dict) -> tuple[float, list[float]] | None:
    """METEOR via pycocoevalcap (cached Java process); None if it cannot run."""
    global _METEOR
    with _METEOR_LOCK:
        for attempt in range(2):
            try:
                if _METEOR is None:
                    from pycocoevalcap.meteor.meteor import Meteor

                    _METEOR = Meteor()
                    atexit.register(_close_meteor, _METEOR)
                score, per = _METEOR.compute_score(gts, res)
                return float(score), [float(v) for v in per]
            except Exception:   # dead/broken process: restart once, then give up (METEOR = None)
                if _METEOR is not None:
                    _close_meteor(_METEOR)
                _METEOR = None
    return None


def _close_meteor(m) -> None:
    proc = getattr(m, "meteor_p", None)
    if proc is None:
        return
    # not under m.lock: pycocoevalcap leaves it held when compute_score raised
    for step in (proc.stdin.close, proc.kill, proc.wait, proc.stdout.close, proc.stderr.close):
        try:
            step()
        except Exception:
            pass
    # pycocoevalcap's __del__ repeats close/kill/wait later: harmless on a finished process


# ----------------------------------------------------------------------------- gestures
def _labels(values: Iterable, lowest: int = 1) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.int64).reshape(-1)
    if a.size and (a.min() < lowest or a.max() > NUM_CLASSES):
        raise ValueError(f"gesture labels must be in {lowest}..{NUM_CLASSES}")
    return a


def gesture_accuracy(y_true: Iterable[int], y_pred: Iterable[int]) -> dict:
    """``{"accuracy", "correct", "total"}`` (accuracy None when there is nothing to score).
    Labels 0..11: 0 is "no gesture" (a scene without one, or the model saying so)."""
    t, p = _labels(y_true, 0), _labels(y_pred, 0)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true labels but {p.size} predictions")
    correct = int((t == p).sum())
    return {"accuracy": (correct / t.size) if t.size else None, "correct": correct,
            "total": int(t.size)}


def confusion_matrix(y_true: Iterable[int], y_pred: Iterable[int],
                     num_classes: int = NUM_CLASSES, *, no_gesture: bool = False) -> dict:
    """Confusion matrix over the 1-based labels 1..num_classes (rows = truth, columns =
    prediction); ``no_gesture``: label 0 (:data:`NO_GESTURE_NAME`) as the first row/column.

    Returns ``{"labels", "class_names", "counts" (int, K x K), "normalized"
    (each row divided by its total; all-zero rows stay 0), "support" (row
    totals), "per_class_accuracy" (diagonal of normalized; None without
    support)}``.
    """
    lo = 0 if no_gesture else 1
    t, p = _labels(y_true, lo), _labels(y_pred, lo)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true labels but {p.size} predictions")
    k = int(num_classes) + 1 - lo
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (t - lo, p - lo), 1)
    support = counts.sum(axis=1)
    norm = counts / np.maximum(support, 1)[:, None]
    names = list(GESTURE_CLASSES[:int(num_classes)])
    names += [f"class_{i}" for i in range(len(GESTURE_CLASSES) + 1, int(num_classes) + 1)]
    names = [NO_GESTURE_NAME] * (1 - lo) + names
    return {"labels": list(range(lo, int(num_classes) + 1)), "class_names": names,
            "counts": counts.tolist(),
            "normalized": [[float(v) for v in row] for row in norm], "support": support.tolist(),
            "per_class_accuracy": [float(norm[i, i]) if support[i] else None for i in range(k)]}


# ----------------------------------------------------------------------------- distributions
def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95, 99)) -> dict:
    """``{"p50", "p95", "p99", "mean", "min", "max", "n"}`` (linear interpolation, numpy's
    default); every statistic is None for an empty input. Other ``qs`` give ``p<q>`` keys."""
    a = np.asarray([float(v) for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    out: dict = {}
    for q in qs:
        key = f"p{q:g}".replace(".", "_")
        out[key] = float(np.percentile(a, q)) if a.size else None
    out.update(mean=float(a.mean()) if a.size else None, min=float(a.min()) if a.size else None,
               max=float(a.max()) if a.size else None, n=int(a.size))
    return out
