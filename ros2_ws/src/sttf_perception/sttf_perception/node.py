"""sttf_perception node: EventPacket -> FrameClock -> PerceptionCore -> TokenMask (+ mono8 change
mask).

Subscribes  ``/event_camera/events``  (event_camera_msgs/EventPacket, sensor QoS)
Publishes   ``/edge_vlm/token_mask``  (edge_vlm_msgs/TokenMask, reliable keep last 10)
            ``/edge_vlm/change_mask`` (sensor_msgs/Image mono8 at the SENSOR's resolution, 255 =
                                       active patch, sensor QoS; if publish_mask_image)
            ``/diagnostics``          (diagnostic_msgs/DiagnosticArray, 1 Hz, status
                                       ``edge_vlm/sttf_perception``)
            ``/edge_vlm/link_events`` (event_camera_msgs/EventPacket, sensor QoS; if
                                       link_relay: link mode 'active', docs/deploy.md)
Every output about frame k (sensor time ``[k*P, (k+1)*P)``) carries ``header.stamp`` = the frame
end in the EventPacket header clock (``frame.stamp_end``, :mod:`edge_vlm.stream.clock`) and the
camera's ``frame_id``: the change mask overlays the event frame of the same camera in rviz or
Foxglove (docs/design.md, "Time stamps" and "Change-mask image").

``link_relay`` (the drone's half of link mode 'active'): every EventPacket is also decoded into
:class:`edge_vlm.stream.link_filter.LinkRelay` (events bucketed by frame); once frame k's mask
is computed, ONE EventPacket of the events in its active patches is published after the
TokenMask (``seq`` counts these packets; ``time_base`` = its first event, or the frame start
when empty; ``header.stamp`` = ``time_base`` in the header clock, as a driver stamps). The ground
captioner subscribes to it instead of the raw events (launch ``link:=active``). With
``link_wait_subscribers`` N > 0 the node subscribes to the events only once the relay has matched
N subscribers: a player that waits for this node's subscription (the launch's ``source:=bag``)
then starts after the captioner can hear the relay, and no relayed frame goes to nobody.
"""
from __future__ import annotations

import array
import sys
import time
from typing import Callable

from event_camera_msgs.msg import EventPacket
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import Image

from edge_vlm.cores.perception import MaskResult, PerceptionCore, sensor_mask_image
from edge_vlm.io.codecs import make_decoder
from edge_vlm.stream.frames import Frame
from edge_vlm.stream.link_filter import LinkGeometry, LinkPacket, LinkRelay
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


def link_packet_msg(frame: Frame, pkt: LinkPacket, seq: int, frame_id: str) -> EventPacket:
    """Frame ``frame``'s kept events (link mode 'active') as an EventPacket: ``time_base`` is the
    packet's reference sensor time, ``header.stamp`` the same instant in the header clock."""
    m = EventPacket()
    m.header.stamp = ns_to_time(pkt.time_base + frame.stamp_offset)
    m.header.frame_id = frame_id
    m.width, m.height = int(frame.width), int(frame.height)
    m.seq, m.time_base = int(seq), int(pkt.time_base)
    m.encoding, m.is_bigendian = pkt.encoding, False
    m.events = array.array("B", pkt.payload)
    return m


class LinkOutput:
    """The relay of link mode 'active' (see the module doc): decode, bucket, filter, publish."""

    def __init__(self, node, params: dict):
        self.node, self.params = node, params
        self.relay = LinkRelay(node.period)
        self.decoders: dict = {}
        self.decode_errors = self.seq = self.subscribers = 0
        self.pub = publisher(node, EventPacket, "link_events")
        node.create_timer(1.0, self._log_subscribers)

    def await_subscribers(self, n: int, timeout_s: float, ready: Callable[[], None]) -> None:
        """Call ``ready`` once the relay's publisher has matched ``n`` subscribers, or after
        ``timeout_s`` (with a warning); polled on the steady clock (under use_sim_time no
        /clock runs before the bag plays, and the bag waits for this node)."""
        deadline = time.monotonic() + timeout_s

        def check() -> None:
            k = self.pub.get_subscription_count()
            if k < n and time.monotonic() < deadline:
                return
            self.node.destroy_timer(timer)
            log = self.node.get_logger()
            if k < n:
                log.warning(f"link_events: {k} of {n} subscribers after {timeout_s:g} s; "
                            "subscribing to the events anyway")
            else:
                log.info(f"link_events: {k} subscribers matched; subscribing to the events")
            ready()

        timer = self.node.create_timer(0.05, check, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _log_subscribers(self) -> None:
        n = self.pub.get_subscription_count()
        if n != self.subscribers:
            self.subscribers = n
            self.node.get_logger().info(f"link_events subscribers: {n}")

    def packet(self, msg) -> None:
        """Decode one EventPacket into the relay (a malformed one: counted; the binner rejects
        and logs it)."""
        enc = str(msg.encoding)
        try:
            dec = self.decoders.get(enc) or self.decoders.setdefault(enc, make_decoder(enc))
            self.relay.push(dec.decode(bytes(msg.events), int(msg.width), int(msg.height),
                                       int(msg.time_base)))
        except Exception:
            self.decode_errors += 1
            self.decoders.pop(enc, None)

    def frame(self, f: Frame, r: MaskResult, frame_id: str) -> None:
        p = self.params
        geom = LinkGeometry(f.width, f.height, int(p["model_width"]), int(p["model_height"]),
                            int(p["patch_size"]))
        self.pub.publish(link_packet_msg(f, self.relay.take(f.index, r.active_indices, geom),
                                         self.seq, frame_id))
        self.seq += 1

    def counters(self) -> dict:
        c = self.relay.counters
        return {"link_frames": c.frames_sent, "link_events_in": c.events_in,
                "link_events_kept": c.events_kept, "link_payload_bytes": c.bytes_sent,
                "link_frames_dropped": c.frames_dropped, "link_late_events": c.late_events,
                "link_mono_fallbacks": c.mono_fallbacks, "link_resets": c.resets,
                "link_decode_errors": self.decode_errors}


class PerceptionNode(FrameNode, Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = declare_from_spec(self, NAME)
        self.core = PerceptionCore(self.params)
        add_param_validation(self, NAME, self._on_params)
        self.pub_mask = publisher(self, TokenMask, "token_mask")
        self.pub_image = publisher(self, Image, "change_mask")
        wait = int(self.params["link_wait_subscribers"]) if self.params["link_relay"] else 0
        self.setup_frames(self.params, subscribe=wait == 0)
        self.link = LinkOutput(self, self.params) if self.params["link_relay"] else None
        if wait:
            self.link.await_subscribers(wait, float(self.params["link_wait_timeout"]),
                                        self.subscribe_events)
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
            if self.link is not None:
                self.link.frame(f, r, frame_id)

    def _on_packet(self, msg) -> None:
        if self.link is not None:         # its events, bucketed before the binner closes frames
            self.link.packet(msg)
        super()._on_packet(msg)

    def counters(self) -> dict:
        c = super().counters()
        if getattr(self, "link", None) is not None:
            c.update(self.link.counters())
        return c


def main(args=None) -> int:
    return run_node(PerceptionNode, args, NAME)


if __name__ == "__main__":
    sys.exit(main())
