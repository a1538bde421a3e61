"""Camera images through rosbags-image (issue 18, deliver 10): ``edge_vlm.cores.images`` turns
every ``sensor_msgs/Image`` encoding a camera driver publishes and JPEG/PNG
``sensor_msgs/CompressedImage`` -- as rclpy or rosbags gives them -- into the captioner's RGB
(or grey) array, and rejects an unknown encoding or a corrupt payload with an
:class:`ImageDecodeError` naming it; the captioner core fuses a CompressedImage
(``rgb_frames``) and counts a corrupt one (``images_rejected``) without raising."""
from __future__ import annotations

import array

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image

from edge_vlm.cores.images import ImageDecodeError, image_pixels, model_rgb, raw_image_of
from edge_vlm.evaluation.sources import IMAGE_TYPES
from edge_vlm.topics import TOPICS

TS = get_typestore(Stores.LATEST)
STAMP = 1_700_000_000_123_456_789
H, W = 6, 8
COLOUR = (200, 50, 10)                   # R, G, B of the flat images


def pattern() -> np.ndarray:
    """(H, W, 3) uint8 RGB test pattern, every channel different."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 30 + 5, y * 40 + 3, (x + y) * 13 + 1], axis=2).astype(np.uint8)


def flat() -> np.ndarray:
    return np.broadcast_to(np.array(COLOUR, np.uint8), (H, W, 3)).copy()


def _bayer(rgb: np.ndarray, order: str) -> np.ndarray:
    """Mosaic of an RGB image; ``order``: the 2x2 pattern, e.g. 'rggb'."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for i, c in enumerate(order):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(c)]
    return out


def _yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """BT.601 video-range 4:2:2 of an RGB image (OpenCV's YUV2RGB_UYVY/YUY2 inverse)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u2, v2 = u[:, 0::2], v[:, 0::2]
    planes = {"u": u2, "v": v2, "y0": y[:, 0::2], "y1": y[:, 1::2]}
    keys = ("u", "y0", "v", "y1") if order == "uyvy" else ("y0", "u", "y1", "v")
    packed = np.stack([planes[k] for k in keys], axis=2).reshape(rgb.shape[0], -1)
    return np.clip(np.round(packed), 0, 255).astype(np.uint8)


#: encoding -> (its data made from an RGB image, expected output, tolerance); a callable
#: expected value gets the input image
def _cases():
    p, f = pattern(), flat()
    grey = p[..., 0]
    return {
        "rgb8": (p, p, 0),
        "bgr8": (p[..., ::-1], p, 0),
        "rgba8": (np.dstack([p, np.full((H, W), 7, np.uint8)]), p, 0),
        "bgra8": (np.dstack([p[..., ::-1], np.full((H, W), 7, np.uint8)]), p, 0),
        "rgb16": (p.astype(np.uint16) * 257, p, 0),
        "bgr16": (p[..., ::-1].astype(np.uint16) * 257, p, 0),
        "mono8": (grey, grey, 0),
        "mono16": (grey.astype(np.uint16) * 257, grey, 0),
        "8UC1": (grey, grey, 0),
        "8UC3": (p, p, 0),
        "bayer_rggb8": (_bayer(f, "rggb"), f, 1),
        "bayer_bggr8": (_bayer(f, "bggr"), f, 1),
        "bayer_gbrg8": (_bayer(f, "gbrg"), f, 1),
        "bayer_grbg8": (_bayer(f, "grbg"), f, 1),
        "bayer_rggb16": (_bayer(f, "rggb").astype(np.uint16) * 257, f, 1),
        "yuv422": (_yuv422(f, "uyvy"), f, 3),
        "uyvy": (_yuv422(f, "uyvy"), f, 3),
        "yuyv": (_yuv422(f, "yuyv"), f, 3),
        "yuv422_yuy2": (_yuv422(f, "yuyv"), f, 3),
    }


def rclpy_image(encoding: str, arr: np.ndarray, step: int | None = None,
                bigendian: bool = False) -> Image:
    """A W x H sensor_msgs/Image of ``arr``'s bytes, rows padded to ``step``."""
    arr = np.ascontiguousarray(arr)
    row = arr.nbytes // arr.shape[0]
    step = step or row
    buf = np.zeros((arr.shape[0], step), np.uint8)
    buf[:, :row] = np.frombuffer(arr.tobytes(), np.uint8).reshape(arr.shape[0], row)
    if step > row:
        buf[:, row:] = 0xAB                     # padding the conversion must skip
    m = Image()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(STAMP, 1_000_000_000)
    m.height, m.width, m.encoding, m.step = H, W, encoding, step
    m.is_bigendian = int(bigendian)
    m.data = array.array("B", buf.tobytes())
    return m


