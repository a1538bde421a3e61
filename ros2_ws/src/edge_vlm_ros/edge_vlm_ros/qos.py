"""rclpy QoS profiles of the one topic table (``edge_vlm.topics``), and publishers and
subscriptions on its topics.

:func:`profile` turns a :class:`~edge_vlm.topics.QosSpec` into a ``QoSProfile`` (keep last
``depth``, reliable or best effort, volatile); :func:`publisher` / :func:`subscription` create
an endpoint on a topic of :data:`~edge_vlm.topics.TOPICS` (its node-relative name, its QoS).
"""
from __future__ import annotations

import time
from functools import lru_cache
from typing import Any, Callable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from edge_vlm import topics
from edge_vlm.topics import DIAGNOSTICS, TOPICS, QosSpec


@lru_cache(maxsize=None)
def profile(spec: QosSpec) -> QoSProfile:
    """The rclpy profile of ``spec`` (one shared object per spec)."""
    reliability = ReliabilityPolicy.RELIABLE if spec.reliable else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(reliability=reliability, history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
                      durability=DurabilityPolicy.VOLATILE)


#: events, images, the change-mask image: best effort, keep last 100
SENSOR = profile(topics.SENSOR)
#: token masks, route decisions, diagnostics: reliable, keep last 10
RELIABLE_10 = profile(topics.RELIABLE_10)
#: captions, caption text, compute cost, ground truth: reliable, keep last 50
RELIABLE_50 = profile(topics.RELIABLE_50)
#: /diagnostics
DIAGNOSTICS_QOS = profile(DIAGNOSTICS.qos)


def topic_qos(key: str) -> QoSProfile:
    """The profile of topic ``key`` of :data:`~edge_vlm.topics.TOPICS`."""
    return profile(TOPICS[key].qos)


def publisher(node, msg_type: type, key: str):
    """A publisher of ``msg_type`` on topic ``key`` of the table (relative name, table QoS)."""
    return node.create_publisher(msg_type, TOPICS[key].name, topic_qos(key))


#: most messages :func:`drain` hands over per call
DRAIN_MAX = 64


def drain(sub, handle: Callable[[Any], None], limit: int = DRAIN_MAX) -> int:
    """Hand up to ``limit`` messages already queued on subscription ``sub`` to ``handle``, in
    order; returns how many. rclpy's executor takes one message per wait, and a wait costs
    0.3-1 ms of Python (every timer, service and QoS event of the node in the wait set): at
    1,000 EventPackets per second that is the whole budget. Taking what has arrived in the
    same callback amortizes the wait when packets come faster than the executor cycles;
    bounded, so timers and the other callbacks still run."""
    n = 0
    while n < limit:
        try:
            with sub.handle:
                got = sub.handle.take_message(sub.msg_type, sub.raw)
        except Exception:            # destroyed (shutdown)
            break
        if got is None:
            break
        handle(got[0])
        n += 1
    return n


#: :func:`gather`: longest time one callback keeps taking messages (s)
GATHER_WINDOW_S = 0.010
#: :func:`gather`: it stops once nothing arrived for this long (s)
GATHER_IDLE_S = 0.003
#: :func:`gather`: the pause between two looks at an empty queue (s; the GIL is released)
GATHER_POLL_S = 0.001


def gather(sub, handle: Callable[[Any], None], window_s: float = GATHER_WINDOW_S,
           idle_s: float = GATHER_IDLE_S, poll_s: float = GATHER_POLL_S) -> int:
    """:func:`drain`, then keep taking the messages that arrive on ``sub`` (looking every
    ``poll_s``, the GIL released meanwhile) until none came for ``idle_s`` or ``window_s`` has
    passed since the call; returns how many were handed to ``handle``. For a stream faster
    than the executor's cycle (1 ms EventPackets): :func:`drain` alone finds one packet queued
    per wait when the process keeps up, so every packet pays a whole executor cycle (Python
    that walks every entity of the wait set: four nodes' in the single-process graph);
    gathering pays one cycle per window. The other callbacks of the executor wait at most
    ``window_s`` (+ what ``handle`` takes)."""
    start = last = time.monotonic()
    n = drain(sub, handle)
    while True:
        now = time.monotonic()
        if now - start >= window_s or now - last >= idle_s:
            return n
        time.sleep(poll_s)
        got = drain(sub, handle)
        if got:
            n += got
            last = time.monotonic()


def subscription_qos(key: str) -> QoSProfile:
    """The profile the nodes subscribe to topic ``key`` with (the table's ``subscribe_qos``,
    e.g. a deeper queue for the events, else its ``qos``)."""
    t = TOPICS[key]
    return profile(t.subscribe_qos or t.qos)


def subscription(node, msg_type: type, key: str, callback: Callable[[Any], None],
                 event_callbacks=None):
    """A subscription of ``msg_type`` to topic ``key`` of the table (relative name, the table's
    subscription QoS; ``event_callbacks``: rclpy's ``SubscriptionEventCallbacks``)."""
    return node.create_subscription(msg_type, TOPICS[key].name, callback, subscription_qos(key),
                                    event_callbacks=event_callbacks)
