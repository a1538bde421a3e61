"""The topics of the edge_vlm graph and their QoS: the one table.

The ROS nodes (``edge_vlm_ros.qos`` turns :class:`QosSpec` into rclpy profiles), the bag
player and recorder, and the bag writer (offered QoS in a bag's metadata) all read it.
Names are relative to the node namespace (absolute with the default empty namespace);
``docs/design.md`` lists the same table.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QosSpec:
    """History keep-last ``depth``, reliable or best effort, volatile durability."""

    reliable: bool
    depth: int


#: events, images, the change-mask image: best effort, keep last 100
SENSOR = QosSpec(reliable=False, depth=100)
#: token masks, route decisions, diagnostics: reliable, keep last 10
RELIABLE_10 = QosSpec(reliable=True, depth=10)
#: captions, caption text, compute cost, ground truth: reliable, keep last 50
RELIABLE_50 = QosSpec(reliable=True, depth=50)
#: the nodes' EventPacket subscriptions: best effort, keep last 1000 -- one second of the 1 ms
#: packets real drivers publish (metavision_driver's default); keep last 100 would be 100 ms of
#: slack, less than a node busy with a frame on a loaded machine
EVENTS_IN = QosSpec(reliable=False, depth=1000)


@dataclass(frozen=True)
class Topic:
    name: str          # relative to the node namespace
    msgtype: str       # ROS 2 type name (pkg/msg/Name)
    qos: QosSpec
    subscribe_qos: QosSpec | None = None    # the nodes' subscriptions, when not ``qos``


TOPICS: dict[str, Topic] = {
    "events": Topic("event_camera/events", "event_camera_msgs/msg/EventPacket", SENSOR,
                    EVENTS_IN),
    "image": Topic("camera/image_raw", "sensor_msgs/msg/Image", SENSOR),
    # image_transport's compressed stream of the image topic (the captioner subscribes to
    # ``<its resolved image topic>/compressed``, so a remapped image topic carries it along)
    "image_compressed": Topic("camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                              SENSOR),
    "ground_truth": Topic("edge_vlm/ground_truth", "std_msgs/msg/String", RELIABLE_50),
    "token_mask": Topic("edge_vlm/token_mask", "edge_vlm_msgs/msg/TokenMask", RELIABLE_10),
    "change_mask": Topic("edge_vlm/change_mask", "sensor_msgs/msg/Image", SENSOR),
    # link mode 'active' (docs/deploy.md): per frame, the events of its active patches only
    "link_events": Topic("edge_vlm/link_events", "event_camera_msgs/msg/EventPacket", SENSOR,
                         EVENTS_IN),
    "route": Topic("edge_vlm/route", "edge_vlm_msgs/msg/RouteDecision", RELIABLE_10),
    "caption": Topic("edge_vlm/caption", "edge_vlm_msgs/msg/Caption", RELIABLE_50),
    "caption_text": Topic("edge_vlm/caption_text", "std_msgs/msg/String", RELIABLE_50),
    "compute_cost": Topic("edge_vlm/compute_cost", "edge_vlm_msgs/msg/ComputeCost", RELIABLE_50),
}
#: diagnostics go to the absolute topic, as diagnostic_updater publishes them
DIAGNOSTICS = Topic("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", RELIABLE_10)

#: message types published best effort when a topic is not in the table
SENSOR_TYPES = frozenset({
    "event_camera_msgs/msg/EventPacket",
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "sensor_msgs/msg/PointCloud2",
})


def qos_of(topic: str, msgtype: str) -> QosSpec:
    """The QoS of an absolute ``topic`` (the table's, with the default empty namespace), else by
    type: sensor types best effort keep last 100, anything else reliable keep last 50."""
    for t in TOPICS.values():
        if topic == "/" + t.name:
            return t.qos
    return SENSOR if msgtype in SENSOR_TYPES else RELIABLE_50
