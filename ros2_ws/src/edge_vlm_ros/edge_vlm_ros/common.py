"""Shared helpers of the edge_vlm ROS nodes (thin adapters around ``edge_vlm.pipeline``).

* parameters: :func:`declare_from_spec` declares a node's parameters from
  ``edge_vlm.params.NODE_PARAMS`` (the single source of truth) and
  :func:`add_param_validation` rejects invalid runtime changes with a reason;
* QoS profiles of ``docs/design.md`` (:data:`QOS_SENSOR`, :data:`QOS_RELIABLE`, ...);
* :class:`EventInput`: EventPacket -> events; never raises (bad packets are
  rejected, logged with a throttle and counted);
* :class:`FrameInputs`: which packets (stamps, decode time) fed which frame;
* stamps (ns <-> builtin_interfaces/Time), sensor_msgs/Image <-> numpy
  (rgb8/bgr8/mono8, numpy only), message -> plain dict (for the recorder);
* :func:`run_node`: rclpy init/spin/shutdown with clean errors and exit codes;
* diagnostics: every :class:`FrameNode` publishes ``diagnostic_msgs/DiagnosticArray``
  on ``/diagnostics`` once per second (see :meth:`FrameNode.publish_diagnostics`).
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from edge_vlm.events import EVENT_DTYPE, EventDecodeError
from edge_vlm.params import NODE_PARAMS, resolve

# --------------------------------------------------------------------------- QoS
#: events / images / change-mask image: best effort, keep last 100 (design.md).
QOS_SENSOR = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST,
                        depth=100, durability=DurabilityPolicy.VOLATILE)
#: token masks and route decisions: reliable, keep last 10.
QOS_RELIABLE = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                          depth=10, durability=DurabilityPolicy.VOLATILE)
#: captions, caption text, compute cost, ground truth: reliable, keep last 50.
QOS_RELIABLE_50 = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                             depth=50, durability=DurabilityPolicy.VOLATILE)

#: Topic names relative to the node namespace (absolute with the default empty namespace).
TOPICS = {
    "events": "event_camera/events",
    "image": "camera/image_raw",
    "ground_truth": "edge_vlm/ground_truth",
    "token_mask": "edge_vlm/token_mask",
    "change_mask": "edge_vlm/change_mask",
    "route": "edge_vlm/route",
    "caption": "edge_vlm/caption",
    "caption_text": "edge_vlm/caption_text",
    "compute_cost": "edge_vlm/compute_cost",
}

#: When no EventPacket arrived for this long (wall time), nodes close the open
#: frame (end of a bag / camera stopped). All nodes use the same rule, so the
#: last frame still gets the same stamp everywhere.
IDLE_FLUSH_S = 1.0

#: Diagnostics: publish period (s), absolute topic (as diagnostic_updater does) and
#: how long without any EventPacket makes a node report WARN "no input".
DIAGNOSTICS_PERIOD_S = 1.0
DIAGNOSTICS_TOPIC = "/diagnostics"
NO_INPUT_WARN_S = 5.0


class ParameterError(ValueError):
    """An invalid parameter value (reported as a clean error, exit code 2)."""


class DeviceError(RuntimeError):
    """A camera / video source that cannot be opened or stopped working (clean error, exit code 4)."""


class EndOfStream(Exception):
    """A finite source (video or recording file) is over: the node exits with code 0."""


# -------------------------------------------------------------------- parameters
def _descriptor(spec) -> ParameterDescriptor:
    text = spec.description
    if spec.choices:
        text += f" Choices: {', '.join(map(str, spec.choices))}."
    d = ParameterDescriptor(description=text, read_only=bool(spec.read_only))
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(map(str, spec.choices))
    kind = type(spec.default)
    if (spec.min_value is not None or spec.max_value is not None) and kind in (int, float):
        if kind is int:
            lo = int(spec.min_value) if spec.min_value is not None else -(2 ** 63)
            hi = int(spec.max_value) if spec.max_value is not None else 2 ** 63 - 1
            d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=0)]
        else:
            lo = float(spec.min_value) if spec.min_value is not None else -sys.float_info.max
            hi = float(spec.max_value) if spec.max_value is not None else sys.float_info.max
            d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    return d


def declare_from_spec(node, node_name: str, as_text: tuple[str, ...] = ()) -> dict[str, Any]:
    """Declare every parameter of ``NODE_PARAMS[node_name]`` on ``node``; return the validated values.

    Raises :class:`ParameterError` with a readable message for a value of the
    wrong type, out of range or not among the choices (from the command line
    or a params file). String parameters named in ``as_text`` also accept a
    number on the command line (``-p device:=0`` is the text "0").
    """
    values = {}
    for spec in NODE_PARAMS[node_name]:
        try:
            desc = _descriptor(spec)
            if spec.name in as_text:
                desc.dynamic_typing = True
            p = node.declare_parameter(spec.name, spec.default, desc)
            if spec.name in as_text and isinstance(p.value, (int, float)) and not isinstance(p.value, bool):
                values[spec.name] = str(p.value)
                continue
        except Exception as exc:  # InvalidParameterTypeException / InvalidParameterValueException
            raise ParameterError(f"invalid value for parameter '{spec.name}' of {node_name}: "
                                 f"{type(exc).__name__}: {exc}") from None
        values[spec.name] = p.value
    try:
        return resolve(node_name, values)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None


def add_param_validation(node, node_name: str,
                         on_change: Callable[[dict[str, Any]], None] | None = None) -> Callable:
    """Register an on-set-parameters callback validating changes against the spec.

    Invalid values are rejected with the spec's reason; valid ones are passed
    to ``on_change({name: value})`` (called before rclpy stores them; effects
    apply from the next frame). Returns the registered callback.
    """
    specs = {s.name: s for s in NODE_PARAMS[node_name]}

    def callback(params) -> SetParametersResult:
        changed = {}
        for p in params:
            spec = specs.get(p.name)
            if spec is None:
                continue  # parameters not in the spec (e.g. use_sim_time) are rclpy's business
            if spec.read_only:
                return SetParametersResult(successful=False, reason=f"parameter '{p.name}' is read-only")
            try:
                changed[p.name] = spec.validate(p.value)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        if changed and on_change is not None:
            try:
                on_change(changed)
            except Exception as exc:  # never let a callback kill the node
                return SetParametersResult(successful=False, reason=f"{type(exc).__name__}: {exc}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)
    return callback


# ------------------------------------------------------------------------ stamps
def ns_to_time(ns: int) -> Time:
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def time_to_ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def period_ns_of(params: dict) -> int:
    return int(round(float(params["frame_period_ms"]) * 1e6))


# ------------------------------------------------------------------------ images
def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB for rgb8/bgr8, (H, W) for mono8. Raises ValueError."""
    enc = msg.encoding.lower()
    ch = {"rgb8": 3, "bgr8": 3, "mono8": 1, "8uc1": 1, "8uc3": 3}.get(enc)
    if ch is None:
        raise ValueError(f"unsupported image encoding '{msg.encoding}' (rgb8, bgr8, mono8)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or step < w * ch:
        raise ValueError(f"invalid image geometry {w}x{h} step {step}")
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if buf.size < step * h:
        raise ValueError(f"image data has {buf.size} bytes, need {step * h}")
    arr = buf[: step * h].reshape(h, step)[:, : w * ch]
    if ch == 1:
        return arr.reshape(h, w).copy()
    arr = arr.reshape(h, w, 3)
    return (arr[:, :, ::-1] if enc == "bgr8" else arr).copy()


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


# ------------------------------------------------------------------------ events
class EventInput:
    """Decode EventPacket messages; never raises.

    One decoder per encoding (``edge_vlm.codecs.make_decoder``; stateful
    decoders such as evt3 keep their state across packets). A packet with an
    unknown encoding, a zero sensor size or a payload the decoder rejects is
    dropped: ``rejected`` is incremented and a throttled warning
    ``rejected packet seq=N (encoding): reason`` is logged.

    Sequence gaps: ``missing_packets`` counts the *missing messages* (seq 0..9
    then 20..29 -> 10), ``seq_gaps`` the gap *occurrences* (-> 1; a seq going
    backwards, e.g. a restarted driver, is an occurrence with no missing
    message). Diagnostics report ``missing_packets`` as ``seq_gaps``.
    """

    def __init__(self, logger, throttle_s: float = 2.0):
        self.logger = logger
        self.throttle_s = float(throttle_s)
        self.decoders: dict[str, Any] = {}
        self.packets = 0
        self.events = 0
        self.rejected = 0
        self.seq_gaps = 0
        self.missing_packets = 0
        self.unsorted = 0
        self.decode_s = 0.0
        self.last_seq: int | None = None
        self.frame_id = ""
        self.width = 0
        self.height = 0
        self._last_warn: dict[str, tuple[float, int]] = {}

    def counters(self) -> dict[str, Any]:
        return {"packets": self.packets, "events": self.events, "rejected": self.rejected,
                "seq_gaps": self.seq_gaps, "missing_packets": self.missing_packets}

    def _reject(self, msg, reason: str) -> None:
        self.rejected += 1
        key = "".join(c for c in f"{getattr(msg, 'encoding', '')}:{reason}" if not c.isdigit())[:80]
        now = time.monotonic()
        last, suppressed = self._last_warn.get(key, (-1e18, 0))
        if now - last >= self.throttle_s:
            more = f" ({suppressed} similar suppressed)" if suppressed else ""
            try:
                self.logger.warning(f"rejected packet seq={getattr(msg, 'seq', '?')} "
                                    f"(encoding '{getattr(msg, 'encoding', '?')}'): {reason}{more}")
            except Exception:
                pass
            self._last_warn[key] = (now, 0)
        else:
            self._last_warn[key] = (last, suppressed + 1)

    def _decoder(self, encoding: str):
        dec = self.decoders.get(encoding)
        if dec is None:
            from edge_vlm.io.codecs import make_decoder
            dec = make_decoder(encoding)
            self.decoders[encoding] = dec
        return dec

    def decode(self, msg) -> np.ndarray | None:
        """Events (time ordered, EVENT_DTYPE) of ``msg``, or None if the packet is rejected."""
        self.packets += 1
        try:
            seq = int(msg.seq)
            if self.last_seq is not None and seq != self.last_seq + 1:
                self.seq_gaps += 1
                if seq > self.last_seq + 1:
                    self.missing_packets += seq - self.last_seq - 1
            self.last_seq = seq
            width, height = int(msg.width), int(msg.height)
            if width <= 0 or height <= 0:
                self._reject(msg, f"invalid sensor size {width}x{height}")
                return None
            t0 = time.perf_counter()
            try:
                dec = self._decoder(str(msg.encoding))
            except Exception as exc:
                self._reject(msg, f"unsupported encoding: {exc}")
                return None
            try:
                ev = dec.decode(msg.events, width, height, int(msg.time_base))
            except EventDecodeError as exc:
                self._reject(msg, str(exc))
                return None
            finally:
                self.decode_s += time.perf_counter() - t0
            ev = np.asarray(ev)
            if ev.dtype != EVENT_DTYPE:
                ev = ev.astype(EVENT_DTYPE)
            if len(ev) and (int(ev["x"].max()) >= width or int(ev["y"].max()) >= height):
                self._reject(msg, f"event coordinates outside sensor {width}x{height}")
                return None
            if len(ev) > 1 and bool((np.diff(ev["t"]) < 0).any()):
                self.unsorted += 1
                ev = ev[np.argsort(ev["t"], kind="stable")]
            self.events += len(ev)
            self.width, self.height = width, height
            self.frame_id = str(msg.header.frame_id)
            return ev
        except Exception as exc:  # anything else a broken packet can provoke: reject, never raise
            self._reject(msg, f"{type(exc).__name__}: {exc}")
            return None

    def feed(self, msg, binner) -> list:
        """Hand ``msg`` to ``binner`` (:class:`edge_vlm.binner.FrameBinner`); return the frames it closes.

        Sequence gaps and counters as :meth:`decode`. The binner buffers packets until a
        frame may close and decodes them in one pass; the packets it rejects (at once, or
        when their batch is decoded) are counted and logged here.
        """
        self.packets += 1
        try:
            seq = int(msg.seq)
            if self.last_seq is not None and seq != self.last_seq + 1:
                self.seq_gaps += 1
                if seq > self.last_seq + 1:
                    self.missing_packets += seq - self.last_seq - 1
            self.last_seq = seq
            frames, rejected = self._binned(binner, lambda: binner.push(
                str(msg.encoding), msg.events, int(msg.width), int(msg.height), int(msg.time_base), tag=msg))
            if not any(tag is msg for tag in rejected):
                self.width, self.height = int(msg.width), int(msg.height)
                self.frame_id = str(msg.header.frame_id)
            return frames
        except Exception as exc:  # anything else a broken packet can provoke: reject, never raise
            self._reject(msg, f"{type(exc).__name__}: {exc}")
            return []

    def flush(self, binner) -> list:
        """``binner.flush()`` (end of stream / idle) with the accounting of :meth:`feed`."""
        return self._binned(binner, binner.flush)[0]

    def _binned(self, binner, call) -> tuple[list, list]:
        busy, events, unsorted = binner.busy_s, binner.events, binner.unsorted
        try:
            frames = call()
        finally:
            self.decode_s += binner.busy_s - busy
            self.events += binner.events - events
            self.unsorted += binner.unsorted - unsorted
            rejected = binner.pop_rejections()
            for tag, reason in rejected:
                self._reject(tag, reason)
        return frames, [tag for tag, _ in rejected]


class FrameInputs:
    """Per frame index: stamps of the EventPackets that fed it and their decode time."""

    MAX_SPAN = 64

    def __init__(self):
        self.stamps: dict[int, list[int]] = {}
        self.decode_ms: dict[int, float] = {}

    def add(self, events: np.ndarray, period: int, stamp_ns: int, decode_ms: float) -> None:
        if len(events) == 0:
            return
        self.add_frames(int(events["t"][0]) // period, int(events["t"][-1]) // period, stamp_ns, decode_ms)

    def add_frames(self, k0: int, k1: int, stamp_ns: int, decode_ms: float) -> None:
        """A packet with events in frames ``k0..k1`` (stamp, decode time shared by its frames)."""
        k0 = max(k0, k1 - self.MAX_SPAN)
        share = decode_ms / (k1 - k0 + 1)
        for k in range(k0, k1 + 1):
            lst = self.stamps.setdefault(k, [])
            if not lst or lst[-1] != stamp_ns:
                lst.append(stamp_ns)
            self.decode_ms[k] = self.decode_ms.get(k, 0.0) + share

    def pop(self, k: int) -> tuple[list[int], float]:
        stamps = self.stamps.pop(k, [])
        ms = self.decode_ms.pop(k, 0.0)
        for old in [j for j in self.stamps if j < k - self.MAX_SPAN]:
            self.stamps.pop(old, None)
            self.decode_ms.pop(old, None)
        return stamps, ms


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


# ------------------------------------------------------------------- node runner
def run_node(factory: Callable[[], Any], args=None, name: str = "node") -> int:
    """Init rclpy, build the node with ``factory()``, spin until SIGINT/SIGTERM; return an exit code.

    Clean one-line errors (no traceback wall) for invalid parameters (exit 2),
    a missing/corrupt checkpoint (exit 3) and a camera that cannot be opened
    or a missing camera SDK (:class:`DeviceError`, exit 4). :class:`EndOfStream`
    (a file source is over) ends the node normally (exit 0).
    """
    import signal

    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    # Own signal handling: SIGINT/SIGTERM end spin() while the context is still
    # valid, so the shutdown counters still reach the log (and /rosout).
    def _stop(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    code = 0
    try:
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except EndOfStream as exc:
        print(f"[{name}] end of stream{': ' + str(exc) if str(exc) else ''}", file=sys.stderr, flush=True)
    except ParameterError as exc:
        print(f"[{name}] error: invalid parameter: {exc}", file=sys.stderr, flush=True)
        code = 2
    except DeviceError as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr, flush=True)
        code = 4
    except Exception as exc:
        from edge_vlm.model.checkpoint import CheckpointError
        if isinstance(exc, CheckpointError):
            print(f"[{name}] error: {exc}", file=sys.stderr, flush=True)
            code = 3
        else:
            raise
    finally:
        if node is not None:
            try:
                node.shutdown_report()
            except Exception as exc:  # pragma: no cover - reporting must not mask the exit
                print(f"[{name}] shutdown report failed: {exc}", file=sys.stderr, flush=True)
            try:
                node.destroy_node()
            except Exception:
                pass
        rclpy.try_shutdown()
    return code


# ----------------------------------------------------------------- base node
class FrameNode:
    """Mixin for the event-driven nodes (combine with ``rclpy.node.Node``).

    :meth:`setup_frames` subscribes to the EventPacket topic, decodes and bins
    the stream with :class:`edge_vlm.binner.FrameBinner` (frames on the absolute
    grid, histograms on the model grid, batched per frame) and calls
    ``self.on_frames(frames)`` with the closed frames, oldest first. After
    :data:`IDLE_FLUSH_S` without packets the open frame is closed (end of a bag).
    Counters are logged by :meth:`shutdown_report`.
    """

    def setup_frames(self, params: dict, track_inputs: bool = False) -> None:
        from edge_vlm.stream.binner import FrameBinner

        self.period = period_ns_of(params)
        self.binner = FrameBinner(self.period, int(params["model_width"]), int(params["model_height"]),
                                  track_packets=track_inputs)
        self.clock = self.binner.clock            # frame index, late_events, resets
        self.input = EventInput(self.get_logger())
        self.inputs = FrameInputs() if track_inputs else None
        self.frames_out = 0
        self.dropped_frames = 0          # frames dropped by backpressure (vlm_captioner)
        self.processing_errors = 0
        self._last_packet = None
        from event_camera_msgs.msg import EventPacket
        self.create_subscription(EventPacket, TOPICS["events"], self._on_packet, QOS_SENSOR)
        self.create_timer(0.25, self._idle_check)
        self.setup_diagnostics()

    def _on_packet(self, msg) -> None:
        self._last_packet = self._last_input = time.monotonic()
        t0 = self.input.decode_s
        frames = self.input.feed(msg, self.binner)     # never raises; rejects are counted and logged
        self._take(frames, (self.input.decode_s - t0) * 1e3)

    def _take(self, frames, decode_ms: float) -> None:
        """Record which packets fed which frames (their decode time shared), then emit ``frames``."""
        if self.inputs is not None:
            fed = self.binner.pop_fed()
            for m, k0, k1 in fed:
                self.inputs.add_frames(k0, k1, time_to_ns(m.header.stamp), decode_ms / len(fed))
        if frames:
            self._emit(frames)

    def _idle_check(self) -> None:
        if self._last_packet is not None and time.monotonic() - self._last_packet > IDLE_FLUSH_S:
            self._last_packet = None
            t0 = self.input.decode_s
            try:
                frames = self.input.flush(self.binner)
            except Exception as exc:  # keep running whatever the stream does
                self.get_logger().warning(f"frame binning error at idle flush: {exc}")
                return
            self._take(frames, (self.input.decode_s - t0) * 1e3)

    def _emit(self, frames) -> None:
        self.frames_out += len(frames)
        try:
            self.on_frames(frames)
        except Exception as exc:
            self.processing_errors += 1
            self.get_logger().error(f"processing frames {[f.index for f in frames]} failed: "
                                    f"{type(exc).__name__}: {exc}")

    def counters(self) -> dict:
        c = self.input.counters()
        c.update(frames=self.frames_out, late_events=self.clock.late_events, clock_resets=self.clock.resets,
                 dropped=self.dropped_frames, processing_errors=self.processing_errors)
        return c

    # ------------------------------------------------------------ diagnostics
    def setup_diagnostics(self, period_s: float = DIAGNOSTICS_PERIOD_S) -> None:
        """Publish one DiagnosticStatus ``edge_vlm/<node name>`` on /diagnostics every ``period_s``."""
        from diagnostic_msgs.msg import DiagnosticArray

        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, QOS_RELIABLE)
        self._diag_lock = threading.Lock()
        self._diag_latency: list[float] = []    # processing latency (ms) of the frames of this period
        self._diag_active: list[float] = []     # active-token fraction of the frames of this period
        self._diag_prev = dict(self.counters())
        self._diag_t = self._diag_start = time.monotonic()
        self._last_input: float | None = None
        self.create_timer(float(period_s), self.publish_diagnostics)

    def record_frame(self, latency_ms: float, active_fraction: float | None = None) -> None:
        """Account one processed frame for the diagnostics of the current period (thread safe)."""
        with self._diag_lock:
            self._diag_latency.append(float(latency_ms))
            if active_fraction is not None:
                self._diag_active.append(float(active_fraction))

    def diagnostic_values(self) -> dict[str, Any]:
        """Node-specific key/values added to the status (override)."""
        return {}

    def diagnostic_status(self):
        """The DiagnosticStatus of the period since the last call (also resets the period)."""
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

        now = time.monotonic()
        dt = max(1e-6, now - self._diag_t)
        with self._diag_lock:
            lat, self._diag_latency = self._diag_latency, []
            act, self._diag_active = self._diag_active, []
        c = dict(self.counters())
        prev, self._diag_prev, self._diag_t = self._diag_prev, c, now

        def delta(key):
            return int(c.get(key, 0)) - int(prev.get(key, 0))

        values: dict[str, Any] = {
            "packet_rate_hz": round(delta("packets") / dt, 2),
            "event_rate_hz": round(delta("events") / dt, 1),
            "packets": c["packets"], "events": c["events"], "rejected": c["rejected"],
            "seq_gaps": c["missing_packets"], "seq_gap_events": c["seq_gaps"],
            "dropped": c["dropped"], "late_events": c["late_events"], "frames": c["frames"],
            "clock_resets": c["clock_resets"], "processing_errors": c["processing_errors"],
            "frames_in_period": len(lat),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 3) if lat else "n/a",
            "latency_p95_ms": round(float(np.percentile(lat, 95)), 3) if lat else "n/a",
        }
        if act:
            values["active_token_fraction"] = round(float(np.mean(act)), 4)
        since = now - (self._last_input if self._last_input is not None else self._diag_start)
        values["last_input_age_s"] = round(since, 2) if self._last_input is not None else "never"
        values.update(self.diagnostic_values())

        level, reasons = DiagnosticStatus.OK, []
        if delta("processing_errors") > 0:
            level = DiagnosticStatus.ERROR
            reasons.append(f"{delta('processing_errors')} processing errors")
        warn = []
        for key, text in (("rejected", "packets rejected"), ("dropped", "frames dropped (backpressure)"),
                          ("missing_packets", "packets missing (seq gaps)"), ("late_events", "late events")):
            if delta(key) > 0:
                warn.append(f"{delta(key)} {text}")
        if since > NO_INPUT_WARN_S:
            warn.append(f"no input for {since:.0f} s")
        if warn and level < DiagnosticStatus.WARN:
            level = DiagnosticStatus.WARN
        reasons += warn
        st = DiagnosticStatus()
        st.level = level
        st.name = f"edge_vlm/{self.get_name()}"
        st.hardware_id = self.input.frame_id or "event_camera"
        st.message = "; ".join(reasons) if reasons else \
            f"OK: {values['packet_rate_hz']} packets/s, {len(lat) / dt:.1f} frames/s"
        st.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
        return st

    def publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        try:
            arr = DiagnosticArray()
            arr.header.stamp = self.get_clock().now().to_msg()
            arr.status = [self.diagnostic_status()]
            self._diag_pub.publish(arr)
        except Exception as exc:  # diagnostics must never take the node down
            self.get_logger().warning(f"diagnostics failed: {type(exc).__name__}: {exc}",
                                      throttle_duration_sec=10.0)

    def shutdown_report(self) -> None:
        text = " ".join(f"{k}={v}" for k, v in self.counters().items())
        try:
            self.get_logger().info(f"shutdown: {text}")
        except Exception:
            print(f"[{self.get_name()}] shutdown: {text}", file=sys.stderr, flush=True)
