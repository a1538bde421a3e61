"""edge_vlm_camera_rgb: an OpenCV VideoCapture source -> sensor_msgs/Image rgb8 on
``camera/image_raw``.

Usage::

    edge_vlm_camera_rgb --ros-args -p device:=0                 # first V4L2 camera
    edge_vlm_camera_rgb --ros-args -p device:=/dev/video2 -p rate_hz:=15.0
    edge_vlm_camera_rgb --ros-args -p device:=clip.mp4 -p loop:=true
    edge_vlm_camera_rgb --ros-args -p device:=rtsp://host/stream

Publishes ``camera/image_raw`` (sensor QoS; absolute ``/camera/image_raw``
with no namespace) at ``rate_hz`` (0 = the source's frame rate), stamped with
the host clock at capture. A source that cannot be opened (or opens but
delivers no frame) is a one-line error and exit code 4; a live source that
stops delivering frames too; the end of a video file exits 0 unless ``loop``.
Parameters: ``edge_vlm.params.NODE_PARAMS['camera_rgb']``.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, NamedTuple

from rclpy.node import Node
from sensor_msgs.msg import Image

from edge_vlm_ros.conversions import numpy_to_image
from edge_vlm_ros.params import declare_from_spec
from edge_vlm_ros.qos import publisher
from edge_vlm_ros.run import DeviceError, EndOfStream, run_node

NAME = "camera_rgb"
MAX_READ_FAILURES = 30          # consecutive failed reads of a live source before giving up


class Capture(NamedTuple):
    """An opened OpenCV source."""

    cap: Any             # cv2.VideoCapture
    is_file: bool        # a video file (else a device or stream)


def open_capture(device: str) -> Capture:
    """``cv2.VideoCapture`` of ``device`` (index, path, file or URL) -> (capture, is_file).
    Raises DeviceError."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv-python-headless is a requirement
        raise DeviceError(f"OpenCV (cv2) is not installed: {exc}") from None
    dev = str(device).strip()
    if not dev:
        raise DeviceError("no video source given (parameter 'device')")
    src = int(dev) if dev.isdigit() else dev
    is_file = isinstance(src, str) and os.path.isfile(src)
    if isinstance(src, str) and "://" not in src and not os.path.exists(src):
        raise DeviceError(f"cannot open video source '{dev}': no such device or file")
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        cap.release()
        raise DeviceError(f"cannot open video source '{dev}' (OpenCV VideoCapture failed)")
    return Capture(cap, is_file)


class RgbCameraNode(Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = p = declare_from_spec(self, NAME, as_text=("device",))
        import cv2

        self.cv2 = cv2
        self.cap, self.is_file = open_capture(p["device"])
        ok, frame = self.cap.read()
        if not ok or frame is None:
            self.cap.release()
            raise DeviceError(f"video source '{p['device']}' opened but delivers no frames")
        self._first = frame
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.rate = float(p["rate_hz"]) or (fps if 0.0 < fps <= 1000.0 else 30.0)
        self.pub = publisher(self, Image, "image")
        self.frames = 0
        self.failures = 0
        self.loops = 0
        self.create_timer(1.0 / self.rate, self._tick)
        h, w = frame.shape[:2]
        kind = "file" if self.is_file else "live"
        self.get_logger().info(f"ready: '{p['device']}' ({kind}, {w}x{h}, source {fps:.1f} fps) "
                               f"-> {self.pub.topic_name} at {self.rate:.1f} Hz")

    def _read(self):
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        ok, frame = self.cap.read()
        if ok and frame is not None:
            self.failures = 0
            return frame
        if self.is_file:
            if self.params["loop"] and self.frames > 0:
                self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
                self.loops += 1
                ok, frame = self.cap.read()
                if ok and frame is not None:
                    return frame
            raise EndOfStream(f"{self.params['device']}: {self.frames} frames published")
        self.failures += 1
        if self.failures >= MAX_READ_FAILURES:
            raise DeviceError(f"video source '{self.params['device']}' stopped delivering frames "
                              f"({self.failures} failed reads)")
        return None

    def _tick(self) -> None:
        frame = self._read()
        if frame is None:
            return
        cv2 = self.cv2
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
        else:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        w, h = int(self.params["image_width"]), int(self.params["image_height"])
        if w or h:
            fh, fw = frame.shape[:2]
            w = w or max(1, round(fw * h / fh))
            h = h or max(1, round(fh * w / fw))
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        stamp = self.get_clock().now().nanoseconds or time.time_ns()
        self.pub.publish(numpy_to_image(frame, "rgb8", stamp, self.params["frame_id"]))
        self.frames += 1

    def shutdown_report(self) -> None:
        try:
            self.cap.release()
        except Exception:
            pass
        self.get_logger().info(f"shutdown: frames={self.frames} loops={self.loops}")


def main(args=None) -> int:
    return run_node(RgbCameraNode, args, "edge_vlm_camera_rgb")


if __name__ == "__main__":
    sys.exit(main())
