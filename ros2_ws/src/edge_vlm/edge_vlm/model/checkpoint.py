"""Checkpoint files of the captioning models (STTF and joint STTF+ANC): save, load, the shipped
default."""
from __future__ import annotations

import os

import torch

from edge_vlm.model.anc import AncConfig, AncModel
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.sttf import CaptionModel
from edge_vlm.paths import PACKAGE_DIR

FORMAT = "edge_vlm.sttf/2"
FORMAT_ANC = "edge_vlm.sttf_anc/1"
#: the shipped checkpoint (``checkpoints/`` of the package)
DEFAULT_CHECKPOINT = str(PACKAGE_DIR / "checkpoints" / "captioner.pt")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or incompatible."""


def save_checkpoint(path: str, model: CaptionModel, extra: dict | None = None,
                    half: bool = True) -> None:
    """Save config + weights (fp16 by default to keep shipped checkpoints small)."""
    state = {k: (v.half() if half and v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    blob = {"format": FORMAT, "config": model.cfg.to_dict(), "state": state, "extra": extra or {}}
    if hasattr(model, "acfg"):
        blob["format"], blob["anc_config"] = FORMAT_ANC, model.acfg.to_dict()
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str = "") -> tuple[CaptionModel, dict]:
    """Load a checkpoint (empty path = the shipped default), in eval mode. Raises CheckpointError.
    For streaming inference load it with :func:`edge_vlm.inference.factory.load_model`."""
    path = path or DEFAULT_CHECKPOINT
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} (train one with `edge-vlm train`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, FORMAT_ANC):
            raise CheckpointError(f"not an edge_vlm captioner checkpoint: {path}")
        cfg = ModelConfig(**blob["config"])
        if blob["format"] == FORMAT_ANC:
            model = AncModel(cfg, AncConfig(**blob["anc_config"]))
        else:
            model = CaptionModel(cfg)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in blob["state"].items()})
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file, wrong tensors, pickle errors...
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: "
                              f"{exc}") from exc
    model.eval()
    return model, blob.get("extra", {})