def rosbags_msg(msg: Image | CompressedImage):
    """The same message as rosbags deserialises it (its own classes, numpy data)."""
    header = TS.types["std_msgs/msg/Header"](
        stamp=TS.types["builtin_interfaces/msg/Time"](sec=msg.header.stamp.sec,
                                                       nanosec=msg.header.stamp.nanosec),
        frame_id="cam")
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if isinstance(msg, CompressedImage):
        return TS.types["sensor_msgs/msg/CompressedImage"](header=header, format=msg.format,
                                                           data=data)
    return TS.types["sensor_msgs/msg/Image"](header=header, height=msg.height, width=msg.width,
                                             encoding=msg.encoding,
                                             is_bigendian=msg.is_bigendian, step=msg.step,
                                             data=data)


def compressed(arr_rgb: np.ndarray, ext: str = ".png", fmt: str = "png") -> CompressedImage:
    bgr = arr_rgb[..., ::-1] if arr_rgb.ndim == 3 else arr_rgb
    ok, enc = cv2.imencode(ext, np.ascontiguousarray(bgr))
    assert ok
    m = CompressedImage()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(STAMP, 1_000_000_000)
    m.format = fmt
    m.data = array.array("B", enc.tobytes())
    return m


def both(msg):
    """The rclpy message and its rosbags twin, each through the one conversion."""
    return [image_pixels(raw_image_of(m)) for m in (msg, rosbags_msg(msg))]


# ------------------------------------------------------------------------------- raw images
@pytest.mark.parametrize("encoding", sorted(_cases()))
def test_each_encoding_round_trips_from_rclpy_and_rosbags(encoding):
    data, want, tol = _cases()[encoding]
    for got in both(rclpy_image(encoding, data)):
        assert got.dtype == np.uint8 and got.shape == want.shape, (got.shape, want.shape)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= tol, f"{encoding}: max difference {diff.max()}"


def test_stamp_and_row_padding_and_big_endian():
    p = pattern()
    raw = raw_image_of(rclpy_image("rgb8", p, step=W * 3 + 5))
    assert raw.stamp == STAMP and not raw.compressed
    np.testing.assert_array_equal(image_pixels(raw), p)
    big = rclpy_image("mono16", (p[..., 1].astype(">u2") * 257), bigendian=True)
    for got in both(big):
        np.testing.assert_array_equal(got, p[..., 1])


def test_depth_images_are_stretched_to_8_bit():
    depth = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 100 + 400      # mm
    for got in both(rclpy_image("16UC1", depth)):
        assert got.min() == 0 and got.max() == 255
        assert (np.diff(got.ravel().astype(int)) >= 0).all(), "order of depths kept"
    metres = depth.astype(np.float32) / 1000
    metres[0, 0] = np.nan
    metres[0, 1] = np.inf
    for got in both(rclpy_image("32FC1", metres)):
        assert got[0, 0] == 0 and got[0, 1] == 0, "NaN / inf -> 0"
        assert got[0, 2] == 0 and got.max() == 255


