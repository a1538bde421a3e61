"""vlm_captioner node: events (+ token masks, route decisions, RGB) -> captions + compute cost.

Subscribes  ``/event_camera/events``   event_camera_msgs/EventPacket (sensor QoS)
            ``/edge_vlm/token_mask``   edge_vlm_msgs/TokenMask       (used when mask_source == 'topic')
            ``/edge_vlm/route``        edge_vlm_msgs/RouteDecision   (branch reported in the cost)
            ``/camera/image_raw``      sensor_msgs/Image rgb8/bgr8/mono8 (when use_rgb != 'never')
Publishes   ``/edge_vlm/caption``      edge_vlm_msgs/Caption
            ``/edge_vlm/caption_text`` std_msgs/String (mirror of Caption.text)
            ``/edge_vlm/compute_cost`` edge_vlm_msgs/ComputeCost
            ``/diagnostics``           diagnostic_msgs/DiagnosticArray (1 Hz, status ``edge_vlm/vlm_captioner``)

Frames are processed strictly in order. With mask_source == 'topic' a closed
frame waits for the TokenMask with the same stamp for at most
mask_timeout_ms, then the local mask is used (counted as a fallback). With
use_rgb == 'always' it also waits (same timeout) for an RGB frame.

Backpressure: at most ``max_pending_frames`` closed frames wait for the
model. When the queue is full the OLDEST waiting frames are dropped (counted
as ``dropped``, WARN in diagnostics) and the next processed frame is a dense
refresh of the token memory (a memory that skipped frames is never reused).

ComputeCost stages: ``decode`` (EventPacket decoding attributed to the frame),
``wait`` (wall time from frame close to processing start: queue + mask wait),
the model stages of ``FrameResult.latency_ms`` (mask, encoder, fusion,
decoder) and ``total`` = decode + model total (``wait`` excluded).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

from edge_vlm_msgs.msg import Caption, ComputeCost, RouteDecision, TokenMask
from edge_vlm_ros.common import (QOS_RELIABLE, QOS_RELIABLE_50, QOS_SENSOR, TOPICS, FrameNode,
                                 ParameterError, add_param_validation, declare_from_spec, image_to_numpy,
                                 ns_to_time, resize_nearest, run_node, time_to_ns)

NAME = "vlm_captioner"
MAX_PENDING_MASKS = 256


@dataclass
class Pending:
    frame: object
    stamps: list
    decode_ms: float
    closed_at: float
    deadline: float
    info: dict = field(default_factory=dict)


class CaptionerNode(FrameNode, Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = p = declare_from_spec(self, NAME)
        from edge_vlm.model.sttf import count_parameters
        from edge_vlm.cores.captioner import CaptionerCore
        try:
            self.core = CaptionerCore(p)   # CheckpointError propagates to run_node (clean exit 3)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        self.params_active = int(count_parameters(self.core.model))
        self.num_tokens = int(self.core.model.cfg.num_tokens)
        add_param_validation(self, NAME, self._on_params)

        self.pub_caption = self.create_publisher(Caption, TOPICS["caption"], QOS_RELIABLE_50)
        self.pub_text = self.create_publisher(String, TOPICS["caption_text"], QOS_RELIABLE_50)
        self.pub_cost = self.create_publisher(ComputeCost, TOPICS["compute_cost"], QOS_RELIABLE_50)

        self.pending: deque[Pending] = deque()
        self.masks: dict[int, np.ndarray] = {}
        self.routes: dict[int, str] = {}
        self.latest_branch = "base"
        self.images: deque = deque(maxlen=150)     # (stamp_ns, msg); ~5 s at 30 fps covers a processing backlog
        self.stats = {"captions": 0, "masks_used": 0, "mask_fallbacks": 0, "masks_bad": 0,
                      "rgb_frames": 0, "rgb_missing": 0, "images_rejected": 0, "forced_refreshes": 0}
        self._refresh_needed = False     # set when frames were dropped: next processed frame is dense

        # inputs other than events exist always (cheap); parameters decide at processing time
        self.create_subscription(TokenMask, TOPICS["token_mask"], self._on_mask, QOS_RELIABLE)
        self.create_subscription(RouteDecision, TOPICS["route"], self._on_route, QOS_RELIABLE)
        self.create_subscription(Image, TOPICS["image"], self._on_image, QOS_SENSOR)
        # The model runs in a worker thread, so packets keep being received (and not dropped by the
        # best-effort reader) while a frame is processed. _cond guards pending/masks/routes/images.
        self._cond = threading.Condition()
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="captioner_worker", daemon=True)
        self._worker.start()
        self.setup_frames(p, track_inputs=True)   # events last: the model is loaded by now
        self.get_logger().info(
            f"ready: model {self.core.model_id} ({self.params_active} parameters, {self.num_tokens} tokens), "
            f"mask_source={p['mask_source']} use_rgb={p['use_rgb']} decoding={p['decoding']}")

    # ------------------------------------------------------------ parameters
    def _on_params(self, changed: dict) -> None:
        self.params.update(changed)
        eng = self.core.engine
        if "event_count_threshold" in changed:
            eng.k = int(changed["event_count_threshold"])
        if "refresh_period" in changed:
            eng.refresh_period = int(changed["refresh_period"])
        if "decoding" in changed:
            eng.decoding = str(changed["decoding"])
        if "beam_size" in changed:
            eng.beam_size = int(changed["beam_size"])
        if "max_caption_tokens" in changed:
            eng.max_tokens = min(int(changed["max_caption_tokens"]), eng.cfg.max_len)
        if "caption_period" in changed:
            eng.caption_period = max(1, int(changed["caption_period"]))
        if "compute_budget" in changed and hasattr(eng, "set_budget"):
            eng.set_budget(float(changed["compute_budget"]))     # takes effect on the next frame
        if "mask_method" in changed:
            eng.mask_method = str(changed["mask_method"])
        if "drift_bound" in changed:
            eng.drift_bound = float(changed["drift_bound"])
        if "layer_threshold_scale" in changed:
            base = [float(x) for x in self.core.meta.get("layer_thresholds", [])]
            eng.layer_thresholds = [float(changed["layer_threshold_scale"]) * x for x in base]
        if "num_threads" in changed:
            import torch
            torch.set_num_threads(int(changed["num_threads"]))
        self.core.params = {**self.core.params, **changed}

    # ---------------------------------------------------------------- inputs
    def _on_mask(self, msg: TokenMask) -> None:
        idx = np.asarray(msg.active_indices, dtype=np.int64)
        if int(msg.total_tokens) != self.num_tokens or (len(idx) and int(idx.max()) >= self.num_tokens):
            self.stats["masks_bad"] += 1
            return
        with self._cond:
            self.masks[time_to_ns(msg.header.stamp)] = idx
            while len(self.masks) > MAX_PENDING_MASKS:
                self.masks.pop(next(iter(self.masks)))
            self._cond.notify()

    def _on_route(self, msg: RouteDecision) -> None:
        branches = list(msg.branches_run)
        branch = branches[0] if len(branches) == 1 else ("mixed" if branches else "base")
        with self._cond:
            self.routes[time_to_ns(msg.header.stamp)] = branch
            while len(self.routes) > MAX_PENDING_MASKS:
                self.routes.pop(next(iter(self.routes)))

    def _branch_for(self, t_end: int) -> str:
        """Branch of the RouteDecision for this frame, else of the latest older one, else 'base'."""
        if t_end in self.routes:
            branch = self.routes[t_end]
        else:
            older = [s for s in self.routes if s < t_end]
            branch = self.routes[max(older)] if older else self.latest_branch
        for old in [s for s in self.routes if s <= t_end]:
            self.routes.pop(old, None)
        self.latest_branch = branch
        return branch

    def _on_image(self, msg: Image) -> None:
        if self.params["use_rgb"] == "never":
            return
        with self._cond:
            self.images.append((time_to_ns(msg.header.stamp), msg))
            self._cond.notify()

    def _pick_image(self, t_end: int):
        """Latest image whose stamp lies within one frame period of the frame end (|stamp - end| < P)."""
        for stamp, msg in reversed(self.images):
            if abs(stamp - t_end) < self.period:
                return stamp, msg
        return None

    # ------------------------------------------------------------ processing
    def on_frames(self, frames) -> None:
        now = time.monotonic()
        timeout = float(self.params["mask_timeout_ms"]) / 1e3
        limit = max(1, int(self.params["max_pending_frames"]))
        dropped = []
        with self._cond:
            for f in frames:
                stamps, decode_ms = self.inputs.pop(f.index)
                self.pending.append(Pending(f, stamps, decode_ms, now, now + timeout))
            while len(self.pending) > limit:      # backpressure: drop the OLDEST waiting frames
                dropped.append(self.pending.popleft().frame.index)
            if dropped:
                self.dropped_frames += len(dropped)
                self._refresh_needed = True
            self._cond.notify()
        if dropped:
            self.get_logger().warning(
                f"backpressure: dropped {len(dropped)} frame(s) ({dropped[0]}..{dropped[-1]}; "
                f"max_pending_frames={limit}, {self.dropped_frames} dropped in total)", throttle_duration_sec=2.0)

    def _next_ready(self):
        """Under the lock: pop the head frame if it may be processed now, with its inputs; else None."""
        if not self.pending:
            return None
        head = self.pending[0]
        t_end = head.frame.t_end
        p = self.params
        waiting = time.monotonic() < head.deadline
        if waiting and p["mask_source"] == "topic" and t_end not in self.masks:
            return None
        if waiting and p["use_rgb"] == "always" and self._pick_image(t_end) is None:
            return None
        self.pending.popleft()
        refresh, self._refresh_needed = self._refresh_needed, False
        change = self.masks.pop(t_end, None) if p["mask_source"] == "topic" else None
        for old in [s for s in self.masks if s <= t_end]:
            self.masks.pop(old, None)
        picked = self._pick_image(t_end) if p["use_rgb"] != "never" else None
        while self.images and self.images[0][0] <= t_end - self.period:
            self.images.popleft()          # too old for this and every later frame
        return head, change, picked, self._branch_for(t_end), refresh

    def _work(self) -> None:
        while True:
            with self._cond:
                item = None
                while not self._stop:
                    item = self._next_ready()
                    if item is not None:
                        break
                    wait = 0.05
                    if self.pending:
                        wait = min(wait, max(0.0, self.pending[0].deadline - time.monotonic()) + 1e-4)
                    self._cond.wait(wait)
                if self._stop:
                    return
            try:
                self._process(*item)
            except Exception as exc:
                self.processing_errors += 1
                self.get_logger().error(f"frame {item[0].frame.index} failed: {type(exc).__name__}: {exc}")

    def _process(self, item: Pending, change, picked, branch: str, refresh: bool = False) -> None:
        f = item.frame
        p = self.params
        start = time.monotonic()
        if p["mask_source"] == "topic":
            if change is None:
                self.stats["mask_fallbacks"] += 1
            else:
                self.stats["masks_used"] += 1
        rgb, img_stamp = None, None
        if p["use_rgb"] != "never":
            if picked is not None:
                try:
                    arr = image_to_numpy(picked[1])
                    rgb = resize_nearest(arr, int(p["model_width"]), int(p["model_height"]))
                    img_stamp = picked[0]
                except ValueError as exc:
                    self.stats["images_rejected"] += 1
                    self.get_logger().warning(f"image ignored: {exc}", throttle_duration_sec=5.0)
            if rgb is None and p["use_rgb"] == "always":
                self.stats["rgb_missing"] += 1
        if refresh:
            # frames were dropped before this one: the token memory skipped them, re-encode every
            # token now (checked by tests/test_faults.py)
            self.core.engine.force_refresh()
            self.stats["forced_refreshes"] += 1
        res = self.core.process(f, rgb, change)
        if rgb is not None:
            self.stats["rgb_frames"] += 1
        frame_id = self.input.frame_id
        stamp = ns_to_time(f.t_end)

        c = Caption()
        c.header.stamp = stamp
        c.header.frame_id = frame_id
        c.text = res.text
        c.score = float(res.score)
        c.gesture_label = int(res.label)
        c.gesture_name = str(res.gesture_name) if res.label else ""
        c.gesture_confidence = float(res.confidence)
        stamps = list(item.stamps) + ([img_stamp] if img_stamp is not None else [])
        c.input_stamps = [ns_to_time(s) for s in stamps]
        c.window_start = ns_to_time(f.t_start)
        c.window_end = stamp
        c.model_id = self.core.model_id
        c.frame_index = int(f.index)
        c.input_mode = "rgb+events" if rgb is not None else "events"
        self.pub_caption.publish(c)
        self.pub_text.publish(String(data=res.text))

        cost = ComputeCost()
        cost.header.stamp = stamp
        cost.header.frame_id = frame_id
        cost.active_tokens = int(res.active_tokens)
        cost.total_tokens = int(res.total_tokens)
        # the joint STTF+ANC model routes the frame itself (same estimator and input as anc_router);
        # an STTF-only model reports anc_router's decision
        cost.branch = str(res.route.get("branch", branch)) if res.route else branch
        executed = float(res.flops_executed)
        dense = float(res.flops_dense)
        cost.flops_executed = executed
        cost.flops_dense = dense
        cost.flops_saved_fraction = float(min(1.0, max(0.0, 1.0 - executed / dense))) if dense > 0 else 0.0
        lat = dict(res.latency_ms)
        model_total = float(lat.pop("total", sum(lat.values())))
        names = ["decode", "wait"] + list(lat) + ["total"]
        values = [item.decode_ms, (start - item.closed_at) * 1e3] + [float(v) for v in lat.values()] \
            + [item.decode_ms + model_total]
        cost.stage_names = names
        cost.stage_latency_ms = [float(v) for v in values]
        cost.frame_index = int(f.index)
        cost.compute_budget = float(p["compute_budget"])
        cost.params_active = int(res.route.get("params_active", self.params_active)) if res.route \
            else self.params_active
        self.pub_cost.publish(cost)
        self.stats["captions"] += 1
        self.record_frame(item.decode_ms + model_total,
                          float(res.active_tokens) / max(1, int(res.total_tokens)))

    def stop_worker(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._worker.join(timeout)

    def shutdown_report(self) -> None:
        self.stop_worker()
        super().shutdown_report()

    def counters(self) -> dict:
        c = super().counters()
        c.update(self.stats)
        c["pending"] = len(self.pending)
        return c

    def diagnostic_values(self) -> dict:
        s = self.stats
        return {"captions": s["captions"], "mask_fallbacks": s["mask_fallbacks"], "masks_used": s["masks_used"],
                "masks_bad": s["masks_bad"], "forced_refreshes": s["forced_refreshes"],
                "rgb_frames": s["rgb_frames"], "pending": len(self.pending),
                "max_pending_frames": int(self.params["max_pending_frames"])}


def main(args=None) -> int:
    return run_node(CaptionerNode, args, NAME)


if __name__ == "__main__":
    sys.exit(main())
