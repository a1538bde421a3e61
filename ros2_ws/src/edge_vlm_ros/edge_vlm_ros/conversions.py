"""Conversions between ROS messages and plain values (no cv_bridge).

* stamps: integer ns <-> ``builtin_interfaces/Time``;
* ``sensor_msgs/Image`` / ``CompressedImage`` -> numpy arrays (decoding: the core's one image
  conversion, ``edge_vlm.cores.images``, rosbags-image underneath: every encoding a camera
  driver publishes, JPEG/PNG); numpy (rgb8/bgr8/mono8) -> ``sensor_msgs/Image``;
* message -> JSON-friendly value (for the recorder);
* message type name (``pkg/msg/Type``) -> its Python class.
"""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from edge_vlm.cores.images import RawImage, image_pixels, raw_image_of


# ------------------------------------------------------------------------ stamps
def ns_to_time(ns: int) -> Time:
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def time_to_ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


# ------------------------------------------------------------------------ images
def raw_image(msg: Image | CompressedImage) -> RawImage:
    """The fields of a sensor_msgs/Image or CompressedImage the core's image conversion
    (``edge_vlm.cores.images``) reads; the pixel data is not copied."""
    return raw_image_of(msg)


def image_to_numpy(msg: Image | CompressedImage) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> (H, W, 3) uint8 RGB, (H, W) uint8 for
    single-channel encodings. Raises ValueError (``edge_vlm.cores.images.ImageDecodeError``)."""
    return image_pixels(raw_image(msg))


def numpy_to_image(arr: np.ndarray, encoding: str | None = None, stamp_ns: int = 0,
                   frame_id: str = "") -> Image:
    """(H, W) uint8 -> mono8, (H, W, 3) uint8 -> rgb8 (or bgr8 if asked)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim == 2:
        encoding = encoding or "mono8"
        ch = 1
    elif arr.ndim == 3 and arr.shape[2] == 3:
        encoding = encoding or "rgb8"
        ch = 3
        if encoding == "bgr8":
            arr = np.ascontiguousarray(arr[:, :, ::-1])
    else:
        raise ValueError(f"cannot make an image of shape {arr.shape}")
    msg = Image()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * ch
    msg.data = arr.tobytes()
    return msg


# ---------------------------------------------------------------- msg -> dict
def msg_to_dict(msg) -> Any:
    """ROS message -> JSON-friendly value; builtin_interfaces/Time becomes integer ns."""
    if isinstance(msg, Time):
        return time_to_ns(msg)
    if hasattr(msg, "get_fields_and_field_types"):
        return {name: msg_to_dict(getattr(msg, name)) for name in msg.get_fields_and_field_types()}
    if isinstance(msg, (bytes, bytearray)):
        return list(msg)
    if isinstance(msg, np.ndarray):
        return msg.tolist()
    if isinstance(msg, (list, tuple)) or type(msg).__name__ == "array":
        return [msg_to_dict(v) for v in msg]
    if isinstance(msg, (np.floating, np.integer)):
        return msg.item()
    return msg


# ---------------------------------------------------------------- type names
def message_class(msgtype: str) -> type:
    """Python class of ``pkg/msg/Type`` (``importlib.import_module('pkg.msg').Type``).

    Raises ValueError for a malformed name, RuntimeError when the type cannot be imported.
    """
    parts = msgtype.split("/")
    if len(parts) == 2:                      # ROS 1 style "pkg/Type"
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ValueError(f"bad message type name {msgtype!r}")
    pkg, sub, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{sub}"), name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            f"cannot import message type {msgtype} ({exc}); is the workspace sourced "
            f"(. ros2_ws/install/local_setup.bash or . env.sh)?") from exc
