"""vlm_captioner node: events (+ token masks, route decisions, RGB) -> captions + compute cost.

Subscribes  ``/event_camera/events``   event_camera_msgs/EventPacket (sensor QoS)
            ``/edge_vlm/token_mask``   edge_vlm_msgs/TokenMask       (when mask_source == 'topic')
            ``/edge_vlm/route``        edge_vlm_msgs/RouteDecision   (the route a joint model runs)
            ``/camera/image_raw``      sensor_msgs/Image, any encoding rosbags-image converts
                                       (when use_rgb != 'never')
            ``/camera/image_raw/compressed`` sensor_msgs/CompressedImage jpeg/png (image_transport:
                                       ``<image topic>/compressed``; used while no raw Image
                                       came in the last second)
Publishes   ``/edge_vlm/caption``      edge_vlm_msgs/Caption
            ``/edge_vlm/caption_text`` std_msgs/String (mirror of Caption.text)
            ``/edge_vlm/compute_cost`` edge_vlm_msgs/ComputeCost
            ``/diagnostics``           diagnostic_msgs/DiagnosticArray (1 Hz, status
                                       ``edge_vlm/vlm_captioner``)

Stamps: Caption and ComputeCost carry the frame end in the EventPacket header clock
(``frame.stamp_end``, :mod:`edge_vlm.stream.clock`); TokenMasks and RouteDecisions are matched to
frames by their sensor-time ``window_start``, images by their stamps in the header clock
(``images_unmatched`` / ``image_gap_ms`` in the diagnostics when none fits).

A thin adapter: the frame scheduling (mask / route / image matching, mask timeout,
backpressure) is :class:`edge_vlm.cores.schedule.CaptionScheduler`, the model and everything
published about a frame :class:`edge_vlm.cores.captioner.CaptionerCore` -- the objects the
offline evaluation runs too. A joint STTF+ANC model executes the RouteDecision of each frame
(branches, weights, budget: anc_router's ``compute_budget`` is the one knob) and routes by
itself only when it is late (``route_fallbacks``). The node subscribes, holds the lock, runs
the model in a worker thread (so packets keep being received while a frame is processed) and
publishes.
"""
from __future__ import annotations

import sys
import threading
import time

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from edge_vlm.cores.captioner import CaptionerCore, CaptionOutput
from edge_vlm.cores.schedule import CaptionScheduler, ReadyFrame
from edge_vlm.stream.frames import period_ns
from edge_vlm_msgs.msg import Caption, ComputeCost, RouteDecision, TokenMask
from edge_vlm_ros.conversions import ns_to_time, raw_image, time_to_ns
from edge_vlm_ros.frame_node import FrameNode
from edge_vlm_ros.params import ParameterError, add_param_validation, declare_from_spec
from edge_vlm_ros.qos import publisher, subscription, topic_qos
from edge_vlm_ros.run import run_node

NAME = "vlm_captioner"
#: a CompressedImage is ignored this long after a raw Image (a driver publishing both, as
#: image_transport does, is fused once, from the raw stream)
RAW_IMAGE_PREFERRED_S = 1.0


def caption_msg(out: CaptionOutput, frame_id: str, model_id: str) -> Caption:
    """The Caption of a frame, stamped at the frame end in the EventPacket header clock (its
    window in sensor time)."""
    f, res = out.frame, out.result
    c = Caption()
    c.header.stamp = ns_to_time(f.stamp_end)
    c.header.frame_id = frame_id
    c.text = res.text
    c.score = float(res.score)
    c.gesture_label = int(res.label)
    c.gesture_name = str(res.gesture_name) if res.label else ""
    c.gesture_confidence = float(res.confidence)
    if res.scene is not None:
        c.scene = res.scene.kind
        c.scene_confidence = float(res.scene.kind_confidence)
        c.motion_direction = res.scene.direction
        c.motion_speed = res.scene.speed
        c.motion_position = res.scene.position
    c.input_stamps = [ns_to_time(s) for s in out.input_stamps]
    c.window_start = ns_to_time(f.t_start)
    c.window_end = ns_to_time(f.t_end)
    c.model_id = model_id
    c.frame_index = int(f.index)
    c.input_mode = "rgb+events" if out.rgb else "events"
    return c