def test_the_model_input_is_rgb_on_the_grid():
    out = model_rgb(raw_image_of(rclpy_image("mono8", pattern()[..., 0])), 16, 12)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 2]).all()
    out = model_rgb(raw_image_of(rclpy_image("bayer_rggb8", _bayer(flat(), "rggb"))), 4, 4)
    assert np.abs(out.astype(int) - np.array(COLOUR)).max() <= 1


def test_result_does_not_alias_the_message_buffer():
    msg = rclpy_image("rgb8", pattern())
    raw = raw_image_of(msg)
    got = image_pixels(raw)
    got[:] = 0
    assert bytes(msg.data) == pattern().tobytes()


# ------------------------------------------------------------------------------- compressed
@pytest.mark.parametrize("ext,fmt", [(".png", "png"), (".jpg", "jpeg"),
                                     (".jpg", "rgb8; jpeg compressed bgr8"),
                                     (".png", "bgr8; png compressed bgr8"), (".png", "")])
def test_compressed_png_and_jpeg(ext, fmt):
    src = pattern() if ext == ".png" else flat()
    msg = compressed(src, ext, fmt)
    raw = raw_image_of(msg)
    assert raw.compressed and raw.stamp == STAMP and raw.encoding == fmt
    for got in both(msg):
        assert got.shape == (H, W, 3)
        tol = 0 if ext == ".png" else 4
        assert np.abs(got.astype(int) - src.astype(int)).max() <= tol


def test_compressed_grey_png_stays_grey():
    grey = pattern()[..., 2]
    for got in both(compressed(grey)):
        np.testing.assert_array_equal(got, grey)


@pytest.mark.parametrize("payload,why", [
    (b"", "empty payload"),
    (bytes(range(256)) * 4, "not a decodable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a decodable image"),
])
def test_corrupt_compressed_payload_is_rejected(payload, why):
    msg = CompressedImage()
    msg.format = "jpeg"
    msg.data = array.array("B", payload)
    for m in (msg, rosbags_msg(msg)):
        with pytest.raises(ImageDecodeError, match=f"format 'jpeg'.*{why}"):
            image_pixels(raw_image_of(m))


def test_truncated_png_is_rejected():
    data = bytes(compressed(pattern()).data)
    msg = CompressedImage()
    msg.format = "png"
    msg.data = array.array("B", data[:30])
    with pytest.raises(ImageDecodeError, match="format 'png'"):
        image_pixels(raw_image_of(msg))


def test_compressed_depth_is_rejected_by_name():
    msg = compressed(pattern())
    msg.format = "16UC1; compressedDepth png"
    with pytest.raises(ImageDecodeError, match="compressedDepth is not supported"):
        image_pixels(raw_image_of(msg))


# ------------------------------------------------------------------------------- rejections
@pytest.mark.parametrize("encoding,arr,match", [
    ("foo42", pattern(), r"unsupported image encoding 'foo42'"),
    ("8UC4", np.zeros((H, W, 4), np.uint8), r"'8UC4' image 8x6: cannot convert"),
])
def test_unknown_or_unconvertible_encoding_is_rejected(encoding, arr, match):
    msg = rclpy_image(encoding, arr)
    for m in (msg, rosbags_msg(msg)):
        with pytest.raises(ImageDecodeError, match=match):
            image_pixels(raw_image_of(m))
    assert issubclass(ImageDecodeError, ValueError)    # what the captioner core catches


def test_short_data_and_bad_geometry_are_rejected():
    msg = rclpy_image("rgb8", pattern())
    msg.data = array.array("B", bytes(10))
    with pytest.raises(ImageDecodeError, match=r"'rgb8' image 8x6: data has 10 bytes, need 144"):
        image_pixels(raw_image_of(msg))
    msg = rclpy_image("rgb16", pattern().astype(np.uint16))
    msg.step = W * 3                                    # a 16-bit row needs W * 6 bytes
    with pytest.raises(ImageDecodeError, match="invalid geometry 8x6 step 24"):
        image_pixels(raw_image_of(msg))
    msg.height = 0
    with pytest.raises(ImageDecodeError, match="invalid geometry"):
        image_pixels(raw_image_of(msg))


