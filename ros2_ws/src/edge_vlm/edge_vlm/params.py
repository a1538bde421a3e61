"""Parameter specifications of every node: the single source of truth.

Nodes declare their ROS parameters from these specs (name, default, type,
description); the local runner, the launch files and the README's parameter
tables all read them from here (README tables are checked by a test).
No rclpy here: this is plain data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    choices: tuple = ()
    min_value: float | None = None
    max_value: float | None = None

    @property
    def type_name(self) -> str:
        return type(self.default).__name__

    def validate(self, value: Any) -> Any:
        """Return ``value`` coerced to the spec's type or raise ValueError."""
        want = type(self.default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError(f"parameter '{self.name}' must be {want.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"parameter '{self.name}' must be one of {list(self.choices)}, got "
                             f"{value!r}")
        if self.min_value is not None and value < self.min_value:
            raise ValueError(f"parameter '{self.name}' must be >= {self.min_value}, got {value!r}")
        if self.max_value is not None and value > self.max_value:
            raise ValueError(f"parameter '{self.name}' must be <= {self.max_value}, got {value!r}")
        return value


_COMMON = (
    ParamSpec("frame_period_ms", 33.333333,
              "Length of one processing frame in sensor time (ms). All nodes cut the event stream "
              "on the same absolute grid k*period, so their outputs share stamps.",
              read_only=True, min_value=1.0, max_value=1000.0),
    ParamSpec("model_width", 128,
              "Width of the model's input grid (px). Sensors of another size are rescaled by "
              "integer coordinate scaling x*model_width//sensor_width.",
              read_only=True,
              min_value=16, max_value=1024),
    ParamSpec("model_height", 128, "Height of the model's input grid (px); see model_width.",
              read_only=True,
              min_value=16, max_value=1024),
    ParamSpec("patch_size", 8,
              "Side of one square patch/token in model pixels (128/8 -> 16x16 = 256 tokens).",
              read_only=True, min_value=2, max_value=64),
    ParamSpec("flicker_min_flips", 0,
              "Anti-flicker filter at intake: a model-grid pixel whose events change polarity "
              "at least this many times in one frame (mains-lit flicker: ~6 in 33 ms; a moving "
              "edge: 0-2) is left out of that frame (docs/design.md, 'Anti-flicker'). 0 = off.",
              read_only=True, min_value=0, max_value=63),
)

_MASK = (
    ParamSpec("mask_method", "learned",
              "Change mask: 'learned' (the checkpoint's change-mask conv net on the event "
              "histogram) or 'event_count' (rule fallback: a patch changed when it has at least "
              "event_count_threshold events in the frame).", choices=("learned", "event_count")),
    ParamSpec("event_count_threshold", 3,
              "Rule fallback (mask_method = event_count): events a patch needs in one frame to "
              "count as changed; sparser patches are treated as empty (noise filter).",
              min_value=1, max_value=10000),
    ParamSpec("checkpoint", "",
              "Path of the STTF checkpoint (change-mask net and captioner); empty = the "
              "checkpoint shipped with edge_vlm (edge_vlm/checkpoints/captioner.pt).",
              read_only=True),
)

NODE_PARAMS: dict[str, tuple[ParamSpec, ...]] = {
    "sttf_perception": _COMMON + _MASK + (
        ParamSpec("publish_mask_image", True,
                  "Also publish the change mask as a mono8 image (255 = active patch)."),
        ParamSpec("link_relay", False,
                  "Link mode 'active' (docs/deploy.md): also publish, once per frame, ONE "
                  "EventPacket of the events in the frame's active patches on "
                  "edge_vlm/link_events (libcaer_cmp), for a ground captioner behind a slow "
                  "link.", read_only=True),
        ParamSpec("link_wait_subscribers", 0,
                  "With link_relay: subscribe to the events only once the relay's publisher "
                  "has matched this many subscribers (or after link_wait_timeout), so a bag "
                  "played once the node subscribed loses no relayed frame; the launch sets 1 "
                  "with source:=bag and link:=active (nodes:=all or drone). 0 = subscribe at "
                  "once.",
                  read_only=True, min_value=0, max_value=64),
        ParamSpec("link_wait_timeout", 15.0,
                  "Seconds link_wait_subscribers waits before the node subscribes anyway "
                  "(logged as a warning).", read_only=True, min_value=0.0, max_value=3600.0),
    ),
    "anc_router": _COMMON + (
        ParamSpec("router_method", "learned",
                  "'learned': the checkpoint's ANC complexity estimator (conv net on the event "
                  "histogram) and hard routing, as the captioner routes; 'density': rule fallback "
                  "on the event density (low_density / high_density).",
                  choices=("learned", "density")),
        ParamSpec("checkpoint", "",
                  "Path of the joint STTF+ANC checkpoint (router_method = learned); empty = the "
                  "checkpoint shipped with edge_vlm.", read_only=True),
        ParamSpec("compute_budget", 1.0,
                  "Compute budget in (0, 1]: 1 allows the largest branch; lower values cap the "
                  "routed branch and scale the channel gates. THE budget knob of a graph: "
                  "vlm_captioner executes the route and budget of this node's RouteDecision. Can "
                  "be changed at runtime.",
                  min_value=0.01, max_value=1.0),
        ParamSpec("low_density", 0.002,
                  "router_method = density: events per pixel per frame below which a frame is "
                  "level 0 (tiny).",
                  min_value=0.0),
        ParamSpec("high_density", 0.02,
                  "router_method = density: events per pixel per frame above which a frame is "
                  "level 2 (medium).",
                  min_value=0.0),
    ),
    "vlm_captioner": _COMMON + _MASK + (
        ParamSpec("mask_source", "topic",
                  "'topic': use sttf_perception's TokenMask for the same frame (falls back to a "
                  "locally computed mask after mask_timeout_ms); 'local': always compute it here.",
                  choices=("topic", "local")),
        ParamSpec("mask_timeout_ms", 150.0,
                  "How long a closed frame waits for its TokenMask before the local mask is used "
                  "(counted in diagnostics).", min_value=0.0, max_value=10000.0),
        ParamSpec("use_rgb", "auto",
                  "'auto': fuse RGB frames when they arrive on the image topic; 'never': events "
                  "only; 'always': wait for an RGB frame for every processed frame.",
                  choices=("auto", "never", "always")),
        ParamSpec("refresh_period", 30,
                  "Dense encoder pass over all tokens every N frames (0 = never); the sparse "
                  "frames in between recompute only the changed tokens.", min_value=0),
        ParamSpec("drift_bound", 0.0,
                  "Also run a dense pass when the memory change accumulated by sparse frames "
                  "since the last dense pass exceeds this fraction of the memory's norm (0 = "
                  "off).",
                  min_value=0.0),
        ParamSpec("layer_threshold_scale", 1.0,
                  "Scale of the per-layer gate thresholds stored in the checkpoint (a token is "
                  "propagated through layer l only while its input moved more than the threshold "
                  "from its last propagated value); 0 = propagate every changed token.",
                  min_value=0.0),
        ParamSpec("decoding", "greedy", "Caption decoding: 'greedy' or 'beam'.",
                  choices=("greedy", "beam")),
        ParamSpec("beam_size", 3, "Beam width when decoding = 'beam'.", min_value=1, max_value=16),
        ParamSpec("max_caption_tokens", 20, "Longest caption in tokens.", min_value=1,
                  max_value=64),
        ParamSpec("caption_period", 1,
                  "Run the text decoder every N frames (and whenever the recognised gesture "
                  "changes or the memory is refreshed); frames in between republish the last text "
                  "and report zero decoder FLOPs. Gesture and compute cost are computed every "
                  "frame. 1 = decode every frame.", min_value=1, max_value=1000),
        ParamSpec("caption_reuse_threshold", 0.05,
                  "Republish the last text instead of decoding when the fused vision prefix moved "
                  "less than this (relative L2) from the prefix that text was decoded from (the "
                  "gate compares with the last decoded prefix, so slow drift still re-decodes), "
                  "unless the gesture or the decoder pathway changed. 0 = decode whenever "
                  "caption_period says so.",
                  min_value=0.0, max_value=1.0),
        ParamSpec("gesture_threshold", 0.4,
                  "A gesture is published only when its calibrated, smoothed probability reaches "
                  "this and beats 'no gesture'; otherwise gesture_label is 0 and the caption "
                  "describes the scene the scene head found ('nothing moves', 'a person walks "
                  "from left to right', ...). Can be changed at runtime (next frame).",
                  min_value=0.0, max_value=1.0),
        ParamSpec("gesture_smoothing_frames", 2.0,
                  "Time constant (frames) of the exponential moving average of the heads' "
                  "probabilities; 1 = no smoothing. Can be changed at runtime (next frame).",
                  min_value=1.0, max_value=1000.0),
        ParamSpec("gesture_hold", 0.4,
                  "Hysteresis: a published gesture stays published while its smoothed "
                  "probability is at least gesture_hold x gesture_threshold and at least "
                  "gesture_hold x the best gesture's, so a held gesture does not flicker; 0 = no "
                  "hysteresis. Can be changed at runtime (next frame).",
                  min_value=0.0, max_value=1.0),
        ParamSpec("shake_min_patches", 10,
                  "Ego-motion rule: the scene kind 'the camera shakes' is said only when at "
                  "least this many of the model's patches changed in the last 10 frames (a "
                  "shaking camera moves every edge in view); otherwise the next most likely kind "
                  "('nothing moves', ...). 10 = one more than an empty scene gave on the "
                  "validation subjects (docs/design.md); 0 = off. Can be changed at runtime "
                  "(next frame).", min_value=0, max_value=100000),
        ParamSpec("compute_budget", 1.0,
                  "Compute budget in (0, 1] of the joint STTF+ANC model: caps the routed branch "
                  "(<= 1/3 tiny, <= 2/3 small) and slices the channel gates; used only when no "
                  "RouteDecision of anc_router comes for a frame (then anc_router's budget rules, "
                  "and the ComputeCost publishes the budget executed). Can be changed at runtime "
                  "(next frame).", min_value=0.01, max_value=1.0),
        ParamSpec("num_threads", 1, "torch intra-op threads of the model.", min_value=1,
                  max_value=64),
        ParamSpec("max_pending_frames", 30,
                  "Backpressure: most closed frames waiting for the model; when full the oldest "
                  "are dropped (counted in diagnostics) and the next processed frame is a dense "
                  "token refresh. Can be changed at runtime.", min_value=1, max_value=10000),
        ParamSpec("link_frames", False,
                  "Link mode 'active' (docs/deploy.md): every EventPacket holds one whole frame "
                  "(sttf_perception's relay), so the open frame is closed after each packet "
                  "instead of when the next frame's packet arrives (a frame period earlier).",
                  read_only=True),
    ),

    # ---- live sources (package edge_vlm_cameras): not part of graph.yaml's processing graph
    "camera_dv": (
        ParamSpec("serial_number", "",
                  "iniVation camera to open (serial number); empty = the first one found.",
                  read_only=True),
        ParamSpec("aedat4_file", "",
                  "Replay this AEDAT4 recording instead of a live camera (empty = live).",
                  read_only=True),
        ParamSpec("rate", 1.0,
                  "Replay speed of aedat4_file (1 = real time, 0 = as fast as possible); ignored "
                  "for live cameras.", read_only=True, min_value=0.0, max_value=1000.0),
        ParamSpec("frame_id", "event_camera", "header.frame_id of the published EventPackets.",
                  read_only=True),
        ParamSpec("packet_period_ms", 2.0,
                  "Longest sensor-time span of one EventPacket (ms); camera batches are split on "
                  "this grid.", read_only=True, min_value=0.1, max_value=1000.0),
    ),
    "camera_metavision": (
        ParamSpec("device", "",
                  "Prophesee camera serial, or a RAW/HDF5 file to replay; empty = the first "
                  "camera found.", read_only=True),
        ParamSpec("frame_id", "event_camera", "header.frame_id of the published EventPackets.",
                  read_only=True),
        ParamSpec("packet_period_ms", 2.0, "Sensor-time span of one EventPacket (ms).",
                  read_only=True,
                  min_value=0.1, max_value=1000.0),
    ),
    "camera_rgb": (
        ParamSpec("device", "0", "OpenCV VideoCapture source: a device index ('0'), a device path "
                                 "('/dev/video0'), a video file or a stream URL.", read_only=True),
        ParamSpec("rate_hz", 0.0,
                  "Publish rate (Hz); 0 = the source's own frame rate (30 if unknown).",
                  read_only=True, min_value=0.0, max_value=1000.0),
        ParamSpec("loop", False, "Restart a video file at its end (otherwise the node exits 0).",
                  read_only=True),
        ParamSpec("frame_id", "camera", "header.frame_id of the published images.",
                  read_only=True),
        ParamSpec("image_width", 0, "Resize to this width (px); 0 = native.", read_only=True,
                  min_value=0,
                  max_value=8192),
        ParamSpec("image_height", 0, "Resize to this height (px); 0 = native.", read_only=True,
                  min_value=0,
                  max_value=8192),
    ),
}


def defaults(node: str) -> dict[str, Any]:
    """Default parameter values of ``node``."""
    return {p.name: p.default for p in NODE_PARAMS[node]}


def resolve(node: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``node`` updated with validated ``overrides`` (unknown names raise)."""
    specs = {p.name: p for p in NODE_PARAMS[node]}
    out = defaults(node)
    for k, v in (overrides or {}).items():
        if k not in specs:
            raise ValueError(f"unknown parameter '{k}' for node {node} (known: {sorted(specs)})")
        out[k] = specs[k].validate(v)
    return out