def cost_msg(out: CaptionOutput, frame_id: str) -> ComputeCost:
    """The ComputeCost of a frame, stamped like its Caption."""
    res = out.result
    cost = ComputeCost()
    cost.header.stamp = ns_to_time(out.frame.stamp_end)
    cost.header.frame_id = frame_id
    cost.active_tokens = int(res.active_tokens)
    cost.total_tokens = int(res.total_tokens)
    cost.branch = out.branch
    cost.flops_executed = float(res.flops_executed)
    cost.flops_dense = float(res.flops_dense)
    cost.flops_saved_fraction = out.flops_saved_fraction
    cost.stage_names = list(out.stage_names)
    cost.stage_latency_ms = [float(v) for v in out.stage_ms]
    cost.frame_index = int(out.frame.index)
    cost.compute_budget = out.compute_budget
    cost.params_active = int(out.params_active)
    return cost


class CaptionerNode(FrameNode, Node):
    def __init__(self):
        super().__init__(NAME)
        p = declare_from_spec(self, NAME)
        try:
            self.core = CaptionerCore(p)   # CheckpointError propagates to run_node (clean exit 3)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        self.params = self.core.params            # one live parameter dict: core and scheduler
        add_param_validation(self, NAME, self.core.apply_params)
        self.pub_caption = publisher(self, Caption, "caption")
        self.pub_text = publisher(self, String, "caption_text")
        self.pub_cost = publisher(self, ComputeCost, "compute_cost")
        # inputs other than events exist always (cheap); parameters decide at processing time
        subscription(self, TokenMask, "token_mask", self._on_mask)
        subscription(self, RouteDecision, "route", self._on_route)
        image_sub = subscription(self, Image, "image", self._on_image)
        self._raw_image_at = float("-inf")
        self.create_subscription(CompressedImage, image_sub.topic_name + "/compressed",
                                 self._on_compressed_image, topic_qos("image_compressed"))
        # _cond guards the scheduler (callbacks and the worker thread)
        self._cond = threading.Condition()
        self._stop = False
        self._unmatched_told = 0
        self.scheduler = CaptionScheduler(self.params, self.core.num_tokens,
                                          period_ns(self.params))
        self._worker = threading.Thread(target=self._work, name="captioner_worker", daemon=True)
        self._worker.start()
        self.setup_frames(self.params, track_inputs=True)   # events last: the model is loaded
        self.get_logger().info(
            f"ready: model {self.core.model_id} ({self.core.params_active} parameters, "
            f"{self.core.num_tokens} tokens), mask_source={p['mask_source']} "
            f"use_rgb={p['use_rgb']} decoding={p['decoding']}")

    # ---------------------------------------------------------------- inputs
    def _frame_end(self, window_start) -> int:
        """The sensor-time frame end a TokenMask / RouteDecision is about (its window start +
        the frame period): the scheduler's key (header stamps may differ between nodes by the
        jitter of the packets' stamps)."""
        return time_to_ns(window_start) + self.scheduler.period

    def _on_mask(self, msg: TokenMask) -> None:
        with self._cond:
            if self.scheduler.add_mask(self._frame_end(msg.window_start), msg.active_indices,
                                       msg.total_tokens):
                self._cond.notify()

    def _on_route(self, msg: RouteDecision) -> None:
        with self._cond:
            self.scheduler.add_route(self._frame_end(msg.window_start), list(msg.branches_run),
                                     list(msg.branch_weights), float(msg.compute_budget),
                                     list(msg.probabilities) or None)
            self._cond.notify()

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Queued undecoded; the worker converts it (a bad one is counted in images_rejected)."""
        with self._cond:
            if isinstance(msg, Image):
                self._raw_image_at = time.monotonic()
            if self.scheduler.add_image(raw_image(msg)):
                self._cond.notify()

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        if time.monotonic() - self._raw_image_at >= RAW_IMAGE_PREFERRED_S:
            self._on_image(msg)

    def on_frames(self, frames) -> None:
        with self._cond:
            dropped = self.scheduler.add_frames(frames, [self.inputs.pop(f.index) for f in frames],
                                                time.monotonic())
            self.dropped_frames += len(dropped)
            self._cond.notify()
        if dropped:
            self.get_logger().warning(
                f"backpressure: dropped {len(dropped)} frame(s) ({dropped[0]}..{dropped[-1]}; "
                f"max_pending_frames={self.params['max_pending_frames']}, "
                f"{self.dropped_frames} dropped in total)", throttle_duration_sec=2.0)

    # ------------------------------------------------------------ processing
    def _next(self) -> ReadyFrame | None:
        """The next frame to caption (None: the node stops); waits under the lock."""
        with self._cond:
            while not self._stop:
                ready = self.scheduler.next_ready(time.monotonic())
                if ready is not None:
                    return ready
                self._cond.wait(self.scheduler.wait_s(time.monotonic()))
        return None

    def _work(self) -> None:
        while (ready := self._next()) is not None:
            try:
                self._publish(self.core.caption(ready, time.monotonic()))
            except Exception as exc:
                self.processing_errors += 1
                self.get_logger().error(f"frame {ready.pending.frame.index} failed: "
                                        f"{type(exc).__name__}: {exc}")

    def _publish(self, out: CaptionOutput) -> None:
        if out.image_error is not None:
            self.get_logger().warning(f"image ignored: {out.image_error}",
                                      throttle_duration_sec=5.0)
        self._warn_unmatched_images()
        frame_id = self.input.frame_id
        self.pub_caption.publish(caption_msg(out, frame_id, self.core.model_id))
        self.pub_text.publish(String(data=out.result.text))
        self.pub_cost.publish(cost_msg(out, frame_id))
        res = out.result
        self.diagnostics.record_frame(out.total_ms,
                                      float(res.active_tokens) / max(1, int(res.total_tokens)))

    def _warn_unmatched_images(self) -> None:
        """Say so when images come in but none lies within a frame period of the frame stamps
        (worker thread, after the scheduler counted it)."""
        s = self.scheduler
        if s.images_unmatched > self._unmatched_told and s.image_gap_ns is not None:
            self._unmatched_told = s.images_unmatched
            self.get_logger().warning(
                f"{s.images_unmatched} frame(s) found no image within a frame period: the nearest "
                f"image is {s.image_gap_ns / 1e9:+.3f} s from the frame stamp (are the camera "
                "and the event stream stamped in different clocks?)", throttle_duration_sec=5.0)

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
        c.update(self.core.stats.as_dict())
        c["masks_bad"] = self.scheduler.masks_bad
        c["images_unmatched"] = self.scheduler.images_unmatched
        c["pending"] = len(self.scheduler.pending)
        return c

    def diagnostic_values(self) -> dict:
        s = self.core.stats
        return {"captions": s.captions, "mask_fallbacks": s.mask_fallbacks,
                "masks_used": s.masks_used, "masks_bad": self.scheduler.masks_bad,
                "forced_refreshes": s.forced_refreshes, "rgb_frames": s.rgb_frames,
                "images_unmatched": self.scheduler.images_unmatched,
                "image_gap_ms": _ms(self.scheduler.image_gap_ns),
                "routes_followed": s.routes_followed, "route_fallbacks": s.route_fallbacks,
                "pending": len(self.scheduler.pending),
                "max_pending_frames": int(self.params["max_pending_frames"])}


def _ms(ns: int | None) -> str | float:
    return "n/a" if ns is None else round(ns / 1e6, 3)


def main(args=None) -> int:
    return run_node(CaptionerNode, args, NAME)


if __name__ == "__main__":
    sys.exit(main())