# ------------------------------------------------------------------------------- plumbing
def test_compressed_topic_is_the_image_topics_compressed_stream():
    assert TOPICS["image_compressed"].name == TOPICS["image"].name + "/compressed"
    assert TOPICS["image_compressed"].msgtype == "sensor_msgs/msg/CompressedImage"
    assert TOPICS["image_compressed"].qos == TOPICS["image"].qos
    assert set(IMAGE_TYPES) == {"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"}


def test_bag_with_only_the_compressed_stream_feeds_its_images(tmp_path):
    """Offline evaluation of a bag recorded with image_transport's compressed topic only: the
    stream takes ``<image topic>/compressed`` and yields images the one conversion decodes."""
    from rosbags.rosbag2 import Writer

    from edge_vlm.evaluation.sources import bag_stream
    from edge_vlm.io.bag_reader import typestore

    ts = typestore()
    ev_type, img_type = TOPICS["events"].msgtype, TOPICS["image_compressed"].msgtype
    topic = "/" + TOPICS["image_compressed"].name
    with Writer(tmp_path / "bag", version=9) as w:
        ev_conn = w.add_connection("/" + TOPICS["events"].name, ev_type, typestore=ts)
        img_conn = w.add_connection(topic, img_type, typestore=ts)
        for i, msg in enumerate((compressed(pattern()), compressed(flat(), ".jpg", "jpeg"))):
            t = STAMP + i * 10_000_000
            header = TS.types["std_msgs/msg/Header"](
                stamp=TS.types["builtin_interfaces/msg/Time"](sec=t // 10 ** 9,
                                                               nanosec=t % 10 ** 9),
                frame_id="cam")
            pkt = ts.types[ev_type](header=header, height=128, width=128, seq=i, time_base=t,
                                    encoding="mono", is_bigendian=False,
                                    events=np.zeros(0, np.uint8))
            w.write(ev_conn, t, ts.serialize_cdr(pkt, ev_type))
            img = ts.types[img_type](header=header, format=msg.format,
                                     data=np.frombuffer(bytes(msg.data), np.uint8))
            w.write(img_conn, t, ts.serialize_cdr(img, img_type))
    stream = bag_stream(tmp_path / "bag", {}, want_images=True)
    assert stream.info["image_topic"] == topic
    images = [it for it in stream.items if hasattr(it, "compressed")]
    assert [im.stamp for im in images] == [STAMP, STAMP + 10_000_000]
    np.testing.assert_array_equal(image_pixels(images[0]), pattern())
    assert np.abs(image_pixels(images[1]).astype(int) - flat().astype(int)).max() <= 4


# ------------------------------------------------------------------------------- the captioner
def test_captioner_core_fuses_a_compressed_image_and_counts_a_corrupt_one(tmp_path):
    """vlm_captioner's scheduler + core (what the node and the offline evaluation run): a JPEG
    CompressedImage stamped at a frame's end is fused (rgb_frames), a corrupt one is rejected
    and counted, the frame still captioned from events."""
    from edge_vlm.cores.captioner import CaptionerCore
    from edge_vlm.cores.schedule import CaptionScheduler
    from edge_vlm.stream.frames import Frame
    from edge_vlm.stream.intake import FrameInput
    from test_nodes import K0, P, blob_events, make_test_checkpoint
    from test_nodes import H as EH
    from test_nodes import W as EW

    ckpt = make_test_checkpoint(str(tmp_path / "rigged.pt"))
    core = CaptionerCore({"checkpoint": ckpt, "mask_source": "local", "use_rgb": "auto",
                          "num_threads": 1})
    sched = CaptionScheduler(core.params, core.num_tokens, P)
    bad = CompressedImage()
    bad.format = "jpeg"
    bad.data = array.array("B", b"\xff\xd8\xff" + bytes(100))
    outs = []
    for k, img in ((K0, compressed(flat(), ".jpg", "jpeg")), (K0 + 1, bad)):
        img.header.stamp.sec, img.header.stamp.nanosec = divmod((k + 1) * P, 1_000_000_000)
        assert sched.add_image(raw_image_of(rosbags_msg(img) if k == K0 else img))
        sched.add_frames([Frame(k, k * P, (k + 1) * P, blob_events(k), EW, EH)],
                         [FrameInput([k * P])], 0.0)
        ready = sched.next_ready(0.0)
        assert ready is not None and ready.image is not None
        outs.append(core.caption(ready, 0.0))
    assert outs[0].rgb and outs[0].image_error is None
    assert not outs[1].rgb and "format 'jpeg'" in outs[1].image_error
    assert outs[1].result.text.strip()
    assert core.stats.rgb_frames == 1 and core.stats.images_rejected == 1


