"""evaluate() end to end on tiny generated inputs with an untrained checkpoint."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_vlm.io.bag_writer import write_bag
from edge_vlm.datasets.dvs128_gesture import Segment, write_splits, write_trial
from edge_vlm.cli import main
from edge_vlm.cores.graph import replay_params
from edge_vlm.evaluation.evaluate import LATENCY_STAGES, evaluate
from edge_vlm.events import EVENT_DTYPE
from edge_vlm.evaluation.metrics import CAPTION_METRICS
from edge_vlm.evaluation.trust import TRUST_KEYS
from edge_vlm.evaluation.trust_report import timeline_figure
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.sttf import CaptionModel
from edge_vlm.model.checkpoint import save_checkpoint
from edge_vlm.model.tokenizer import Tokenizer
from edge_vlm.cores.captioner import CaptionerCore
from edge_vlm.stream.frames import FrameClock
from edge_vlm.cores.perception import PerceptionCore

T0 = 2_000_000_000          # 2 s: recordings do not start at 0
SEG = 600_000_000           # two 0.6 s gesture segments
REFS = {2: ["a person waves the right hand", "someone waves their right hand",
            "a person waving the right hand",
            "a subject waves with the right hand", "an individual waves the right hand slowly"],
        9: ["a person plays air drums", "someone drums in the air",
            "a person playing air drums quickly",
            "a subject pretends to play drums", "an individual plays the air drums"]}


def blob_events(seed=0):
    """A 12x12 blob moving slowly (segment 1) then fast (segment 2); times are whole
    microseconds."""
    rng = np.random.default_rng(seed)
    chunks = []
    for ms in range(int(2 * SEG / 1e6)):
        t = T0 + ms * 1_000_000
        fast = ms >= SEG / 1e6
        cx = 30 + (ms * (0.12 if fast else 0.02)) % 70
        cy = 64 + (20 * np.sin(ms / 40.0) if fast else 0)
        n = 25 if fast else 12
        ev = np.zeros(n, EVENT_DTYPE)
        ev["t"] = np.sort(t + rng.integers(0, 1000, n) * 1000)
        ev["x"] = np.clip(cx + rng.integers(-6, 6, n), 0, 127)
        ev["y"] = np.clip(cy + rng.integers(-6, 6, n), 0, 127)
        ev["p"] = rng.integers(0, 2, n)
        chunks.append(ev)
    ev = np.concatenate(chunks)
    return ev[np.argsort(ev["t"], kind="stable")]


def ground_truth():
    return [{"clip_id": f"c{i}", "label": lab, "class_name": "x", "t_start_ns": T0 + i * SEG,
             "t_end_ns": T0 + (i + 1) * SEG, "attributes": {"motion": mot},
             "references": REFS[lab],
             "caption": REFS[lab][0]} for i, (lab, mot) in enumerate([(2, "low"), (9, "high")])]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    torch.manual_seed(0)
    tok = Tokenizer.build(REFS[2] + REFS[9])
    ckpt = str(root / "untrained.pt")
    save_checkpoint(ckpt, CaptionModel(ModelConfig(dim=32, heads=2, vocab=tok.vocab)))
    ev = blob_events()
    rng = np.random.default_rng(1)
    k0 = int(ev["t"][0]) // 33_333_333
    # 30 fps 64x64 RGB for the first 10 frames
    stamps = [(k0 + i + 1) * 33_333_333 for i in range(10)]
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in stamps]
    bag = write_bag(root / "bag", events=ev, frames=frames, frame_stamps_ns=stamps,
                    ground_truth=ground_truth())
    dvs = root / "DvsGesture"
    write_trial(dvs, "user01_lab", ev,
                [Segment(g["label"], g["t_start_ns"] // 1000, g["t_end_ns"] // 1000)
                                        for g in ground_truth()])
    write_splits(dvs, [], ["user01_lab"])
    return {"root": root, "ckpt": ckpt, "bag": str(bag), "dvs": str(dvs), "events": ev}


def test_evaluate_bag_end_to_end(data, tmp_path):
    out = tmp_path / "report"
    r = evaluate(data["bag"], checkpoint=data["ckpt"], progress=False, out_dir=out)
    json.dumps(r, allow_nan=False)
    for k in ("source", "checkpoint", "params", "frames", "frames_scored", "segments",
              "segments_scored",
              "accuracy", "confusion", "confusion_segment", "captions", "active_fraction", "flops",
              "latency_ms", "fps", "low_motion", "high_motion", "stream", "per_segment",
              "per_frame",
              "outputs", "wall_s", "ms_per_frame", "ground_truth", "trust"):
        assert k in r, k
    assert r["ground_truth"] is True
    tr = r["trust"]
    for k in ("caption_label_consistency", "reliability") + TRUST_KEYS:
        assert k in tr, k
    for k in ("caption_label_consistency", "caption_class_accuracy", "accuracy", "ece"):
        assert 0.0 <= tr[k] <= 1.0, k
    assert tr["accuracy"] == pytest.approx(r["accuracy"]["frame"]["accuracy"])
    # only gesture segments: no frame for the scene metrics
    assert tr["false_gesture_rate_non_gesture"] is None and tr["nothing_moves_rate_empty"] is None
    assert tr["calibration_frames"] == r["frames_scored"] == sum(tr["reliability"]["count"])
    assert tr["label_switches_per_s_in_gesture"] >= 0.0
    assert r["source"]["kind"] == "bag" and r["source"]["image_topic"] == "/camera/image_raw"
    # 1.2 s of events from 2 s on the 33.3 ms grid (frames 60..95)
    t = data["events"]["t"]
    n_frames = int(t[-1]) // 33_333_333 - int(t[0]) // 33_333_333 + 1
    assert r["frames"] == len(r["per_frame"]) == n_frames == 36
    assert r["segments"] == 2 and r["segments_scored"] == 2 and 30 <= r["frames_scored"] <= 37
    for level in ("frame", "segment"):
        a = r["accuracy"][level]
        assert a["total"] > 0 and 0.0 <= a["accuracy"] <= 1.0
    assert r["accuracy"]["segment"]["total"] == 2
    cm = np.asarray(r["confusion"]["normalized"])
    assert cm.shape == (12, 12) and np.all((cm >= 0) & (cm <= 1))     # 0 = no gesture
    assert np.asarray(r["confusion"]["counts"]).sum() == r["frames_scored"]
    caps = r["captions"]
    assert caps["n"] == 2 and caps["tokenizer"] in ("ptb", "simple")
    for m in CAPTION_METRICS:
        if m == "METEOR" and caps[m] is None:
            continue
        assert caps[m] is not None and caps[m] >= 0.0, m
        assert caps[m] <= (10.0 if m == "CIDEr-D" else 1.0), m
    af = r["active_fraction"]
    assert 0.0 < af["p50"] <= af["p95"] <= 1.0 and 0.0 < af["mean"] <= 1.0
    fl = r["flops"]
    assert 0 < fl["executed_mean"] <= fl["dense_mean"] and 0.0 < fl["ratio"] <= 1.0
    assert set(r["latency_ms"]) == set(LATENCY_STAGES)
    for st, d in r["latency_ms"].items():
        assert d["n"] == r["frames"] and 0.0 <= d["p50"] <= d["p95"] <= d["p99"], st
    assert r["latency_ms"]["total"]["p50"] >= r["latency_ms"]["captioner"]["p50"] * 0.99
    assert r["fps"]["wall"] > 0 and r["fps"]["pipeline"] > 0
    assert r["low_motion"]["segments"] == 1 and r["high_motion"]["segments"] == 1
    for key in ("low_motion", "high_motion"):
        d = r[key]
        assert d["frames"] > 0 and 0.0 <= d["frame_accuracy"] <= 1.0
        assert 0.0 < d["active_fraction_mean"] <= 1.0
    assert r["low_motion"]["frames"] + r["high_motion"]["frames"] == r["frames_scored"]
    st = r["stream"]
    assert st["rejected_packets"] == 0 and st["events"] == len(data["events"])
    assert sum(st["label_distribution"].values()) == pytest.approx(1.0)
    assert st["top_caption"] in {f["text"] for f in r["per_frame"]}
    assert st["branch_shares"] == {"base": 1.0}           # no anc_router in the replay
    assert st["rgb_frames"] == 10       # RGB (resized 64 -> 128) for the first frames only
    assert [f["rgb"] for f in r["per_frame"][:11]] == [True] * 10 + [False]
    fr = r["per_frame"][5]
    for k in ("index", "t_end", "text", "label", "confidence", "active_tokens", "total_tokens",
              "flops_executed",
              "flops_dense", "latency_ms", "segment", "gt_label"):
        assert k in fr, k
    seg = r["per_segment"][1]
    assert seg["caption"] == max((f for f in r["per_frame"] if f["segment"] == 1),
                                 key=lambda f: f["t_end"])["text"]
    for name in ("json", "frames", "markdown", "confusion_png", "active_fraction_png",
                 "timeline_png", "reliability_png"):
        assert os.path.getsize(r["outputs"][name]) > 0, name
    summary = json.loads(Path(r["outputs"]["json"]).read_text())
    assert "per_frame" not in summary and summary["frames"] == n_frames
    assert len(Path(r["outputs"]["frames"]).read_text().splitlines()) == n_frames
    md = Path(r["outputs"]["markdown"]).read_text()
    assert "CIDEr-D" in md and "| total |" in md and "low_motion" in md
    assert "caption_label_consistency" in md and "ece" in md and "Stream statistics" in md


def test_evaluate_is_the_node_logic(data):
    """Same records as driving FrameClock -> PerceptionCore -> CaptionerCore by hand (events
    only)."""
    r = evaluate(data["bag"], checkpoint=data["ckpt"], progress=False, meteor=False,
                 overrides={"use_rgb": "never"})
    rp = replay_params({"use_rgb": "never"}, data["ckpt"])
    pp, cp = rp.perception, rp.captioner
    perc, capt = PerceptionCore(pp), CaptionerCore(cp)
    clock = FrameClock(33_333_333)
    frames = clock.push(data["events"], 128, 128) + clock.flush()
    assert [f.index for f in frames] == [x["index"] for x in r["per_frame"]]
    for f, rec in zip(frames, r["per_frame"]):
        mask = perc.process(f)
        res = capt.process(f, None, change_indices=mask.active_indices)
        assert (res.text, res.label, res.active_tokens, res.change_tokens) == \
               (rec["text"], rec["label"], rec["active_tokens"], rec["change_tokens"])
        assert res.confidence == pytest.approx(rec["confidence"], rel=1e-5)
    assert r["stream"]["rgb_frames"] == 0


def test_evaluate_dvs128_matches_bag_and_max_frames(data):
    kw = dict(checkpoint=data["ckpt"], progress=False, meteor=False,
              overrides={"use_rgb": "never"})
    rb = evaluate(data["bag"], max_frames=20, **kw)
    rd = evaluate(data["dvs"], max_frames=20, **kw)
    assert rd["source"]["kind"] == "dvs128" and rd["source"]["trials"] == ["user01_lab.aedat"]
    assert rb["frames"] == rd["frames"] == 20
    def key(x):
        return x["index"], x["label"], x["text"], x["active_tokens"], x["gt_label"]

    assert [key(x) for x in rb["per_frame"]] == [key(x) for x in rd["per_frame"]]
    # the labels CSV has no motion attribute
    assert rd["low_motion"] is None and rd["high_motion"] is None
    assert rd["per_segment"][0]["references"][0].startswith("a person ")


def test_overrides_validation(data):
    rp = replay_params({"event_count_threshold": 5, "vlm_captioner.decoding": "beam",
                        "sttf_perception": {"publish_mask_image": False}}, "x.pt", graph="")
    pp, cp = rp.perception, rp.captioner
    assert pp["event_count_threshold"] == cp["event_count_threshold"] == 5
    assert cp["decoding"] == "beam" and not pp["publish_mask_image"] and cp["checkpoint"] == "x.pt"
    with pytest.raises(ValueError):
        replay_params({"no_such_param": 1})
    with pytest.raises(ValueError):
        replay_params({"frame_period_ms": "fast"})
    with pytest.raises(ValueError):
        # the nodes would disagree on frames
        replay_params({"sttf_perception.frame_period_ms": 20.0})


def test_eval_cli(data, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", data["bag"], "--out", str(out), "--checkpoint", data["ckpt"],
                 "--max-frames",
                 "8", "--json", "--no-meteor", "--no-progress", "-p", "use_rgb=never"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["frames"] == 8 and "per_frame" not in got
    assert got["params"]["vlm_captioner"]["use_rgb"] == "never"
    assert (out / "eval.md").is_file() and (out / "confusion.png").is_file()
    assert main(["eval", str(tmp_path / "missing"), "--out", str(out), "--no-progress"]) == 2
    assert main(["eval", data["bag"], "--out", str(out), "--checkpoint", str(tmp_path / "none.pt"),
                 "--no-progress"]) == 3


def test_evaluate_unlabelled_bag(data, tmp_path):
    """A bag without ground truth: stream statistics, a timeline plot that does not mention
    ground truth, no accuracy-type values."""
    ev = data["events"]
    bag = write_bag(tmp_path / "bag", events=ev[ev["t"] < T0 + 300_000_000])
    out = tmp_path / "report"
    r = evaluate(str(bag), checkpoint=data["ckpt"], progress=False, meteor=False, out_dir=out,
                 overrides={"use_rgb": "never"})
    json.dumps(r, allow_nan=False)
    assert r["ground_truth"] is False and r["segments"] == 0 and r["frames"] > 0
    assert r["accuracy"]["frame"]["accuracy"] is None and r["captions"]["BLEU-4"] is None
    for k in TRUST_KEYS:
        assert r["trust"][k] is None, k
    assert 0.0 <= r["trust"]["caption_label_consistency"] <= 1.0
    st = r["stream"]
    for k in ("label_distribution", "label_switches_per_s", "scene_kind_distribution",
              "branch_shares", "top_caption", "top_caption_share", "caption_examples"):
        assert k in st, k
    assert sum(st["label_distribution"].values()) == pytest.approx(1.0)
    assert 0.0 < st["top_caption_share"] <= 1.0 and st["caption_examples"]
    assert st["caption_examples"][0]["text"] == r["per_frame"][0]["text"]
    assert set(r["outputs"]) >= {"timeline_png", "active_fraction_png", "markdown"}
    assert "reliability_png" not in r["outputs"] and "confusion_png" not in r["outputs"]
    assert os.path.getsize(r["outputs"]["timeline_png"]) > 0
    assert not (out / "confusion.png").exists()
    md = Path(r["outputs"]["markdown"]).read_text()
    assert "no ground truth" in md and "Stream statistics" in md and "accuracy, per" not in md
    from matplotlib.text import Text

    fig = timeline_figure(r["per_frame"], ground_truth=False)
    words = " ".join(t.get_text() for t in fig.findobj(Text)).lower()
    assert "published gesture" in words
    for w in ("ground", "truth", "gt", "accuracy"):
        assert w not in words.split() and "ground-truth" not in words, w
