"""sttf_perception's logic without rclpy: event frame -> change mask (learned net or event-count
rule)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_vlm.inference.engine import hist_tensor
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
            with torch.no_grad():
                logit = self.mask_net(hist_tensor(hist)[None])[0]
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
