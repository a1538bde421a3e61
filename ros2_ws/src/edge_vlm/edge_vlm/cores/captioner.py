"""vlm_captioner's logic without rclpy: the token memory and captioning model behind the
node's scheduling (:mod:`edge_vlm.cores.schedule`), and everything the node publishes about a
frame (:class:`CaptionOutput`) -- the node only turns it into messages.

ComputeCost stages: ``decode`` (EventPacket decoding attributed to the frame), ``wait`` (from
frame close to processing start: queue + mask wait), the model stages of
:attr:`FrameResult.latency_ms` (mask, memory, encoder, [router], fusion, decoder) and
``total`` = decode + model total (``wait`` excluded).

Routing (joint STTF+ANC model): the frame runs the route of anc_router's RouteDecision for it
(branches, weights and compute budget: one knob, anc_router's ``compute_budget``); only when
that decision is late (or unusable) does the model route the frame itself, counted in
``route_fallbacks``. Without anc_router the model routes itself under the captioner's own
``compute_budget``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from edge_vlm.cores.images import model_rgb
from edge_vlm.cores.schedule import ReadyFrame
from edge_vlm.inference.anc_engine import AncStreamingCaptioner
from edge_vlm.inference.engine import FrameResult
from edge_vlm.inference.factory import apply_params, engine_from_params, shared_model
from edge_vlm.model.sttf import count_parameters
from edge_vlm.params import resolve
from edge_vlm.stream.frames import Frame, frame_histogram


@dataclass
class CaptionStats:
    """vlm_captioner's counters (diagnostics and the shutdown report)."""

    captions: int = 0
    masks_used: int = 0           # frames captioned with sttf_perception's TokenMask
    mask_fallbacks: int = 0       # ... with the local mask because none came in time
    rgb_frames: int = 0
    rgb_missing: int = 0          # use_rgb = always and no image matched
    images_rejected: int = 0      # images that could not be converted
    forced_refreshes: int = 0     # dense refreshes after frames were dropped
    routes_followed: int = 0      # frames that ran anc_router's RouteDecision (joint model)
    route_fallbacks: int = 0      # ... routed locally: the decision was late or unusable

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class CaptionOutput:
    """What the captioner publishes about one frame (Caption and ComputeCost)."""

    frame: Frame
    result: FrameResult
    input_stamps: list[int]       # EventPackets that fed the frame, then the image used
    rgb: bool                     # RGB + events (else events only)
    branch: str                   # ANC branch of the frame (joint model) or anc_router's
    stage_names: list[str]
    stage_ms: list[float]
    total_ms: float               # decode + model total
    flops_saved_fraction: float
    params_active: int
    compute_budget: float
    image_error: str | None = None   # why the picked image was not used


class CaptionerCore:
    """vlm_captioner's logic: token memory + captioning model."""

    def __init__(self, overrides: dict | None = None):
        self.params = p = resolve("vlm_captioner", overrides)
        torch.set_num_threads(int(p["num_threads"]))
        self.model, self.meta = shared_model(p["checkpoint"])   # CheckpointError: exit 3
        cfg = self.model.cfg
        if cfg.image_size != p["model_width"] or cfg.patch != p["patch_size"]:
            raise ValueError(f"checkpoint grid {cfg.image_size}/{cfg.patch} does not match "
                             f"parameters model_width={p['model_width']} "
                             f"patch_size={p['patch_size']}")
        self.model_id = str(self.meta.get("model_id", "captioner"))
        self.engine = engine_from_params(self.model, p, self.meta)
        self.params_active = int(count_parameters(self.model))
        self.num_tokens = int(cfg.num_tokens)
        self.stats = CaptionStats()

    def apply_params(self, changed: dict) -> None:
        """Runtime parameter changes (validated by the caller): from the next frame on, for the
        engine (:func:`~edge_vlm.inference.factory.apply_params`) and the scheduling (which
        reads :attr:`params`, this very dict)."""
        self.params.update(changed)
        apply_params(self.engine, changed, self.meta)

    def process(self, frame: Frame, rgb: np.ndarray | None = None,
                change_indices=None) -> FrameResult:
        """Caption one frame; ``change_indices``: active patch indices from an external mask."""
        hist = frame_histogram(frame, self.params)
        mask = None
        if change_indices is not None:
            mask = np.zeros(self.num_tokens, dtype=bool)
            mask[np.asarray(change_indices, dtype=np.int64)] = True
        return self.engine.process(hist, rgb, mask)

    def caption(self, ready: ReadyFrame, started_at: float) -> CaptionOutput:
        """Caption the frame the scheduler handed out (``started_at``: the scheduler's clock)."""
        p, st = self.params, self.stats
        if p["mask_source"] == "topic":
            if ready.change is None:
                st.mask_fallbacks += 1
            else:
                st.masks_used += 1
        rgb, image_error = self._rgb(ready)
        if ready.refresh:
            # frames were dropped before this one: the token memory skipped them, re-encode
            # every token now (tests/test_faults.py)
            self.engine.force_refresh()
            st.forced_refreshes += 1
        anc = isinstance(self.engine, AncStreamingCaptioner)
        if anc:
            self.engine.route_override = ready.route
        res = self.process(ready.pending.frame, rgb, ready.change)
        if anc and (ready.route is not None or ready.route_late):
            if self.engine.route_external:
                st.routes_followed += 1
            else:
                st.route_fallbacks += 1
        st.rgb_frames += int(rgb is not None)
        st.captions += 1
        return self._output(ready, res, rgb is not None, started_at, image_error)

    def _rgb(self, ready: ReadyFrame) -> tuple[np.ndarray | None, str | None]:
        """The picked image on the model grid (None when none / unusable: why)."""
        p = self.params
        if p["use_rgb"] == "never":
            return None, None
        rgb = error = None
        if ready.image is not None:
            try:
                rgb = model_rgb(ready.image, int(p["model_width"]), int(p["model_height"]))
            except ValueError as exc:
                self.stats.images_rejected += 1
                error = str(exc)
        if rgb is None and p["use_rgb"] == "always":
            self.stats.rgb_missing += 1
        return rgb, error

    def _output(self, ready: ReadyFrame, res: FrameResult, rgb: bool, started_at: float,
                image_error: str | None) -> CaptionOutput:
        pend = ready.pending
        lat = {k: float(v) for k, v in res.latency_ms.items()}
        model_total = float(lat.pop("total", sum(lat.values())))
        decode_ms = float(pend.inputs.decode_ms)
        names = ["decode", "wait", *lat, "total"]
        values = [decode_ms, (started_at - pend.closed_at) * 1e3, *lat.values(),
                  decode_ms + model_total]
        stamps = list(pend.inputs.stamps) + ([ready.image.stamp] if rgb else [])
        executed, dense = float(res.flops_executed), float(res.flops_dense)
        saved = float(min(1.0, max(0.0, 1.0 - executed / dense))) if dense > 0 else 0.0
        # the joint STTF+ANC model reports the route it executed (anc_router's, else its own)
        # and the budget in force; an STTF-only model reports anc_router's decision
        branch = res.route.branch if res.route else ready.branch
        params_active = res.route.params_active if res.route else self.params_active
        budget = res.route.budget if res.route else float(self.params["compute_budget"])
        return CaptionOutput(pend.frame, res, stamps, rgb, branch, names, values,
                             decode_ms + model_total, saved, params_active, float(budget),
                             image_error)
