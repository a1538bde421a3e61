"""Camera images as the captioner uses them: the one conversion of a ``sensor_msgs/Image``
(its fields, without rclpy) to an RGB array on the model grid, for the node and the offline
evaluation alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: channels of the accepted encodings
CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "8uc1": 1, "8uc3": 3}


@dataclass
class RawImage:
    """The fields of a ``sensor_msgs/Image`` that matter here (``data``: any buffer)."""

    stamp: int            # header stamp (ns)
    height: int
    width: int
    encoding: str
    step: int
    data: Any


def image_pixels(img: RawImage) -> np.ndarray:
    """rgb8/bgr8 -> (H, W, 3) uint8 RGB, mono8 -> (H, W) uint8. Raises ValueError."""
    enc = img.encoding.lower()
    ch = CHANNELS.get(enc)
    if ch is None:
        raise ValueError(f"unsupported image encoding '{img.encoding}' (rgb8, bgr8, mono8)")
    h, w, step = int(img.height), int(img.width), int(img.step)
    if h <= 0 or w <= 0 or step < w * ch:
        raise ValueError(f"invalid image geometry {w}x{h} step {step}")
    buf = np.frombuffer(memoryview(img.data).cast("B"), dtype=np.uint8)
    if buf.size < step * h:
        raise ValueError(f"image data has {buf.size} bytes, need {step * h}")
    arr = buf[: step * h].reshape(h, step)[:, : w * ch]
    if ch == 1:
        return arr.reshape(h, w).copy()
    arr = arr.reshape(h, w, 3)
    return (arr[:, :, ::-1] if enc == "bgr8" else arr).copy()


def resize_nearest(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize (numpy only); gray images become 3-channel."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    ys = (np.arange(height) * h) // height
    xs = (np.arange(width) * w) // width
    return img[ys][:, xs]


def model_rgb(img: RawImage, width: int, height: int) -> np.ndarray:
    """The image as the captioner's RGB input: (height, width, 3) uint8. Raises ValueError."""
    return resize_nearest(image_pixels(img), width, height)
