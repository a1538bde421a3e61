"""Model and engine from node parameters: the one parameter -> engine mapping.

The vlm_captioner node, its core, evaluation, benchmarks and training build their engines with
:func:`engine_from_params` and apply runtime parameter changes with :func:`apply_params`; both
go through :data:`ENGINE_PARAMS`, one setter per engine parameter.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Callable

import torch

from edge_vlm.inference.anc_engine import AncStreamingCaptioner
from edge_vlm.inference.engine import PARAMS, StreamingCaptioner
from edge_vlm.inference.native_vit import share_version_counter
from edge_vlm.inference.vit import backend_choice
from edge_vlm.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from edge_vlm.model.sttf import CaptionModel, SparseViT


def load_model(checkpoint: str = "") -> tuple[CaptionModel, dict]:
    """(model, checkpoint metadata) for streaming inference: :func:`load_checkpoint` (empty path:
    the shipped checkpoint; raises ``CheckpointError``), then one version counter per encoder
    (:func:`~edge_vlm.inference.native_vit.share_version_counter`: a cheap per-frame check of
    the native kernel's cached weights) and its per-CPU backend choice
    (:func:`~edge_vlm.inference.vit.backend_choice`: measured here, not on the first frame)."""
    model, meta = load_checkpoint(checkpoint)
    for m in model.modules():
        if isinstance(m, SparseViT):
            share_version_counter(m)
            backend_choice(m)
    return model, meta


#: models loaded by :func:`shared_model`, by checkpoint file (path, mtime, size); weak: a model
#: no core holds any more is freed
_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_SHARED_META: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def shared_model(checkpoint: str = "") -> tuple[CaptionModel, dict]:
    """:func:`load_model` once per checkpoint file and process: the cores of the nodes
    (perception, router, captioner) run the same model read-only, so the single-process graph
    (``edge_vlm_graph``) loads it once. A file that changed on disk is loaded again. Not for
    code that trains or edits the model (use :func:`load_model`)."""
    path = os.path.realpath(checkpoint or DEFAULT_CHECKPOINT)
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
    except OSError:
        return load_model(checkpoint)          # raises CheckpointError (missing file)
    with _SHARED_LOCK:
        model = _SHARED.get(key)
        if model is None:
            model, meta = load_model(path)
            _SHARED[key] = model
            _SHARED_META[model] = meta
        return model, _SHARED_META[model]


def _layer_threshold_scale(eng: StreamingCaptioner, value, meta: dict) -> None:
    # the per-layer gate thresholds fitted on validation by `edge-vlm train` (checkpoint), scaled
    eng.layer_thresholds = [float(value) * float(x) for x in meta.get("layer_thresholds", [])]


def _compute_budget(eng: StreamingCaptioner, value, meta: dict) -> None:
    if isinstance(eng, AncStreamingCaptioner):
        eng.set_budget(float(value))             # takes effect on the next frame


def _engine_param(name: str) -> Callable:
    def set_param(eng: StreamingCaptioner, value, meta: dict) -> None:
        eng.set_param(name, value)
    return set_param


#: node parameter -> its setter on a built engine ``(engine, value, checkpoint metadata)``: the
#: engine's own parameters (:data:`~edge_vlm.inference.engine.PARAMS`), the per-layer gate
#: thresholds and the ANC compute budget
ENGINE_PARAMS: dict[str, Callable] = {
    **{name: _engine_param(name) for name in PARAMS},
    "layer_threshold_scale": _layer_threshold_scale,
    "compute_budget": _compute_budget,
}


def apply_params(engine: StreamingCaptioner, changed: dict, meta: dict | None = None) -> None:
    """Apply node parameters (``changed``: name -> value) to ``engine`` through
    :data:`ENGINE_PARAMS` (the next frame sees them); ``meta``: the checkpoint metadata
    (``layer_thresholds``). ``num_threads`` sets torch's intra-op threads (process-wide); other
    names are not engine parameters and are ignored."""
    meta = meta or {}
    for name, value in changed.items():
        setter = ENGINE_PARAMS.get(name)
        if setter is not None:
            setter(engine, value, meta)
        elif name == "num_threads":
            torch.set_num_threads(int(value))


def engine_from_params(model: CaptionModel, params: dict, meta: dict | None = None,
                       sparse: bool = True) -> StreamingCaptioner:
    """The engine of ``model`` as the vlm_captioner node configures it (node, core, evaluation,
    benchmarks): the engine's defaults, then the engine parameters of ``params`` through
    :func:`apply_params` (the per-layer gate thresholds always: ``layer_threshold_scale``
    defaults to 1). A joint STTF+ANC model gets an :class:`AncStreamingCaptioner`. The
    process-wide ``num_threads`` is left to the caller."""
    eng = (AncStreamingCaptioner(model, sparse=sparse) if hasattr(model, "acfg")
           else StreamingCaptioner(model, sparse=sparse))
    apply_params(eng, {"layer_threshold_scale": 1.0,
                       **{k: v for k, v in params.items() if k in ENGINE_PARAMS}}, meta)
    return eng
