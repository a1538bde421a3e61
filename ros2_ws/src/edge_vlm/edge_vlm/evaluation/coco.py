"""``edge-vlm coco``: caption a local COCO-format image set in RGB-only mode and score it.

Input (nothing is downloaded): a folder of images (PNG/JPEG, read with Pillow)
and a captions file in the COCO captions format::

    {"images": [{"id": 1, "file_name": "a.png", "width": 640, "height": 480}, ...],
     "annotations": [{"image_id": 1, "caption": "a dog on a sofa"}, ...]}

Each image is resized (shorter side) and center-cropped to the model grid
(``cfg.image_size`` square, RGB uint8) and fed, in the order of ``"images"``, to
the :class:`~edge_vlm.model.engine.StreamingCaptioner` as one stream in
**RGB-only mode**: the event histogram is all zeros and the change mask comes
from frame differences (:func:`frame_diff_mask`: per patch, mean absolute luma
difference against the previous image above ``threshold``; the first image is
dense). Consecutive video frames therefore re-encode only the patches that
changed; unrelated photos re-encode most of them.

Scores: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (:func:`edge_vlm.metrics.caption_metrics`,
the COCO protocol) of each image's caption against its references, plus the
active-token fraction, FLOPs executed vs dense and latency.

The shipped checkpoint was trained on simulated DVS128-style gesture scenes:
its captions of COCO photos are out of domain and score near zero. The harness
is meant for your own captioning checkpoints and frames.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from edge_vlm.evaluation.metrics import caption_metrics, json_safe, percentiles
from edge_vlm.inference.factory import engine_from_params, load_model
from edge_vlm.report import fmt_value as fmt
from edge_vlm.sim.gestures import luma

__all__ = ["CocoFormatError", "ImageLoadError", "CocoSet", "DOMAIN_NOTE", "DEFAULT_THRESHOLD",
           "load_coco_captions", "load_image", "frame_diff_mask", "run_coco", "markdown_report",
           "write_report"]

#: default change threshold: mean absolute luma difference per patch, in 0..255 units
DEFAULT_THRESHOLD = 8.0
DOMAIN_NOTE = ("The shipped checkpoint was trained on simulated DVS128-style gesture scenes, so "
               "its captions of COCO photos are out of domain (expect near-zero scores); this "
               "harness is for your own captioning checkpoints and frames.")


class CocoFormatError(ValueError):
    """The captions file is not valid COCO captions JSON."""


class ImageLoadError(OSError):
    """An image file is missing or cannot be decoded."""


@dataclass
class CocoSet:
    """A parsed captions file: images in file order and their reference captions."""
    images: list[dict]                                   # {"id", "file_name", ...}, file order
    references: dict[Any, list[str]]                     # image id -> captions
    annotations: int = 0                                 # annotations read
    unknown_image_annotations: int = 0                   # annotations of ids not in "images"
    warnings: list[str] = field(default_factory=list)


def load_coco_captions(path: str | os.PathLike) -> CocoSet:
    """Parse a COCO captions JSON file. Raises :class:`CocoFormatError` with the reason.

    Annotations for an image id that ``"images"`` does not list are counted
    (``unknown_image_annotations``) and reported in ``warnings``, not fatal.
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise CocoFormatError(f"{path}: cannot read captions file: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoFormatError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CocoFormatError(f"{path}: expected a JSON object with 'images' and 'annotations', "
                              f"got {type(doc).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise CocoFormatError(f"{path}: '{key}' must be a list (COCO captions format)")
    images, seen = [], set()
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise CocoFormatError(f"{path}: images[{i}] needs an 'id' and a string 'file_name'")
        if not isinstance(im["id"], (int, str)) or isinstance(im["id"], bool):
            raise CocoFormatError(f"{path}: images[{i}].id must be an integer or a string")
        if im["id"] in seen:
            raise CocoFormatError(f"{path}: duplicate image id {im['id']!r} (images[{i}])")
        seen.add(im["id"])
        images.append(im)
    refs: dict[Any, list[str]] = {im["id"]: [] for im in images}
    unknown: list = []
    for i, an in enumerate(doc["annotations"]):
        if not isinstance(an, dict) or "image_id" not in an \
                or not isinstance(an.get("caption"), str):
            raise CocoFormatError(f"{path}: annotations[{i}] needs an 'image_id' and a string "
                                  "'caption'")
        try:
            target = refs.get(an["image_id"])
        except TypeError:          # unhashable image_id (list, dict)
            raise CocoFormatError(f"{path}: annotations[{i}].image_id must be an integer or a "
                                  "string") from None
        if target is None:
            unknown.append(an["image_id"])
        else:
            target.append(an["caption"])
    warnings = []
    if unknown:
        warnings.append(f"{len(unknown)} annotation(s) refer to image ids not listed in 'images' "
                        f"(e.g. {unknown[0]!r}); ignored")
    return CocoSet(images, refs, len(doc["annotations"]), len(unknown), warnings)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Image file -> ``(size, size, 3)`` uint8 RGB: shorter side resized to ``size``, then
    center crop.

    Raises :class:`ImageLoadError` for a missing or undecodable file.
    """
    if not os.path.isfile(path):
        raise ImageLoadError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()
    except Exception as exc:       # truncated/corrupt file, unknown format...
        raise ImageLoadError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from exc


def frame_diff_mask(prev_rgb: np.ndarray | None, rgb: np.ndarray, patch: int,
                    threshold: float) -> np.ndarray:
    """Per-patch change mask from two RGB frames (``(H, W, 3)`` uint8, same shape).

    A patch changed when the mean absolute luma difference (BT.601 weights,
    0..255) over its ``patch x patch`` pixels is above ``threshold``. Returns a
    flat bool array of ``(H // patch) * (W // patch)`` row-major patches (the
    model's token order); all True when ``prev_rgb`` is None (first frame).
    """
    h, w = rgb.shape[:2]
    if h % patch or w % patch:
        raise ValueError(f"frame {w}x{h} is not a multiple of the patch size {patch}")
    n = (h // patch) * (w // patch)
    if prev_rgb is None:
        return np.ones(n, dtype=bool)
    if prev_rgb.shape != rgb.shape:
        raise ValueError(f"frame shapes differ: {prev_rgb.shape} vs {rgb.shape}")
    # luma of sim.gestures (the one implementation): the same bits on every CPU, where a matrix
    # product rounds as the CPU's BLAS kernel does
    diff = np.abs(luma(rgb, np.float32) - luma(prev_rgb, np.float32))
    per_patch = diff.reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
    return (per_patch > threshold).reshape(-1)


def _total(flops: Any) -> float:
    """FLOPs of a FrameResult field: a per-stage dict or one number."""
    return float(sum(flops.values())) if isinstance(flops, dict) else float(flops)


def _stats(values: list[float]) -> dict:
    return percentiles(values)


@dataclass
class _Stream:
    """The RGB-only stream of one run: its engine and what it produced."""

    eng: Any
    hist: np.ndarray                       # the all-zero event histogram
    image_size: int
    patch: int
    threshold: float
    prev: np.ndarray | None = None
    per_image: list[dict] = field(default_factory=list)
    skipped: dict[str, int] = field(
        default_factory=lambda: {"missing": 0, "unreadable": 0, "no_references": 0})
    skipped_files: list[dict] = field(default_factory=list)


def _caption_image(st: _Stream, k: int, im: dict, images_dir: str, refs: list[str],
                   say: Callable[[str], None]) -> None:
    """Load, mask and caption one image of the stream (a missing or unreadable one is skipped)."""
    path = os.path.join(images_dir, im["file_name"])
    t0 = time.perf_counter()
    try:
        rgb = load_image(path, st.image_size)
    except ImageLoadError as exc:
        st.skipped["missing" if not os.path.isfile(path) else "unreadable"] += 1
        st.skipped_files.append({"id": im["id"], "file_name": im["file_name"], "reason": str(exc)})
        say(f"coco: skipped {im['file_name']}: {exc}")
        return
    t1 = time.perf_counter()
    mask = frame_diff_mask(st.prev, rgb, st.patch, st.threshold)
    t2 = time.perf_counter()
    r = st.eng.process(st.hist, rgb=rgb, change_mask=mask)
    st.prev = rgb
    if not refs:
        st.skipped["no_references"] += 1
    st.per_image.append({
        "id": im["id"], "file_name": im["file_name"], "caption": r.text, "references": refs,
        "change_tokens": int(mask.sum()), "active_tokens": int(r.active_tokens),
        "total_tokens": int(r.total_tokens), "refreshed": bool(getattr(r, "refreshed", k == 0)),
        "flops": _total(r.flops), "flops_dense": _total(r.flops_dense),
        "latency_ms": {"load": (t1 - t0) * 1e3, "frame_diff": (t2 - t1) * 1e3, **r.latency_ms}})


def _summary(st: _Stream, meteor: bool) -> dict:
    """Caption metrics, active tokens, FLOPs and latency of the captioned images."""
    per_image = st.per_image
    scored = [p for p in per_image if p["references"]]
    caps = caption_metrics({i: p["caption"] for i, p in enumerate(scored)},
                           {i: p["references"] for i, p in enumerate(scored)}, meteor=meteor)
    frac = [p["active_tokens"] / p["total_tokens"] for p in per_image]
    fl, fd = sum(p["flops"] for p in per_image), sum(p["flops_dense"] for p in per_image)
    n = len(per_image)
    stages = sorted({s for p in per_image for s in p["latency_ms"]})
    return {
        "images_processed": n, "images_scored": len(scored), "captions": caps,
        "active_fraction": {**_stats(frac),
                            "mean_after_first": (float(np.mean(frac[1:])) if len(frac) > 1
                                                 else None)},
        "change_fraction_mean": (float(np.mean([p["change_tokens"] / p["total_tokens"]
                                                for p in per_image])) if per_image else None),
        "flops": {"executed_mean": fl / n if n else None, "dense_mean": fd / n if n else None,
                  "ratio": fl / fd if fd else None,
                  "saved_fraction": 1.0 - fl / fd if fd else None},
        "latency_ms": {s: _stats([p["latency_ms"][s] for p in per_image if s in p["latency_ms"]])
                       for s in stages}}


def run_coco(images_dir: str | os.PathLike, captions: str | os.PathLike, *, checkpoint: str = "",
             limit: int | None = None, threshold: float = DEFAULT_THRESHOLD,
             refresh_period: int = 0,
             decoding: str = "greedy", meteor: bool = True,
             log: Callable[[str], None] | None = None) -> dict:
    """Caption the images of a COCO-format set as one RGB-only stream and score the captions.

    ``limit``: only the first N images of ``"images"``. ``refresh_period``:
    dense re-encode every N images (0 = only the first). A missing or
    undecodable image is skipped and counted; images without references are
    captioned but not scored. Raises :class:`CocoFormatError` (bad captions
    file), ``FileNotFoundError`` (no image folder) and
    :class:`~edge_vlm.model.checkpoint.CheckpointError`.
    """
    say = log or (lambda msg: None)
    t_start = time.perf_counter()
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    cs = load_coco_captions(captions)
    model, extra = load_model(checkpoint)
    cfg = model.cfg
    eng = engine_from_params(model, {"refresh_period": refresh_period, "decoding": decoding},
                             extra)
    hist = np.zeros((cfg.event_channels, cfg.image_size, cfg.image_size), dtype=np.float32)
    st = _Stream(eng, hist, cfg.image_size, cfg.patch, threshold)
    todo = cs.images if limit is None else cs.images[:max(0, int(limit))]
    for k, im in enumerate(todo):
        _caption_image(st, k, im, os.fspath(images_dir), cs.references.get(im["id"]) or [], say)
        if (k + 1) % 50 == 0:
            say(f"coco: {k + 1}/{len(todo)} images")
    result = {
        "note": DOMAIN_NOTE,
        "mode": "rgb-only: zero event histogram, change mask from frame differences",
        "source": {"images": os.fspath(images_dir), "captions": os.fspath(captions),
                   "images_listed": len(cs.images), "annotations": cs.annotations},
        "checkpoint": checkpoint or "(shipped default)",
        "model_id": str(extra.get("model_id", "captioner")),
        "model": {"image_size": cfg.image_size, "patch": cfg.patch, "num_tokens": cfg.num_tokens},
        "params": {"threshold": float(threshold), "refresh_period": int(refresh_period),
                   "decoding": decoding, "limit": limit},
        "skipped": {**st.skipped, "unknown_image_annotations": cs.unknown_image_annotations},
        "skipped_files": st.skipped_files, "warnings": list(cs.warnings),
        **_summary(st, meteor),
        "per_image": st.per_image,
        "wall_s": time.perf_counter() - t_start,
    }
    return json_safe(result)


def _table(r: dict) -> list[str]:
    caps, af, fl, sk = r["captions"], r["active_fraction"], r["flops"], r["skipped"]
    rows = [("images processed (scored)", f"{r['images_processed']} ({r['images_scored']})"),
            ("skipped: missing / unreadable / no references",
             f"{sk['missing']} / {sk['unreadable']} / {sk['no_references']}"),
            ("annotations for unknown image ids (ignored)", sk["unknown_image_annotations"])]
    rows += [(m, fmt(caps.get(m))) for m in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
                                              "ROUGE-L", "CIDEr-D")]
    rows += [("caption tokenizer", caps.get("tokenizer") or "n/a"),
             ("active-token fraction mean / p50 / p95",
              " / ".join(fmt(af[k], 3) for k in ("mean", "p50", "p95"))),
             ("active-token fraction, images after the first", fmt(af["mean_after_first"], 3)),
             ("FLOPs per image, executed / dense",
              f"{fmt(fl['executed_mean'])} / {fmt(fl['dense_mean'])}"),
             ("FLOPs executed / dense", fmt(fl["ratio"], 3))]
    lat = r["latency_ms"]
    rows += [(f"latency {s} p50 / p95 (ms)", f"{fmt(lat[s]['p50'])} / {fmt(lat[s]['p95'])}")
             for s in ("encoder", "decoder", "total") if s in lat]
    return ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def markdown_report(r: dict) -> str:
    """The summary of :func:`run_coco` as Markdown."""
    prm = r["params"]
    lines = ["# edge-vlm coco", "", f"> {r['note']}", "",
             f"Images `{r['source']['images']}`, captions `{r['source']['captions']}`, checkpoint "
             f"`{r['checkpoint']}`. Mode: {r['mode']} (threshold {fmt(prm['threshold'])} luma "
             f"levels, refresh period {prm['refresh_period']}, {prm['decoding']} decoding).", ""]
    lines += _table(r)
    for w in r.get("warnings") or []:
        lines += ["", f"Warning: {w}"]
    if r.get("skipped_files"):
        lines += ["", "Skipped images:"]
        lines += [f"- `{s['file_name']}`: {s['reason']}" for s in r["skipped_files"][:20]]
    lines.append("")
    return "\n".join(lines)


def write_report(r: dict, out_dir: str | os.PathLike) -> dict:
    """Write ``coco.json`` and ``coco.md`` to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "coco.json"), "markdown": str(out / "coco.md")}
    Path(paths["json"]).write_text(json.dumps(r, indent=1, allow_nan=False))
    Path(paths["markdown"]).write_text(markdown_report(r))
    return paths
