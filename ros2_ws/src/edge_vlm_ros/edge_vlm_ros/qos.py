"""rclpy QoS profiles of the one topic table (``edge_vlm.topics``), and publishers and
subscriptions on its topics.

:func:`profile` turns a :class:`~edge_vlm.topics.QosSpec` into a ``QoSProfile`` (keep last
``depth``, reliable or best effort, volatile); :func:`publisher` / :func:`subscription` create
an endpoint on a topic of :data:`~edge_vlm.topics.TOPICS` (its node-relative name, its QoS).
"""
from __future__ import annotations

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


def subscription_qos(key: str) -> QoSProfile:
    """The profile the nodes subscribe to topic ``key`` with (the table's ``subscribe_qos``,
    e.g. a deeper queue for the events, else its ``qos``)."""
    t = TOPICS[key]
    return profile(t.subscribe_qos or t.qos)


def subscription(node, msg_type: type, key: str, callback: Callable[[Any], None]):
    """A subscription of ``msg_type`` to topic ``key`` of the table (relative name, the table's
    subscription QoS)."""
    return node.create_subscription(msg_type, TOPICS[key].name, callback, subscription_qos(key))
