"""edge-vlm coco: COCO-format captioning harness (RGB-only, change mask from frame differences)."""
import json

import numpy as np
import pytest

from edge_vlm.evaluation.coco import (CocoFormatError, DOMAIN_NOTE, frame_diff_mask,
    load_coco_captions, load_image, markdown_report, run_coco)
from edge_vlm.evaluation.metrics import CAPTION_METRICS

REFS = ["a red square on a dark background", "a bright square in the middle", "a square on black"]


def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny untrained checkpoint; the shipped one ('') if the model API changed under us."""
    try:
        import torch

        from edge_vlm.model.config import ModelConfig
        from edge_vlm.model.sttf import CaptionModel
        from edge_vlm.model.checkpoint import load_checkpoint, save_checkpoint
        from edge_vlm.model.tokenizer import Tokenizer

        torch.manual_seed(0)
        path = str(tmp_path_factory.mktemp("coco_ckpt") / "tiny.pt")
        save_checkpoint(path, CaptionModel(ModelConfig(dim=32, heads=2,
                                                       vocab=Tokenizer.build(REFS).vocab)))
        load_checkpoint(path)
        return path
    except Exception:   # pragma: no cover - concurrent model rewrite
        return ""


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """5 listed images: 0 base (non-square, 96x160), 1 identical to 0, 2 with one block changed,
    3 missing file, 4 corrupt file; one annotation for an unknown image id."""
    root = tmp_path_factory.mktemp("coco")
    img = root / "images"
    img.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 60, (96, 160, 3), dtype=np.uint8)
    base[30:60, 60:100] = (220, 40, 40)
    changed = base.copy()
    changed[:20, :40] = 255
    _png(img / "a.png", base)
    _png(img / "b.png", base)
    _png(img / "c.png", changed)
    (img / "e.jpg").write_bytes(b"not a jpeg at all")
    images = [{"id": i + 1, "file_name": f, "width": 160, "height": 96}
              for i, f in enumerate(["a.png", "b.png", "c.png", "d.png", "e.jpg"])]
    anns = [{"id": 10 * i + j, "image_id": i + 1,
             "caption": r} for i in range(5) for j, r in enumerate(REFS)]
    anns.append({"id": 999, "image_id": 77, "caption": "an orphan caption"})
    cap = root / "captions.json"
    cap.write_text(json.dumps({"images": images, "annotations": anns}))
    return {"root": root, "images": img, "captions": cap, "base": base}


def test_frame_diff_mask_reads_the_one_luma():
    """The change mask's luma is sim.gestures.luma (the same bits on every CPU), not a matrix
    product of its own."""
    from edge_vlm.sim.gestures import luma

    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[:8, :8] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    diff = np.abs(luma(b, np.float32) - luma(a, np.float32))
    per_patch = diff.reshape(4, 8, 4, 8).mean(axis=(1, 3)).reshape(-1)
    for t in (0.0, float(np.median(per_patch[per_patch > 0])), 50.0):
        assert np.array_equal(frame_diff_mask(a, b, 8, t), per_patch > t)


def test_frame_diff_mask_marks_exactly_the_modified_patches():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    first = frame_diff_mask(None, a, 8, 5.0)
    assert first.all() and first.shape == (24,)
    assert not frame_diff_mask(a, a.copy(), 8, 0.0).any()
    b = a.copy()
    b[8:16, 16:24] = 255 - b[8:16, 16:24]          # patch (row 1, col 2)
    b[24:32, 40:48] = 0                           # patch (row 3, col 5)
    b[0, 0] = b[0, 0] // 2 + 1                    # one pixel: below any reasonable threshold
    m = frame_diff_mask(a, b, 8, 4.0)
    assert m.dtype == bool and m.shape == (24,)
    assert set(np.flatnonzero(m)) == {1 * 6 + 2, 3 * 6 + 5}
    with pytest.raises(ValueError, match="shapes differ"):
        frame_diff_mask(a, a[:16], 8, 1.0)
    with pytest.raises(ValueError, match="multiple of the patch"):
        frame_diff_mask(None, a[:30], 8, 1.0)


def test_load_image_resizes_and_center_crops(coco):
    x = load_image(coco["images"] / "a.png", 128)
    assert x.shape == (128, 128, 3) and x.dtype == np.uint8
    # the red block (centered in the 160-wide image) stays in the middle after the crop
    assert x[64, 64, 0] > 150 and x[64, 64, 1] < 100


def test_coco_end_to_end(coco, ckpt, tmp_path):
    r = run_coco(coco["images"], coco["captions"], checkpoint=ckpt, meteor=False)
    json.dumps(r, allow_nan=False)
    assert r["note"] == DOMAIN_NOTE and "out of domain" in r["note"]
    assert r["images_processed"] == 3 and r["images_scored"] == 3
    assert r["skipped"] == {"missing": 1, "unreadable": 1, "no_references": 0,
                            "unknown_image_annotations": 1}
    assert {s["file_name"] for s in r["skipped_files"]} == {"d.png", "e.jpg"}
    assert any("77" in w for w in r["warnings"])
    caps = r["captions"]
    assert caps["n"] == 3 and caps["METEOR"] is None
    for m in CAPTION_METRICS:
        if m != "METEOR":
            assert caps[m] is not None and 0.0 <= caps[m] <= (10.0 if m == "CIDEr-D" else 1.0), m
    first, same, changed = r["per_image"]
    n = first["total_tokens"]
    # first image dense; an identical repeat changes nothing; the modified block changes a few
    # patches
    # (8x8 patches on the 128 grid: the 20x40 white block of the 96x160 image -> rows 0..3,
    # cols 0..4)
    assert first["active_tokens"] == first["change_tokens"] == n
    assert same["change_tokens"] == 0 and same["active_tokens"] <= changed["active_tokens"]
    assert 0 < changed["change_tokens"] < n / 4 and 0 <= changed["active_tokens"] <= n
    assert same["flops"] <= first["flops"] <= first["flops_dense"]
    af = r["active_fraction"]
    assert 0.0 <= af["p50"] <= af["p95"] <= 1.0 and af["max"] == 1.0
    assert r["change_fraction_mean"] == pytest.approx((n + changed["change_tokens"]) / (3 * n))
    assert 0.0 < r["flops"]["ratio"] <= 1.0
    for st in ("load", "frame_diff", "total"):
        assert r["latency_ms"][st]["n"] == 3 and r["latency_ms"][st]["p50"] >= 0.0, st
    md = markdown_report(r)
    assert "out of domain" in md and "CIDEr-D" in md and "d.png" in md
    # --limit and the CLI (writes coco.json + coco.md)
    from edge_vlm.cli import main

    out = tmp_path / "rep"
    assert main(["coco", "--images", str(coco["images"]), "--captions", str(coco["captions"]),
                 "--checkpoint", ckpt, "--limit", "2", "--no-meteor", "--out", str(out),
                 "--json"]) == 0
    got = json.loads((out / "coco.json").read_text())
    assert got["images_processed"] == 2
    assert (out / "coco.md").read_text().startswith("# edge-vlm coco")


@pytest.mark.parametrize("text, msg", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"images": []}', "'annotations' must be a list"),
    ('{"images": [{"file_name": "a.png"}], "annotations": []}', r"images\[0\] needs an 'id'"),
    ('{"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}], "annotations": []}',
     "duplicate image id"),
    ('{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1}]}',
     r"annotations\[0\] needs an 'image_id' and a string 'caption'"),
])
def test_bad_captions_file_gives_clear_error(tmp_path, text, msg):
    p = tmp_path / "captions.json"
    p.write_text(text)
    with pytest.raises(CocoFormatError, match=msg):
        load_coco_captions(p)


def test_cli_exit_codes(coco, tmp_path):
    from edge_vlm.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["coco", "--images", str(coco["images"]), "--captions", str(bad), "--out",
                 ""]) == 2
    assert main(["coco", "--images", str(tmp_path / "nope"), "--captions", str(coco["captions"]),
                 "--out", ""]) == 2
    assert main(["coco", "--images", str(coco["images"]), "--captions", str(coco["captions"]),
                 "--checkpoint", str(tmp_path / "missing.pt"), "--out", ""]) == 3
