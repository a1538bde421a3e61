"""Metric plumbing on hand-computable caption sets, gesture accuracy/confusion, percentiles."""
import json
import math

import numpy as np
import pytest

from edge_vlm.evaluation.metrics import (CAPTION_METRICS, caption_metrics, cider_d,
    confusion_matrix, gesture_accuracy, java_available, json_safe, percentiles, ptb_tokenize)

needs_java = pytest.mark.skipif(not java_available(),
                                reason="Java is needed for the PTB tokenizer / METEOR")


# --------------------------------------------------------------------------- BLEU / ROUGE-L
def test_identical_caption_scores_one():
    c = {"x": "a person waves the right hand quickly"}
    r = {"x": ["a person waves the right hand quickly"]}
    m = caption_metrics(c, r, meteor=False, tokenize=False)
    for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"):
        assert m[k] == pytest.approx(1.0, abs=1e-6), k
    assert m["n"] == 1 and m["METEOR"] is None


def test_bleu_rouge_by_hand():
    # cand:  the cat sat on the mat      ref: the cat sat on a mat   (same length: BP = 1)
    # clipped n-gram precisions: 1-gram 5/6, 2-gram 3/5, 3-gram 2/4, 4-gram 1/3
    m = caption_metrics({0: "the cat sat on the mat"}, {0: ["the cat sat on a mat"]}, meteor=False,
                        tokenize=False)
    p = [5 / 6, 3 / 5, 2 / 4, 1 / 3]
    for n in range(1, 5):
        want = math.prod(p[:n]) ** (1 / n)
        assert m[f"BLEU-{n}"] == pytest.approx(want, rel=1e-6), n
    # ROUGE-L: LCS = 5 ("the cat sat on mat"), P = R = 5/6 -> F_beta = 5/6 for any beta
    assert m["ROUGE-L"] == pytest.approx(5 / 6, rel=1e-9)


def test_bleu_brevity_penalty_by_hand():
    # 2 candidate words, closest reference 6 words: BP = exp(1 - 6/2); unigram/bigram precision 1
    m = caption_metrics({0: "the cat"}, {0: ["the cat sat on the mat"]}, meteor=False,
                        tokenize=False)
    assert m["BLEU-1"] == pytest.approx(math.exp(-2), rel=1e-6)
    assert m["BLEU-2"] == pytest.approx(math.exp(-2), rel=1e-6)
    assert m["BLEU-4"] < 1e-3


# --------------------------------------------------------------------------- CIDEr-D
def test_cider_d_identical_two_word_corpus():
    # 2 items, every n-gram in the references of one item: idf = log 2 everywhere;
    # cosine 1 for n = 1, 2 and 0 for n = 3, 4 (no such n-grams): 10 * mean(1, 1, 0, 0) = 5
    c = {"a": "a b", "b": "c d"}
    r = {"a": ["a b"], "b": ["c d"]}
    mean, per = cider_d(c, r)
    assert per == {"a": pytest.approx(5.0), "b": pytest.approx(5.0)} and mean == pytest.approx(5.0)
    assert caption_metrics(c, r, meteor=False, tokenize=False)["CIDEr-D"] == pytest.approx(5.0)


def test_cider_d_length_penalty_and_clipping_by_hand():
    # item A: cand "a b" vs ref "a b c": cos1 = 2/sqrt(6), cos2 = 1/sqrt(2), penalty exp(-1/72)
    # item B: identical 3 words: cos1 = cos2 = cos3 = 1, cos4 = 0 -> 7.5
    c = {"A": "a b", "B": "d e f"}
    r = {"A": ["a b c"], "B": ["d e f"]}
    a = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    mean, per = cider_d(c, r)
    assert per["A"] == pytest.approx(a, rel=1e-9) and per["B"] == pytest.approx(7.5, rel=1e-9)
    m = caption_metrics(c, r, meteor=False, tokenize=False, per_item=True)
    assert m["CIDEr-D"] == pytest.approx((a + 7.5) / 2, rel=1e-9)
    assert m["per_item"]["A"]["CIDEr-D"] == pytest.approx(a, rel=1e-9)
    # clipping: cand "a a" vs ref "a b": min(2 idf, idf) * idf / (2 idf * sqrt(2) idf)
    # = 1/(2 sqrt 2)
    # (unclipped it would be twice that); same length -> no penalty
    mean, per = cider_d({"A": "a a", "B": "c d"}, {"A": ["a b"], "B": ["c d"]})
    assert per["A"] == pytest.approx(10 * (1 / (2 * math.sqrt(2))) / 4, rel=1e-9)
    m = caption_metrics({"A": "a a", "B": "c d"}, {"A": ["a b"], "B": ["c d"]}, meteor=False,
                        tokenize=False,
                        per_item=True)
    assert m["per_item"]["A"]["CIDEr-D"] == pytest.approx(per["A"], rel=1e-9)


def test_cider_d_matches_pycocoevalcap_on_a_corpus():
    rng = np.random.default_rng(0)
    words = "a person waves claps the right left hand arm quickly slowly on in center".split()
    cands, refs = {}, {}
    for i in range(12):
        cands[i] = " ".join(rng.choice(words, rng.integers(2, 9)))
        refs[i] = [" ".join(rng.choice(words, rng.integers(3, 10)))
                   for _ in range(int(rng.integers(1, 6)))]
    mean, per = cider_d(cands, refs)
    m = caption_metrics(cands, refs, meteor=False, tokenize=False, per_item=True)
    assert m["CIDEr-D"] == pytest.approx(mean, rel=1e-9)
    for i in cands:
        assert m["per_item"][str(i)]["CIDEr-D"] == pytest.approx(per[i], rel=1e-9, abs=1e-12)


