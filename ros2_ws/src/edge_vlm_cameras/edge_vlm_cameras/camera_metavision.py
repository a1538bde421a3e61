"""edge_vlm_camera_metavision (optional): a Prophesee camera via the Metavision SDK ->
EventPacket ``mono``.

Usage::

    edge_vlm_camera_metavision                                   # first camera found
    edge_vlm_camera_metavision --ros-args -p device:=recording.raw

The Metavision SDK is not on PyPI: it is imported lazily, and when it is
missing the node prints one clear line and exits with code 4. With a real ROS
install, Prophesee's own ``metavision_driver`` (publishes evt3 EventPackets on
``/event_camera/events``) is the better choice; the nodes decode evt3 natively.

Publishes ``event_camera/events`` (sensor QoS): one packet per
``packet_period_ms``, ``seq`` increasing from 0, ``time_base`` = first event
time in ns (Metavision timestamps are us -> ns = us * 1000).
Parameters: ``edge_vlm.params.NODE_PARAMS['camera_metavision']``.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
from event_camera_msgs.msg import EventPacket
from rclpy.node import Node

from edge_vlm.events import make_events
from edge_vlm_cameras.packets import make_packet
from edge_vlm_ros.params import declare_from_spec
from edge_vlm_ros.qos import publisher
from edge_vlm_ros.run import DeviceError, EndOfStream, run_node

NAME = "camera_metavision"


def import_events_iterator():
    """``metavision_core.event_io.EventsIterator`` or DeviceError with an explanation."""
    try:
        from metavision_core.event_io import EventsIterator
    except ImportError as exc:
        raise DeviceError(f"Metavision SDK not installed (cannot import metavision_core: {exc}); "
                          "install Prophesee's Metavision SDK, or run metavision_driver, which "
                          "publishes /event_camera/events") from None
    return EventsIterator


def metavision_to_events(evs: np.ndarray) -> np.ndarray:
    """Metavision CD events (x, y, p, t in us) -> EVENT_DTYPE (t in ns)."""
    return make_events(evs["t"].astype(np.int64) * 1000, evs["x"].astype(np.uint16),
                       evs["y"].astype(np.uint16),
                       evs["p"].astype(np.uint8))


class MetavisionCameraNode(Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = p = declare_from_spec(self, NAME)
        events_iterator = import_events_iterator()
        period_us = max(1, int(round(float(p["packet_period_ms"]) * 1000)))
        try:
            self.it = events_iterator(input_path=p["device"], mode="delta_t", delta_t=period_us)
            self.height, self.width = (int(v) for v in self.it.get_size())
        except Exception as exc:
            source = p["device"] or "(first camera)"
            raise DeviceError(f"cannot open Prophesee source '{source}': {exc}") from None
        self.pub = publisher(self, EventPacket, "events")
        self.seq = 0
        self._done: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name="metavision_reader",
                                        daemon=True)
        self._thread.start()
        self.create_timer(0.1, self._watch)
        self.get_logger().info(f"ready: {self.width}x{self.height} -> {self.pub.topic_name}")

    def _read_loop(self) -> None:
        try:
            for evs in self.it:
                if self._stop.is_set():
                    return
                if len(evs) == 0:
                    continue
                ev = metavision_to_events(evs)
                self.pub.publish(make_packet(ev, self.width, self.height, self.seq,
                                             self.params["frame_id"],
                                             self.get_clock().now().nanoseconds))
                self.seq += 1
            self._done = EndOfStream(f"{self.seq} packets published")
        except Exception as exc:
            self._done = DeviceError(f"reading the Prophesee source failed: "
                                     f"{type(exc).__name__}: {exc}")

    def _watch(self) -> None:
        if self._done is not None:
            raise self._done

    def shutdown_report(self) -> None:
        self._stop.set()
        self.get_logger().info(f"shutdown: packets={self.seq}")


def main(args=None) -> int:
    return run_node(MetavisionCameraNode, args, "edge_vlm_camera_metavision")


if __name__ == "__main__":
    sys.exit(main())
