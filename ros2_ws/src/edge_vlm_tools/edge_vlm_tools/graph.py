"""edge_vlm_graph: the nodes of ``graph.yaml`` in ONE process with ONE executor (single-process
mode of the graph).

    edge_vlm_graph [--graph GRAPH.yaml] [--namespace NS] [--input events=TOPIC]
                   [--input image=TOPIC] [--params YAML] [-p [node.]name=value ...]
                   [--ros-args ...]

Started by the launch file with ``single_process:=true`` (``ros2 launch edge_vlm_bringup
edge_vlm.launch.py single_process:=true``, ``edge_vlm_run --single-process``,
``edge_vlm_demo --single-process``). The graph is read as for one process per node
(``edge_vlm.cores.graph.load_graph``); each node is its package's node class (the classes of
``sttf_perception``, ``anc_router``, ``vlm_captioner``, unchanged) with the name, namespace,
parameters and remappings of the graph, given to rcl as node-specific rules: ``ros2 node
list``, ``ros2 param set /anc_router compute_budget 0.2`` and the topics are those of the
multi-process graph. What one process saves:

* torch, rclpy and the message libraries are loaded once, and the model once
  (``edge_vlm.inference.factory.shared_model``: the cores run the same checkpoint read-only);
* every EventPacket is received once: the frame nodes' own event subscriptions are replaced by
  one subscription per event topic, held by the hidden node ``_edge_vlm_graph_events``, that
  takes each packet, those queued behind it and those arriving within a few ms
  (:class:`FanOut`, ``edge_vlm_ros.qos.gather``: one executor cycle per window, not per 1 ms
  packet). It is a raw subscription: the packets are read by
  ``edge_vlm_ros.intake.parse_event_packet`` (no rclpy message objects built). It exists
  only once every node is built, so a player waiting for one subscriber
  (``--wait-for TOPIC=1``) starts when the whole graph is ready;
* every EventPacket is decoded and binned once: the frame nodes of one event topic and one
  frame grid share one ``edge_vlm_ros.frame_node.FrameSource`` (:func:`share_sources`) and
  get the same closed frames in graph order (perception, router, captioner); their intake
  counters are the shared source's (the values each node would have counted on the same
  packets);
* what one node feeds another (TokenMask, RouteDecision) is handed over in the process
  (:func:`hand_over`; still published for the rest of the ROS graph): the captioner has a
  frame's mask and route as the frame closes.

Exit codes as for one node (``edge_vlm_ros.run``): 2 for a bad graph or parameter, 3 for a
missing checkpoint; one line ``edge_vlm_graph: error: ...``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import yaml
from anc_router.node import RouterNode
from event_camera_msgs.msg import EventPacket
from rclpy.node import Node
from sttf_perception.node import PerceptionNode
from vlm_captioner.node import CaptionerNode

from edge_vlm.cores.graph import NodeSpec, load_graph, overrides_from_yaml, parse_overrides
from edge_vlm.topics import TOPICS
from edge_vlm_ros.intake import parse_event_packet
from edge_vlm_ros.qos import gather, subscription_qos
from edge_vlm_ros.run import EXIT_PARAMETER, run_nodes

PROG = "edge_vlm_graph"
#: node class of each package (it names its node after the package)
NODE_CLASSES: dict[str, type] = {"sttf_perception": PerceptionNode, "anc_router": RouterNode,
                                 "vlm_captioner": CaptionerNode}
#: the node-relative event topic of the frame nodes
EVENTS = TOPICS["events"].name
#: the hidden node (``ros2 node list --all``) that receives the events for the frame nodes
EVENTS_NODE = "_edge_vlm_graph_events"
#: message types handed from node to node inside the process (:func:`hand_over`)
IN_PROCESS_TYPES = "edge_vlm_msgs."
#: where a node's own event subscription goes while the graph is built (never published)
PLACEHOLDER = "/_edge_vlm_graph/{name}/unused_events"


@dataclass
class GraphProcess:
    """The single-process graph: node specs, rcl arguments, where each node's events come
    from."""

    specs: list[NodeSpec]
    ros_args: list[str]
    event_topics: dict[str, str]      # node name -> the event topic it subscribes (absolute)
    params_file: str


def _absolute(topic: str, namespace: str) -> str:
    """``topic`` as rcl resolves it for a node in ``namespace`` (absolute names unchanged)."""
    if topic.startswith("/"):
        return topic
    return "/" + "/".join(p.strip("/") for p in (namespace, topic) if p and p.strip("/"))


def graph_process(specs: list[NodeSpec], params_dir: str) -> GraphProcess:
    """rcl arguments that give each node class its graph name, namespace, parameters (a
    parameter file keyed by node) and remappings (node-specific rules); the node's event topic
    is remapped to a placeholder (:data:`PLACEHOLDER`) until :func:`share_events` subscribes
    the real one."""
    seen = set()
    for s in specs:
        if s.package not in NODE_CLASSES:
            raise ValueError(f"node {s.name}: package '{s.package}' cannot run in one process "
                             f"(known: {', '.join(NODE_CLASSES)})")
        if s.package in seen:
            raise ValueError(f"two nodes of package '{s.package}': not in one process")
        seen.add(s.package)
    args = ["--ros-args"]
    params, topics = {}, {}
    for s in specs:
        if s.name != s.package:           # each node class names itself after its package
            args += ["-r", f"{s.package}:__node:={s.name}"]
        if s.namespace:
            args += ["-r", f"{s.name}:__ns:={s.namespace}"]
        remaps = dict(s.remappings)
        topics[s.name] = _absolute(remaps.pop(EVENTS, EVENTS), s.namespace)
        remaps[EVENTS] = PLACEHOLDER.format(name=s.name)
        for frm, to in remaps.items():
            args += ["-r", f"{s.name}:{frm}:={to}"]
        fqn = (s.namespace.rstrip("/") if s.namespace else "") + "/" + s.name
        params[fqn] = {"ros__parameters": dict(s.parameters)}
    path = os.path.join(params_dir, "graph_params.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(params, fh)
    return GraphProcess(specs, args + ["--params-file", path], topics, path)


class FanOut:
    """The callback of a shared event subscription: each packet to every frame source in
    order, then the packets queued behind it and those arriving within a short window
    (``edge_vlm_ros.qos.gather``: one executor cycle per window, not per 1 ms packet). The
    subscription is raw: serialized packets are read by ``edge_vlm_ros.intake.
    parse_event_packet`` (one that does not deserialize is counted in ``unreadable``,
    logged, and skipped)."""

    def __init__(self, handlers: tuple, logger=None):
        self.handlers = handlers
        self.logger = logger
        self.sub = None
        self.unreadable = 0

    def _hand(self, msg) -> None:
        if type(msg) is bytes:
            try:
                msg = parse_event_packet(msg)
            except Exception as exc:
                self.unreadable += 1
                if self.logger is not None:
                    self.logger.warning(f"unreadable EventPacket ({self.unreadable} so far): "
                                        f"{type(exc).__name__}: {exc}",
                                        throttle_duration_sec=2.0)
                return
        for handle in self.handlers:      # each never raises (rejections counted and logged)
            handle(msg)

    def __call__(self, msg) -> None:
        self._hand(msg)
        gather(self.sub, self._hand)


def share_sources(nodes: list) -> list:
    """Let frame nodes of one frame grid (``FrameSource.key``: period, model size) share the
    source of the first of them (``FrameNode.share_source``): each packet is decoded and binned
    once, and the frames it closes go to those nodes in order. Returns the owners, whose
    ``_on_packet`` takes the packets (nodes of another grid keep their own source)."""
    owners: dict[tuple, Any] = {}
    for node in nodes:
        owner = owners.setdefault(node.source.key, node)
        node.share_source(owner.source)
    return list(owners.values())


def share_events(nodes: list, topics: dict[str, str]) -> tuple[Node, dict[str, list[str]]]:
    """Replace each frame node's own EventPacket subscription by one subscription per event
    topic, held by a hidden helper node (:data:`EVENTS_NODE`: the frame nodes' own rules remap
    their event topic); the nodes of a topic share one frame source (:func:`share_sources`:
    each packet decoded once), whose packets :class:`FanOut` hands over. Returns the helper and
    topic -> node names."""
    by_topic: dict[str, list] = {}
    names: dict[str, list[str]] = {}
    for node in nodes:
        name = node.get_name()
        for sub in list(node.subscriptions):
            if sub.msg_type is EventPacket and sub.topic_name == PLACEHOLDER.format(name=name):
                by_topic.setdefault(topics[name], []).append(node)
                names.setdefault(topics[name], []).append(name)
                node.destroy_subscription(sub)
                node._events = None
    # no parameter services: fewer entities in the executor's wait set (one per window)
    helper = Node(EVENTS_NODE, start_parameter_services=False)
    for topic, frame_nodes in by_topic.items():
        fanout = FanOut(tuple(n._on_packet for n in share_sources(frame_nodes)),
                        helper.get_logger())
        fanout.sub = helper.create_subscription(EventPacket, topic, fanout,
                                                subscription_qos("events"), raw=True)
    return helper, names


def _tee(publish: Callable[[Any], None], receivers: list) -> Callable[[Any], None]:
    def publish_and_hand_over(msg) -> None:
        publish(msg)
        for node, callback in receivers:
            try:
                callback(msg)
            except Exception as exc:   # the receiver's error, not the publisher's
                node.get_logger().error(f"in-process {type(msg).__name__} failed: "
                                        f"{type(exc).__name__}: {exc}")
    return publish_and_hand_over


def hand_over(nodes: list) -> list[str]:
    """Messages one node of the process feeds another (TokenMask, RouteDecision: the types of
    edge_vlm_msgs) go straight from the publisher's ``publish`` to the subscriber's callback,
    which drops its subscription: no serialization, no wait behind queued EventPackets, so the
    captioner has a frame's mask and route when the frame closes. The publisher still publishes
    for the rest of the ROS graph. Returns 'publisher -> subscriber: topic' lines."""
    pubs: dict[tuple, list] = {}
    for node in nodes:
        for pub in node.publishers:
            if pub.msg_type.__module__.startswith(IN_PROCESS_TYPES):
                pubs.setdefault((pub.topic_name, pub.msg_type), []).append((node, pub))
    receivers: dict[int, list] = {}
    links = []
    for node in nodes:
        for sub in list(node.subscriptions):
            senders = pubs.get((sub.topic_name, sub.msg_type), [])
            for sender, pub in senders:
                receivers.setdefault(id(pub), [pub]).append((node, sub.callback))
                links.append(f"{sender.get_name()} -> {node.get_name()}: {sub.topic_name}")
            if senders:
                node.destroy_subscription(sub)
    for pub, *rec in receivers.values():
        pub.publish = _tee(pub.publish, rec)
    return links


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", default=None,
                    help="graph file (default: config/graph.yaml of edge_vlm_bringup)")
    ap.add_argument("--namespace", default=None, help="namespace for every node")
    ap.add_argument("--input", action="append", default=[], metavar="KEY=TOPIC",
                    help="input topic of the graph (events=..., image=...)")
    ap.add_argument("--params", default="", metavar="YAML",
                    help="overrides as one YAML mapping, e.g. '{compute_budget: 0.5}'")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="[NODE.]NAME=VALUE")
    return ap


def _specs(args) -> list[NodeSpec]:
    inputs = {}
    for item in args.input:
        key, sep, topic = item.partition("=")
        if not sep or not topic:
            raise ValueError(f"--input {item}: expected KEY=TOPIC")
        inputs[key] = topic
    overrides = {**overrides_from_yaml(args.params, "--params"), **parse_overrides(args.param)}
    return load_graph(args.graph, overrides, args.namespace, inputs)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    args = _parser().parse_args(argv[:cut])
    with tempfile.TemporaryDirectory(prefix="edge_vlm_graph_") as tmp:
        try:
            graph = graph_process(_specs(args), tmp)
        except (ValueError, OSError) as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
            return EXIT_PARAMETER
        factories = [NODE_CLASSES[s.package] for s in graph.specs]

        def combine(nodes: list) -> list:
            links = hand_over(nodes)
            helper, shared = share_events(nodes, graph.event_topics)
            helper.get_logger().info(
                f"{len(nodes)} nodes in one process; events received once: "
                + "; ".join(f"{t} -> {', '.join(n)}" for t, n in shared.items())
                + "; handed over in process: " + ("; ".join(links) or "nothing"))
            return [helper]

        return run_nodes(factories, [PROG] + graph.ros_args + argv[cut:], PROG, combine)


if __name__ == "__main__":
    sys.exit(main())