def test_single_item_cider_is_zero():
    # with one item every reference n-gram has df = N = 1, so idf = 0 (a property of CIDEr-D)
    assert cider_d({0: "a b c"}, {0: ["a b c"]})[0] == 0.0


# ----------------------------------------------------------------- tokenizer / METEOR / edge cases
@needs_java
def test_ptb_tokenizer_lowercases_and_strips_punctuation():
    toks, name = ptb_tokenize({1: ["A Person, waving quickly.", ""], 2: ["Someone claps!"]})
    assert name == "ptb"
    assert toks == {1: ["a person waving quickly", "emptycaption"], 2: ["someone claps"]}
    # the tokenized and the raw call give the same scores
    m = caption_metrics({0: "The cat sat on the mat."}, {0: ["the cat sat on a mat"]},
                        meteor=False)
    assert m["tokenizer"] == "ptb" and m["BLEU-1"] == pytest.approx(5 / 6, rel=1e-6)


def test_simple_tokenizer_fallback():
    toks, name = ptb_tokenize({1: ["A Person, waving quickly."]}, use_java=False)
    assert name == "simple" and toks == {1: ["a person waving quickly"]}


@needs_java
def test_meteor_identical_and_disjoint():
    m = caption_metrics({0: "a person waves the right hand", 1: "a person claps hands"},
                        {0: ["a person waves the right hand"],
                         1: ["someone plays the air guitar"]},
                        per_item=True)
    assert m["per_item"]["0"]["METEOR"] > 0.95
    assert m["per_item"]["1"]["METEOR"] < m["per_item"]["0"]["METEOR"]
    assert 0.0 < m["METEOR"] <= 1.0


def test_empty_inputs_and_empty_caption():
    m = caption_metrics({}, {})
    assert m["n"] == 0 and all(m[k] is None for k in CAPTION_METRICS)
    m = caption_metrics({0: "", 1: "a b"}, {0: ["a b c d"], 1: ["a b"]}, meteor=False)
    assert m["n"] == 2 and 0.0 <= m["BLEU-1"] <= 1.0 and m["CIDEr-D"] >= 0.0
    with pytest.raises(ValueError):
        caption_metrics({0: "a"}, {0: []})
    json.dumps(m)


# --------------------------------------------------------------------------- gestures
def test_accuracy_and_confusion_toy():
    t = [1, 1, 2, 2, 3, 11]
    p = [1, 2, 2, 2, 1, 11]
    acc = gesture_accuracy(t, p)
    assert acc == {"accuracy": pytest.approx(4 / 6), "correct": 4, "total": 6}
    cm = confusion_matrix(t, p)
    assert cm["labels"] == list(range(1, 12)) and len(cm["class_names"]) == 11
    counts = np.asarray(cm["counts"])
    assert counts.shape == (11, 11) and counts.sum() == 6
    assert counts[0, 0] == 1 and counts[0, 1] == 1 and counts[1, 1] == 2 and counts[2, 0] == 1
    norm = np.asarray(cm["normalized"])
    np.testing.assert_allclose(norm[0, :2], [0.5, 0.5])
    np.testing.assert_allclose(norm[1, 1], 1.0)
    np.testing.assert_allclose(norm[2, 0], 1.0)
    assert norm[3].sum() == 0.0                        # no support: row stays 0
    np.testing.assert_allclose(norm[[0, 1, 2, 10]].sum(axis=1), 1.0)
    assert cm["support"][:3] == [2, 2, 1] and cm["support"][10] == 1
    assert cm["per_class_accuracy"][0] == 0.5 and cm["per_class_accuracy"][3] is None
    json.dumps(cm)


def test_accuracy_edge_cases():
    assert gesture_accuracy([], []) == {"accuracy": None, "correct": 0, "total": 0}
    with pytest.raises(ValueError):
        gesture_accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        confusion_matrix([0], [1])
    with pytest.raises(ValueError):
        confusion_matrix([12], [1])


# --------------------------------------------------------------------------- percentiles / JSON
def test_percentiles():
    d = percentiles(range(1, 101))
    assert d["p50"] == pytest.approx(50.5) and d["p95"] == pytest.approx(95.05)
    assert d["p99"] == pytest.approx(99.01) and d["mean"] == pytest.approx(50.5)
    assert d["min"] == 1.0 and d["max"] == 100.0 and d["n"] == 100
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "mean": 7.0, "min": 7.0,
                                  "max": 7.0,
                                  "n": 1}
    e = percentiles([])
    assert e["n"] == 0 and e["p50"] is None and e["mean"] is None
    assert set(percentiles([1, 2], (50, 95))) == {"p50", "p95", "mean", "min", "max", "n"}
    assert percentiles([1.0, float("nan"), 3.0])["n"] == 2


def test_json_safe():
    d = json_safe({"a": np.float32(1.5), "b": np.int64(3), "c": float("nan"), "d": np.arange(3),
                   "e": (np.bool_(True), float("inf"))})
    assert d == {"a": 1.5, "b": 3, "c": None, "d": [0, 1, 2], "e": [True, None]}
    json.dumps(d, allow_nan=False)