def test_captioner_node_subscribes_to_the_compressed_stream_of_its_image_topic(tmp_path):
    """The vlm_captioner node alone (own ROS domain): its image topic remapped to /t/img/image,
    a JPEG on /t/img/image/compressed is fused into its frame's caption, a corrupt one is
    rejected (logged with its format) and that frame captioned from events."""
    import rclpy

    import rosenv
    from edge_vlm.topics import SENSOR
    from edge_vlm_msgs.msg import Caption
    from edge_vlm_ros.lifeline import free_domain_id
    from edge_vlm_ros.qos import RELIABLE_50, profile
    from test_nodes import K0, P, Harness, NodeProc, make_test_checkpoint

    domain = free_domain_id()
    env = rosenv.node_test_env(domain, "edge_vlm_msgs", "event_camera_msgs", "edge_vlm_ros",
                               "vlm_captioner")
    ckpt = make_test_checkpoint(str(tmp_path / "rigged.pt"))
    rclpy.init(domain_id=domain)
    harness, node = Harness(), None
    try:
        node = NodeProc("vlm_captioner", tmp_path,
                        {"checkpoint": ckpt, "mask_source": "local", "use_rgb": "auto"},
                        {"event_camera/events": "/t/img/events",
                         "camera/image_raw": "/t/img/image"}, env)
        caps = harness.collect(Caption, "/edge_vlm/caption", RELIABLE_50)
        pub = harness.publisher(CompressedImage, "/t/img/image/compressed", profile(SENSOR))
        harness.send_packet("/t/img/events", events=None, payload=b"", time_base=(K0 - 10) * P)
        harness.wait_subscribers("/t/img/events", node, timeout=90.0)
        harness.wait_subscribers("/t/img/image/compressed", node)
        bad = CompressedImage()
        bad.format = "jpeg"
        bad.data = array.array("B", bytes(64))

        def before(k):
            img = {K0 + 1: compressed(flat(), ".jpg", "jpeg"), K0 + 4: bad}.get(k)
            if img is not None:
                img.header.stamp.sec, img.header.stamp.nanosec = divmod((k + 1) * P, 10 ** 9)
                pub.publish(img)
                harness.spin_for(0.1)

        harness.send_frames("/t/img/events", K0, K0 + 6, between=before)
        harness.spin_until(lambda: {K0 + 1, K0 + 2, K0 + 4} <= {c.frame_index for c in caps},
                           30.0, "captions")
        # an image stamped at frame k's end also fits frame k-1 (within one period), no other
        modes = {c.frame_index: c.input_mode for c in caps}
        assert modes[K0 + 1] == "rgb+events", modes
        assert modes[K0 + 2] == modes[K0 + 4] == "events", modes
    finally:
        rc = node.stop() if node is not None else None
        harness.node.destroy_node()
        rclpy.try_shutdown()
    assert rc == 0, node.output()[-3000:]
    assert "image ignored: compressed image (format 'jpeg')" in node.output()
