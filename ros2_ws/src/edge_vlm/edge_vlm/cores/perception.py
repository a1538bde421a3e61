"""sttf_perception's logic without rclpy: event frame -> change mask (learned net or event-count
rule)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from edge_vlm.inference.frame_tensors import FrameTensors
from edge_vlm.inference.native_convs import mask_net_logits
from edge_vlm.inference.factory import shared_model
from edge_vlm.params import resolve
from edge_vlm.stream.frames import Frame, frame_histogram
from edge_vlm.stream.histogram import patch_counts, scale_coords


@dataclass
class MaskResult:
    active_indices: np.ndarray   # uint32, row-major patch indices
    scores: np.ndarray           # float32 per active index, in (0, 1]
    threshold: float
    grid_width: int
    grid_height: int
    total_tokens: int
    event_count: int
    method: str
    mask_image: np.ndarray       # (model_h, model_w) uint8, 255 = active patch (model grid)

    @property
    def active_fraction(self) -> float:
        return len(self.active_indices) / max(1, self.total_tokens)


def event_count_mask(hist: np.ndarray, patch: int,
                     threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Rule-based change mask: (bool per patch, score per patch = 1 - exp(-count/threshold))."""
    counts = patch_counts(hist, patch)
    return counts >= threshold, (1.0 - np.exp(-counts / float(threshold))).astype(np.float32)


def sensor_mask_image(mask_image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The model-grid change mask at the sensor's resolution (``(height, width)`` uint8): sensor
    pixel (x, y) takes the value of the model pixel its events are binned into
    (:func:`~edge_vlm.stream.histogram.scale_coords`, ``x * model_w // width``), so patch
    (c, r) lights exactly the sensor pixels whose events it counted and the image overlays the
    camera's event frame pixel for pixel."""
    mh, mw = mask_image.shape
    xs, ys = scale_coords(np.arange(int(width)), np.arange(int(height)), int(width), int(height),
                          mw, mh)
    return mask_image[ys[:, None], xs[None, :]]


class _LastMask:
    """The change-mask net's last input and output in this process (:func:`mask_logits`)."""

    lock = threading.Lock()
    net: torch.nn.Module | None = None
    hist: np.ndarray | None = None
    logits: torch.Tensor | None = None


def mask_logits(net: torch.nn.Module, hist: np.ndarray,
                frame: FrameTensors | None = None) -> torch.Tensor:
    """The change-mask net's logits (N,) of one histogram, shared by the cores of one process:
    in the single-process graph sttf_perception and anc_router (and the offline replay) see the
    same closed frame, so the net runs once per frame. The last result is reused for the same
    net object and an equal histogram (exact: the same input gives the same output; the
    histogram is compared by value, since frame buffers are reused). Read-only result.
    ``frame``: ``hist`` as tensors when the caller shares them with other stages."""
    with _LastMask.lock:
        if (_LastMask.net is net and _LastMask.hist is not None
                and _LastMask.hist.shape == hist.shape and np.array_equal(_LastMask.hist, hist)):
            return _LastMask.logits
    with torch.no_grad():
        ft = FrameTensors.of(hist, frame)
        logits = mask_net_logits(net, ft.hist, lambda: ft.log)[0]
    with _LastMask.lock:
        _LastMask.net, _LastMask.hist, _LastMask.logits = net, np.array(hist, copy=True), logits
    return logits


class PerceptionCore:
    """sttf_perception's logic: event frame -> change mask (the checkpoint's learned change-mask
    net by default, the event-count rule with ``mask_method: event_count``)."""

    def __init__(self, overrides: dict | None = None):
        self.params = p = resolve("sttf_perception", overrides)
        self.mask_net = None
        if p["mask_method"] == "learned":
            torch.set_num_threads(1)
            model, _ = shared_model(p["checkpoint"])   # CheckpointError: the node exits 3
            self.mask_net = model.mask_net

    def process(self, frame: Frame) -> MaskResult:
        p = self.params
        patch = int(p["patch_size"])
        hist = frame_histogram(frame, p)
        if self.mask_net is not None:
            logit = mask_logits(self.mask_net, hist)
            g = int(p["model_height"]) // patch
            score = torch.sigmoid(logit).numpy().reshape(g, -1).astype(np.float32)
            active, thr = score > 0.5, 0.5
        else:
            active, score = event_count_mask(hist, patch, int(p["event_count_threshold"]))
            thr = float(p["event_count_threshold"])
        gh, gw = active.shape
        idx = np.flatnonzero(active.reshape(-1)).astype(np.uint32)
        img = (np.repeat(np.repeat(active, patch, 0), patch, 1) * 255).astype(np.uint8)
        return MaskResult(idx, score.reshape(-1)[idx], thr, gw, gh, gh * gw, frame.n_events,
                          str(p["mask_method"]), img)
