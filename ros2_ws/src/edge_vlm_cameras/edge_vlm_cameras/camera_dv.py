"""edge_vlm_camera_dv: an iniVation camera (dv-processing) -> event_camera_msgs/EventPacket
``mono``.

Usage::

    edge_vlm_camera_dv              # first camera found (DVXplorer, DAVIS, DVS128...)
    edge_vlm_camera_dv --ros-args -p serial_number:=DXA00093
    edge_vlm_camera_dv --ros-args -p aedat4_file:=rec.aedat4 -p rate:=1.0   # replay a recording

Publishes ``event_camera/events`` (sensor QoS; absolute ``/event_camera/events``
with no namespace): one EventPacket per ``packet_period_ms`` of sensor time,
``encoding`` = ``mono``, ``seq`` increasing by one per packet from 0,
``time_base`` = sensor time of the packet's first event in ns (dv timestamps
are microseconds -> ns = us * 1000; every event t = time_base + its 32-bit
offset), ``header.stamp`` = host time at publication, ``header.frame_id`` =
``frame_id``. No camera connected (or a recording that cannot be read): one
clear line and exit code 4. The end of a recording exits 0.

dv-processing's camera objects are read in a worker thread (the executor only
watches it), so a slow subscriber never stalls the USB reader.
Parameters: ``edge_vlm.params.NODE_PARAMS['camera_dv']``.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, NamedTuple

import numpy as np
from event_camera_msgs.msg import EventPacket
from rclpy.node import Node

from edge_vlm.events import make_events
from edge_vlm_cameras.packets import make_packet, split_packets
from edge_vlm_ros.params import declare_from_spec
from edge_vlm_ros.qos import publisher
from edge_vlm_ros.run import DeviceError, EndOfStream, run_node

NAME = "camera_dv"


class EventSource(NamedTuple):
    """An opened dv-processing event source."""

    source: Any          # dv.io.camera camera or dv.io.MonoCameraRecording
    description: str     # "camera NAME" or "recording PATH (NAME)"
    live: bool           # a camera (else a recording)


def open_source(serial_number: str = "", aedat4_file: str = "") -> EventSource:
    """A dv-processing event source (a camera, or a recording to replay). Raises DeviceError."""
    try:
        import dv_processing as dv
    except ImportError as exc:
        raise DeviceError(f"dv-processing is not installed ({exc}): pip install "
                          "dv-processing") from None
    if aedat4_file:
        if not os.path.isfile(aedat4_file):
            raise DeviceError(f"AEDAT4 recording not found: {aedat4_file}")
        try:
            rec = dv.io.MonoCameraRecording(aedat4_file)
        except Exception as exc:
            raise DeviceError(f"cannot read AEDAT4 recording {aedat4_file}: {exc}") from None
        if not rec.isEventStreamAvailable():
            raise DeviceError(f"AEDAT4 recording {aedat4_file} has no event stream")
        return EventSource(rec, f"recording {aedat4_file} ({rec.getCameraName()})", False)
    try:
        found = list(dv.io.camera.discover())
    except Exception as exc:
        raise DeviceError(f"cannot list iniVation cameras: {exc}") from None
    if not found:
        raise DeviceError("no iniVation camera connected (dv.io.camera.discover() found none); "
                          "connect one, check USB permissions (udev rules), or replay a file "
                          "with -p aedat4_file:=...")
    try:
        cam = dv.io.camera.open(serial_number) if serial_number else dv.io.camera.open()
    except Exception as exc:
        names = ", ".join(str(getattr(d, "serialNumber", d)) for d in found)
        raise DeviceError(f"cannot open iniVation camera {serial_number or '(first)'}: {exc} "
                          f"(found: {names})") from None
    if not cam.isEventStreamAvailable():
        raise DeviceError(f"camera {cam.getCameraName()} has no event stream")
    return EventSource(cam, f"camera {cam.getCameraName()}", True)


def dv_to_events(arr: np.ndarray) -> np.ndarray:
    """dv EventStore.numpy() (timestamp us, x, y, polarity) -> edge_vlm EVENT_DTYPE (t in ns)."""
    return make_events(arr["timestamp"].astype(np.int64) * 1000, arr["x"].astype(np.uint16),
                       arr["y"].astype(np.uint16), arr["polarity"].astype(np.uint8))


class DvCameraNode(Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = p = declare_from_spec(self, NAME)
        self.source, self.description, self.live = open_source(p["serial_number"],
                                                               p["aedat4_file"])
        self.width, self.height = (int(v) for v in self.source.getEventResolution())
        self.pub = publisher(self, EventPacket, "events")
        self.period_ns = int(round(float(p["packet_period_ms"]) * 1e6))
        self.seq = 0
        self.events_out = 0
        self._done: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name="dv_reader", daemon=True)
        self._thread.start()
        self.create_timer(0.1, self._watch)
        self.get_logger().info(f"ready: {self.description} {self.width}x{self.height} -> "
                               f"{self.pub.topic_name} "
                               f"(mono, {p['packet_period_ms']} ms packets)")

    def _publish(self, events: np.ndarray) -> None:
        for part in split_packets(events, self.period_ns):
            stamp = self.get_clock().now().nanoseconds
            self.pub.publish(make_packet(part, self.width, self.height, self.seq,
                                         self.params["frame_id"], stamp))
            self.seq += 1
            self.events_out += len(part)

    def _read_loop(self) -> None:
        rate = float(self.params["rate"])
        wall0 = t0 = None
        try:
            while not self._stop.is_set():
                batch = self.source.getNextEventBatch()
                if batch is None:
                    if not self.source.isRunning():
                        if self.live:
                            raise DeviceError(f"{self.description} disconnected")
                        raise EndOfStream(f"{self.description}: {self.seq} packets published")
                    time.sleep(0.0005)
                    continue
                arr = batch.numpy()
                if len(arr) == 0:
                    continue
                ev = dv_to_events(arr)
                if not self.live and rate > 0:           # replay at the recording's pace
                    if t0 is None:
                        wall0, t0 = time.monotonic(), int(ev["t"][0])
                    ahead = (int(ev["t"][-1]) - t0) / 1e9 / rate - (time.monotonic() - wall0)
                    if ahead > 0:
                        self._stop.wait(ahead)
                self._publish(ev)
        except (EndOfStream, DeviceError) as exc:  # handed to the executor thread by _watch
            self._done = exc
        except Exception as exc:
            self._done = DeviceError(f"reading {self.description} failed: "
                                     f"{type(exc).__name__}: {exc}")

    def _watch(self) -> None:
        if self._done is not None:
            raise self._done

    def shutdown_report(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.get_logger().info(f"shutdown: packets={self.seq} events={self.events_out}")


def main(args=None) -> int:
    return run_node(DvCameraNode, args, "edge_vlm_camera_dv")


if __name__ == "__main__":
    sys.exit(main())
