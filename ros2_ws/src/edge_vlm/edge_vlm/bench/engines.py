"""The model and engines the STTF benchmark runs: the checkpoint (or an untrained stand-in),
the captioner engine as the node configures it, and the choice of encoder backend."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator, NamedTuple

import torch

from edge_vlm.inference import native_vit
from edge_vlm.inference.engine import StreamingCaptioner
from edge_vlm.inference.factory import engine_from_params, load_model
from edge_vlm.inference.vit import native_mode, set_native
from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.sttf import CaptionModel, init_weights
from edge_vlm.model.tokenizer import Tokenizer

__all__ = ["BenchModel", "bench_model", "sttf_engine", "native_vit_available", "encoder_backend"]


class BenchModel(NamedTuple):
    """The benchmarked model and its description (the report's ``checkpoint``)."""

    model: CaptionModel
    info: dict


def bench_model(checkpoint: str = "", vocab_source=None) -> BenchModel:
    """The checkpoint (default: the shipped one) or, when missing, an untrained model
    saved/loaded through save_checkpoint (fp16 round trip like a shipped one)."""
    path = checkpoint or DEFAULT_CHECKPOINT
    if os.path.isfile(path):
        model, meta = load_model(path)
        return BenchModel(model, {"checkpoint": os.path.abspath(path), "trained": True,
                                  "model_id": str(meta.get("model_id", "captioner")),
                                  "layer_thresholds": list(meta.get("layer_thresholds", []))})
    if checkpoint:
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    torch.manual_seed(0)
    tok = Tokenizer.build(list(vocab_source or ["a person waves the right hand"]))
    model = CaptionModel(ModelConfig(vocab=tok.vocab))
    init_weights(model)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(os.path.join(tmp, "untrained.pt"), model)
        model, _ = load_model(os.path.join(tmp, "untrained.pt"))
    return BenchModel(model, {"checkpoint": None, "trained": False, "model_id": "untrained",
                              "layer_thresholds": []})


def sttf_engine(model: CaptionModel, params: dict, sparse: bool,
                minfo: dict | None = None) -> StreamingCaptioner:
    """The captioner engine; for a joint STTF+ANC checkpoint the STTF figures use its Medium
    branch on every frame (the model the paper's STTF compares with: dense Medium)."""
    eng = engine_from_params(model, params, minfo or {}, sparse=sparse)
    if hasattr(model, "acfg"):
        eng.force_level = 2
    return eng


def native_vit_available() -> bool:
    """Whether the fused native ViT kernel is built."""
    return native_vit.load() is not None


@contextlib.contextmanager
def encoder_backend(model: CaptionModel, native: bool | None) -> Iterator[None]:
    """Every ViT of ``model`` runs its inference passes on the native kernel (``True``, when
    built), on PyTorch calls (``False``) or on the per-CPU choice (``None``:
    :func:`~edge_vlm.inference.vit.backend_choice`) inside the block; the previous setting is
    restored."""
    vits = list(model.branches) if hasattr(model, "branches") else [model.vit]
    before = [native_mode(v) for v in vits]
    for v in vits:
        set_native(v, native)
    try:
        yield
    finally:
        for v, b in zip(vits, before):
            set_native(v, b)
