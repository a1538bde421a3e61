"""vlm_captioner's logic without rclpy: token memory + captioning model."""
from __future__ import annotations


import numpy as np

from edge_vlm.params import resolve
from edge_vlm.stream.frames import Frame, frame_histogram


class CaptionerCore:
    """vlm_captioner's logic: token memory + captioning model."""

    def __init__(self, overrides: dict | None = None):
        import torch

        from edge_vlm.inference.engine import engine_from_params
        from edge_vlm.model.checkpoint import load_checkpoint

        self.params = p = resolve("vlm_captioner", overrides)
        torch.set_num_threads(int(p["num_threads"]))
        self.model, self.meta = load_checkpoint(p["checkpoint"])
        if self.model.cfg.image_size != p["model_width"] or self.model.cfg.patch != p["patch_size"]:
            raise ValueError(f"checkpoint grid {self.model.cfg.image_size}/{self.model.cfg.patch} does not match "
                             f"parameters model_width={p['model_width']} patch_size={p['patch_size']}")
        self.model_id = str(self.meta.get("model_id", "captioner"))
        self.engine = engine_from_params(self.model, p, self.meta)

    def process(self, frame: Frame, rgb: np.ndarray | None = None, change_indices=None):
        """Caption one frame; ``change_indices``: active patch indices from an external mask."""
        hist = frame_histogram(frame, self.params)
        mask = None
        if change_indices is not None:
            mask = np.zeros(self.model.cfg.num_tokens, dtype=bool)
            mask[np.asarray(change_indices, dtype=np.int64)] = True
        return self.engine.process(hist, rgb, mask)
