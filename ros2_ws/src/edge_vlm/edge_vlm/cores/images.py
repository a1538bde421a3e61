"""Camera images as the captioner uses them: the one conversion of a ``sensor_msgs/Image`` or
``sensor_msgs/CompressedImage`` to an RGB (or grey) uint8 array on the model grid, for the node
and the offline evaluation alike.

Decoding is rosbags-image's (the maintained pure-Python cv_bridge replacement, OpenCV
underneath): every encoding it knows -- rgb8, bgr8, rgba8, bgra8, rgb16..., mono8, mono16,
bayer_{rggb,bggr,gbrg,grbg}{8,16}, yuv422/uyvy, yuyv/yuv422_yuy2, the generic ``8UC3``,
``16UC1``, ``32FC1``... -- and JPEG/PNG CompressedImage (any ``format`` string; OpenCV detects
the codec from the payload). Its functions take rosbags messages; :class:`RawImage` is the
duck-typed shim that both rclpy and rosbags messages become (:func:`raw_image_of`), so there is
one path. What the library leaves to its caller is done here: row padding (``step``), sizes
checked before the buffer is read, single-channel generic images of more than 8 bits (depth
maps: ``16UC1``, ``32FC1``) stretched min..max to 0..255 (NaN/inf -> 0; named encodings such
as ``mono16`` keep the library's full-scale conversion), and one error type
(:class:`ImageDecodeError`, a ValueError naming the encoding) for anything a message gets
wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import cv2
import numpy as np
from rosbags.image import ImageError, compressed_image_to_cvimage, image_to_cvimage
from rosbags.image.image import Format, to_cvtype

SUPPORTED_HINT = ("rgb8, bgr8, rgba8, bgra8, rgb16, bgr16, mono8, mono16, bayer_*8/16, yuv422, "
                  "uyvy, yuyv, or a generic type such as 8UC3, 16UC1, 32FC1")


class ImageDecodeError(ValueError):
    """An image that cannot be converted (unknown encoding, bad geometry, corrupt payload)."""


@dataclass
class RawImage:
    """The fields of a ``sensor_msgs/Image`` or ``CompressedImage`` that matter here (``data``:
    any buffer, not copied). A compressed image has ``compressed`` set, its ``format`` string
    in ``encoding`` and no geometry (0)."""

    stamp: int            # header stamp (ns)
    height: int
    width: int
    encoding: str
    step: int
    data: Any
    is_bigendian: bool = False
    compressed: bool = False


def raw_image_of(msg: Any) -> RawImage:
    """A ``sensor_msgs/Image`` or ``CompressedImage`` as rclpy or rosbags gives it (duck-typed:
    a ``format`` field means compressed, as rosbags-image decides) -> :class:`RawImage`."""
    st = msg.header.stamp
    stamp = int(st.sec) * 1_000_000_000 + int(st.nanosec)
    if hasattr(msg, "format"):
        return RawImage(stamp, 0, 0, str(msg.format), 0, msg.data, compressed=True)
    return RawImage(stamp, int(msg.height), int(msg.width), str(msg.encoding), int(msg.step),
                    msg.data, bool(msg.is_bigendian))


def _bytes(data: Any) -> np.ndarray:
    """Any buffer (bytes, array.array, numpy) as a flat uint8 view."""
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


class _TypeInfo(NamedTuple):
    encoding: str         # as rosbags-image spells it
    fmt: Format
    dtype: np.dtype
    channels: int


def _typeinfo(encoding: str) -> _TypeInfo:
    """What rosbags-image knows of an encoding (named ones lower case, generic upper case)."""
    for enc in dict.fromkeys((encoding, encoding.lower(), encoding.upper())):
        try:
            _, fmt, typestr, nchan = to_cvtype(enc)
            return _TypeInfo(enc, fmt, np.dtype(typestr), int(nchan))
        except ImageError:
            continue
    raise ImageDecodeError(f"unsupported image encoding {encoding!r} (supported: "
                           f"{SUPPORTED_HINT})")


def _stretch(arr: np.ndarray) -> np.ndarray:
    """A depth-like single-channel image -> uint8, its finite min..max mapped to 0..255."""
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    out = np.zeros(a.shape, dtype=np.uint8)
    if finite.any():
        lo, hi = float(a[finite].min()), float(a[finite].max())
        if hi > lo:
            out[finite] = np.round((a[finite] - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return out


def _raw_pixels(img: RawImage) -> np.ndarray:
    enc, fmt, dtype, nchan = _typeinfo(img.encoding)
    h, w, step = int(img.height), int(img.width), int(img.step)
    row = w * nchan * dtype.itemsize
    if h <= 0 or w <= 0 or step < row:
        raise ImageDecodeError(f"{img.encoding!r} image: invalid geometry {w}x{h} step {step} "
                               f"(a row needs {row} bytes)")
    buf = _bytes(img.data)
    if buf.size < step * h:
        raise ImageDecodeError(f"{img.encoding!r} image {w}x{h}: data has {buf.size} bytes, "
                               f"need {step * h}")
    rows = np.ascontiguousarray(buf[: step * h].reshape(h, step)[:, :row])   # drop padding
    shim = replace(img, encoding=enc, data=rows)
    if fmt == Format.GRAY or (fmt == Format.GENERIC and nchan == 1):
        if fmt == Format.GENERIC and dtype != np.uint8:
            return _stretch(image_to_cvimage(shim))
        return image_to_cvimage(shim, "mono8")
    return image_to_cvimage(shim, "rgb8")


def _compressed_pixels(img: RawImage) -> np.ndarray:
    if "compresseddepth" in img.encoding.lower():
        raise ImageDecodeError(f"compressed image format {img.encoding!r}: compressedDepth is "
                               "not supported (jpeg, png)")
    buf = _bytes(img.data)
    if not buf.size:
        raise ImageDecodeError(f"compressed image (format {img.encoding!r}): empty payload")
    try:
        arr = compressed_image_to_cvimage(replace(img, data=buf))
    except AssertionError:        # rosbags-image asserts that OpenCV decoded something
        arr = None
    if arr is None:
        raise ImageDecodeError(f"compressed image (format {img.encoding!r}): payload of "
                               f"{buf.size} bytes is not a decodable image")
    return arr[:, :, ::-1] if arr.ndim == 3 else arr     # OpenCV decodes colour as BGR


def image_pixels(img: RawImage) -> np.ndarray:
    """Any supported image -> (H, W, 3) uint8 RGB, or (H, W) uint8 for single-channel encodings
    (and grey JPEG/PNG). Raises :class:`ImageDecodeError` (a ValueError) naming the encoding."""
    try:
        arr = _compressed_pixels(img) if img.compressed else _raw_pixels(img)
    except ImageDecodeError:
        raise
    except (ImageError, cv2.error, TypeError, ValueError) as exc:
        what = (f"compressed image (format {img.encoding!r})" if img.compressed
                else f"{img.encoding!r} image {img.width}x{img.height}")
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ImageDecodeError(f"{what}: cannot convert ({detail})") from None
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise ImageDecodeError(f"{img.encoding!r} image: {arr.shape[2]} channels after "
                               "conversion, expected 3")
    return np.array(arr, dtype=np.uint8, copy=True)     # never a view of the message's data


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
