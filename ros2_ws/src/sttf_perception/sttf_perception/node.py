"""sttf_perception node: EventPacket -> FrameClock -> PerceptionCore -> TokenMask (+ mono8 change
mask).

Subscribes  ``/event_camera/events``  (event_camera_msgs/EventPacket, sensor QoS)
Publishes   ``/edge_vlm/token_mask``  (edge_vlm_msgs/TokenMask, reliable keep last 10)
            ``/edge_vlm/change_mask`` (sensor_msgs/Image mono8 at the SENSOR's resolution, 255 =
                                       active patch, sensor QoS; if publish_mask_image)
            ``/diagnostics``          (diagnostic_msgs/DiagnosticArray, 1 Hz, status
                                       ``edge_vlm/sttf_perception``)
Every output about frame k (sensor time ``[k*P, (k+1)*P)``) carries ``header.stamp`` = the frame
end in the EventPacket header clock (``frame.stamp_end``, :mod:`edge_vlm.stream.clock`) and the
camera's ``frame_id``: the change mask overlays the event frame of the same camera in rviz or
Foxglove (docs/design.md, "Time stamps" and "Change-mask image").
"""
from __future__ import annotations

import sys
import time

from rclpy.node import Node
from sensor_msgs.msg import Image

from edge_vlm.cores.perception import MaskResult, PerceptionCore, sensor_mask_image
from edge_vlm.stream.frames import Frame
from edge_vlm_msgs.msg import TokenMask
from edge_vlm_ros.conversions import ns_to_time, numpy_to_image
from edge_vlm_ros.frame_node import FrameNode
from edge_vlm_ros.params import add_param_validation, declare_from_spec
from edge_vlm_ros.qos import publisher
from edge_vlm_ros.run import run_node

NAME = "sttf_perception"


def token_mask_msg(frame: Frame, r: MaskResult, params: dict, frame_id: str) -> TokenMask:
    """The TokenMask of ``frame``: its active patches on the model grid, stamped at the frame
    end in the EventPacket header clock."""
    m = TokenMask()
    m.header.stamp = ns_to_time(frame.stamp_end)
    m.header.frame_id = frame_id
    m.grid_width, m.grid_height = int(r.grid_width), int(r.grid_height)
    m.patch_size = int(params["patch_size"])
    # the model image: sensor coordinates are rescaled to it, the patch grid tiles it
    m.image_width, m.image_height = int(params["model_width"]), int(params["model_height"])
    m.sensor_width, m.sensor_height = int(frame.width), int(frame.height)
    m.active_indices = r.active_indices.astype("uint32").tolist()
    m.scores = r.scores.astype("float32").tolist()
    m.threshold = float(r.threshold)
    m.total_tokens = int(r.total_tokens)
    m.active_fraction = float(r.active_fraction)
    m.method = str(r.method)
    m.event_count = int(r.event_count)
    m.window_start = ns_to_time(frame.t_start)            # sensor time
    return m


def change_mask_msg(frame: Frame, r: MaskResult, frame_id: str) -> Image:
    """The change mask of ``frame`` as a mono8 image at the sensor's resolution (the model-grid
    mask upscaled exactly as events are binned), stamped like its TokenMask."""
    img = sensor_mask_image(r.mask_image, frame.width, frame.height)
    return numpy_to_image(img, "mono8", frame.stamp_end, frame_id)


class PerceptionNode(FrameNode, Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = declare_from_spec(self, NAME)
        self.core = PerceptionCore(self.params)
        add_param_validation(self, NAME, self._on_params)
        self.pub_mask = publisher(self, TokenMask, "token_mask")
        self.pub_image = publisher(self, Image, "change_mask")
        self.setup_frames(self.params)
        self.get_logger().info(f"ready: frame period {self.period} ns, patch "
                               f"{self.params['patch_size']}, threshold "
                               f"{self.params['event_count_threshold']}")

    def _on_params(self, changed: dict) -> None:
        self.params.update(changed)
        self.core = PerceptionCore({**self.core.params, **{k: v for k, v in changed.items()
                                                           if k in self.core.params}})

    def on_frames(self, frames) -> None:
        frame_id = self.input.frame_id
        for f in frames:
            t0 = time.perf_counter()
            r = self.core.process(f)
            self.diagnostics.record_frame((time.perf_counter() - t0) * 1e3,
                                          float(r.active_fraction))
            self.pub_mask.publish(token_mask_msg(f, r, self.core.params, frame_id))
            if self.params["publish_mask_image"]:
                self.pub_image.publish(change_mask_msg(f, r, frame_id))


def main(args=None) -> int:
    return run_node(PerceptionNode, args, NAME)


if __name__ == "__main__":
    sys.exit(main())
