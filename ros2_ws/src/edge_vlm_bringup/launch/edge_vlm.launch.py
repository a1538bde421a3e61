"""ros2 launch file of edge_vlm: the nodes of the graph file (the file the local runner reads),
and optionally their input (a bag player or a camera driver).

    ros2 launch edge_vlm_bringup edge_vlm.launch.py [source:=none|bag|camera] [bag:=PATH]
        [rate:=1.0] [loop:=false] [camera:=dv|metavision|rgb] [compute_budget:=0.5]
        [checkpoint:=/path/captioner.pt] [namespace:=ns] [events_topic:=/event_camera/events]
        [image_topic:=/camera/image_raw] [use_rgb:=auto|never|always] [graph:=/path/graph.yaml]
        [params:='{vlm_captioner.decoding: beam}'] [single_process:=false] [log_dir:=DIR]
        [use_sim_time:=false] [nodes:=all|drone|ground|NAME,NAME] [wait_subscribers:=N]
        [wait_timeout:=15] [respawn:=false] [link:=raw|active]

The graph file defaults to ``edge_vlm.cores.graph.default_graph_path()``, as for the runner
(``edge_vlm_run``): ``EDGE_VLM_GRAPH`` when set, else ``config/graph.yaml`` of this package
(the checkout's ``ros2_ws/src/edge_vlm_bringup/config/graph.yaml``, else the installed
``share/edge_vlm_bringup/config/graph.yaml``). Nodes and parameters come from
``edge_vlm.cores.graph.load_graph``; ``params`` overrides any node parameter (one YAML mapping,
keys ``name`` for every node that has it or ``node.name``; the arguments ``compute_budget``,
``checkpoint`` and ``use_rgb`` override it). ``edge_vlm_run``, ``make demo`` (``edge_vlm_demo``)
and the bench start their graphs through this file (``edge_vlm_tools.runner``).

Processes: one per node (default), or with ``single_process:=true`` every node in ONE process
and ONE executor (``edge_vlm_graph`` of edge_vlm_tools: the model loaded once, the events
received once; same node names, topics and parameters). ``log_dir:=DIR``: each process writes
its output to ``DIR/<node>.log`` (``DIR/edge_vlm_graph.log`` in one process) instead of the
screen.

``use_sim_time:=true``: every node (and the single graph process) takes ROS time from
``/clock``, and the bag player (``source:=bag``) publishes ``/clock`` from the bag's header
stamps (``edge_vlm_play --clock``). Outputs are stamped in the EventPackets' header clock
either way (docs/design.md, "Time stamps"); ROS time only drives the nodes' timers and logs.

Where the nodes run (``nodes``), for a graph split across hosts (docs/deploy.md): ``all``
(default) starts every node of the graph; ``drone`` the onboard half (the input source,
``sttf_perception``, ``anc_router``); ``ground`` the ground station's half (``vlm_captioner``);
or a comma-separated list of node names of the graph. The halves find each other through DDS
(same ``ROS_DOMAIN_ID``; without multicast: ``ROS_STATIC_PEERS=<the other host>`` with
``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET``). A ``source`` belongs to the drone: ``nodes:=ground``
takes ``source:=none``. With ``nodes:=drone`` and ``source:=bag`` the player waits for one more
EventPacket subscriber than the drone's nodes: the ground's captioner (``wait_subscribers``
overrides the count). ``single_process:=true`` runs the whole graph: only with ``nodes:=all``.

``link:=active`` (the link mode that sends less, docs/deploy.md; default ``raw``): the drone's
``sttf_perception`` also publishes, once per frame, one EventPacket of the events in the
frame's active patches (``edge_vlm/link_events``, parameter ``link_relay``), and the ground's
``vlm_captioner`` bins those instead of the raw events (its ``event_camera/events`` remapped
to ``edge_vlm/link_events``, in its namespace; ``link_frames``: it closes each frame with its
packet). Give it to both hosts. With ``source:=bag`` (``nodes:=all`` or ``drone``)
``sttf_perception`` subscribes to the events only once its relay has matched a captioner, this
launch's or the ground's (``link_wait_subscribers``; at most ``wait_timeout``): the player waits
for that subscription, so no relayed frame is published before a captioner can hear it.

``respawn:=true``: a node process that exits while the launch runs (a crash, a kill) is
started again at once by launch itself (no new ``ros2 launch``: docs/deploy.md, "crash").

Several cameras on one domain (docs/deploy.md): one graph per camera, each with its own
``namespace:=camK`` and its inputs in it (``events_topic:=/camK/event_camera/events``,
``image_topic:=/camK/camera/image_raw``); the bag player then publishes the bag's ground truth
under the namespace too (``/camK/edge_vlm/ground_truth``).

Input (``source``):
  * ``none`` (default): a camera driver or bag player started elsewhere publishes
    event_camera_msgs/EventPacket on ``events_topic`` (default: the graph's inputs.events,
    /event_camera/events);
  * ``bag``: ``edge_vlm_play BAG`` (``rate``, ``loop``), once every node subscribed to the
    events; its events go to ``events_topic`` (bags of the simulator also carry
    /camera/image_raw and /edge_vlm/ground_truth);
  * ``camera``: the driver ``edge_vlm_camera_<camera>`` of package edge_vlm_cameras.

Every process runs under ``edge_vlm_ros.lifeline``: it gets SIGTERM when this launcher dies,
however it dies (launch itself stops its processes only on SIGINT). Not set here: the domain.
``ros2 launch`` uses the environment's ``ROS_DOMAIN_ID`` like any ROS tool; give the graph its
own (and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) on a shared machine.
"""
import os
import shlex

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from edge_vlm.cores.graph import (default_graph_path, load_graph, overrides_from_yaml,
                                  overrides_to_yaml, read_graph)
from edge_vlm.topics import TOPICS
from edge_vlm_ros.lifeline import exec_prefix

SOURCES = ("none", "bag", "camera")
CAMERAS = ("dv", "metavision", "rgb")
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off", "")
#: link modes (``link:=``): the raw events cross the link, or the active patches' events only
LINKS = ("raw", "active")
#: link mode 'active': the relay's topic (node-relative), the captioner's events input
LINK_TOPIC = TOPICS["link_events"].name
#: the halves of a graph split across hosts (``nodes:=drone|ground``), by node package
ROLES = {"drone": ("sttf_perception", "anc_router"), "ground": ("vlm_captioner",)}


def _overrides(arg) -> dict:
    """Launch arguments -> ``load_graph`` overrides (empty argument: the graph's value)."""
    out = overrides_from_yaml(arg("params"), "params:=")
    if arg("compute_budget"):
        out["compute_budget"] = float(arg("compute_budget"))    # every node that has it
    if arg("checkpoint"):
        out["vlm_captioner.checkpoint"] = arg("checkpoint")
        out["sttf_perception.checkpoint"] = arg("checkpoint")
    if arg("use_rgb"):
        out["vlm_captioner.use_rgb"] = arg("use_rgb")
    return out


def _link(arg, specs: list, overrides: dict) -> bool:
    """``link:=active``: sttf_perception relays the active patches' events, the captioner takes
    them instead of the raw events (its events input remapped); returns whether it is on."""
    link = arg("link") or "raw"
    if link not in LINKS:
        raise ValueError(f"link:={link}: expected one of {', '.join(LINKS)}")
    if link == "raw":
        return False
    # source:=bag with a captioner on the relay (in this launch, or the ground's behind
    # nodes:=drone): the relay subscribes to the events once a captioner matched it, so the
    # player (waiting for that subscription) loses no relayed frame
    wait = arg("source") == "bag" and (arg("nodes") == "drone"
                                       or any(s.package == "vlm_captioner" for s in specs))
    for s in specs:
        if s.package == "sttf_perception":
            overrides[f"{s.name}.link_relay"] = True
            if wait:
                overrides[f"{s.name}.link_wait_subscribers"] = 1
                overrides[f"{s.name}.link_wait_timeout"] = float(arg("wait_timeout") or 15.0)
        if s.package == "vlm_captioner":
            s.remappings[TOPICS["events"].name] = LINK_TOPIC
            overrides[f"{s.name}.link_frames"] = True     # one packet = one whole frame
    return True


def _flag(arg, name: str) -> bool:
    value = arg(name).lower()
    if value not in TRUE + FALSE:
        raise ValueError(f"{name}:={arg(name)}: expected true or false")
    return value in TRUE


def _prefix(arg, log_name: str) -> str:
    """The lifeline prefix of a process (never outlives this launcher), its output to
    ``log_dir/<log_name>.log`` when ``log_dir`` is set."""
    log_dir = arg("log_dir")
    return shlex.join(exec_prefix(log=os.path.join(log_dir, f"{log_name}.log") if log_dir
                                  else ""))


def _bag_remaps(inputs: dict, namespace: str | None) -> list[str]:
    """The player's ``--remap``s: the bag's events and images to the graph's inputs, its ground
    truth under ``namespace`` when there is one (several cameras' graphs apart on one domain)."""
    out = []
    for key in ("events", "image"):
        bag_topic = "/" + TOPICS[key].name
        if inputs.get(key) and inputs[key] != bag_topic:
            out += ["--remap", f"{bag_topic}:={inputs[key]}"]
    if namespace:
        truth = TOPICS["ground_truth"].name
        out += ["--remap", f"/{truth}:=/{namespace.strip('/')}/{truth}"]
    return out


def _player(arg, inputs: dict, namespace: str | None, subscribers: int, prefix: str,
            relay: bool = False) -> Node:
    """``edge_vlm_play BAG``: plays once ``subscribers`` subscriptions to the events matched
    (with ``use_sim_time``, it publishes ``/clock``); ``relay`` (link:=active with the
    captioner in this launch): also once the captioner subscribed to the relay, so the first
    relayed frames are not published before anyone listens."""
    if not arg("bag"):
        raise ValueError("source:=bag needs bag:=PATH (a rosbag2 folder)")
    loop = _flag(arg, "loop")
    args = [arg("bag"), "--rate", str(float(arg("rate") or 1.0)),
            "--wait-for", f"{inputs['events']}={subscribers}",
            "--wait-timeout", str(float(arg("wait_timeout") or 15.0))]
    if relay:
        ns = (namespace or "").strip("/")
        args += ["--wait-for", f"{ns + '/' if ns else ''}{LINK_TOPIC}=1"]
    if _flag(arg, "use_sim_time"):
        args.append("--clock")
    args += _bag_remaps(inputs, namespace)
    if loop:
        args.append("--loop")
    return Node(package="edge_vlm_tools", executable="edge_vlm_play", arguments=args,
                output="screen", prefix=prefix, exec_name="edge_vlm_play")


def _camera(arg, inputs: dict, namespace: str | None, prefix: str) -> Node:
    """The camera driver ``edge_vlm_camera_<camera>``, publishing on the graph's inputs."""
    camera = arg("camera")
    if camera not in CAMERAS:
        raise ValueError(f"camera:={camera}: expected one of {', '.join(CAMERAS)}")
    remaps = [(TOPICS[k].name, inputs[k]) for k in ("events", "image") if inputs.get(k)]
    return Node(package="edge_vlm_cameras", executable=f"edge_vlm_camera_{camera}",
                namespace=namespace, remappings=remaps, output="screen", prefix=prefix,
                exec_name=f"edge_vlm_camera_{camera}")


def _single_process(graph: str | None, overrides: dict, namespace: str | None,
                    inputs: dict, prefix: str, sim_time: bool) -> Node:
    """Every node of the graph in one process (``edge_vlm_graph``), configured as
    :func:`load_graph` configures the nodes of the multi-process graph."""
    args = ["--params", overrides_to_yaml(overrides)] if overrides else []
    if graph:
        args += ["--graph", graph]
    if namespace is not None:
        args += ["--namespace", namespace]
    args += [f"--input={k}={v}" for k, v in inputs.items()]
    return Node(package="edge_vlm_tools", executable="edge_vlm_graph", arguments=args,
                parameters=[{"use_sim_time": sim_time}],
                output="screen", prefix=prefix, exec_name="edge_vlm_graph")


def _select(specs: list, nodes: str) -> list:
    """The node specs that ``nodes`` (all, drone, ground, or node names) runs on this host."""
    if nodes in ("", "all"):
        return list(specs)
    if nodes in ROLES:
        return [s for s in specs if s.package in ROLES[nodes]]
    names = [n.strip() for n in nodes.split(",") if n.strip()]
    unknown = sorted(set(names) - {s.name for s in specs})
    if unknown or not names:
        raise ValueError(f"nodes:={nodes}: expected all, drone, ground or node names of the "
                         f"graph ({', '.join(s.name for s in specs)})")
    return [s for s in specs if s.name in names]


def _subscribers(arg, nodes: str, count: int) -> int:
    """EventPacket subscriptions the bag player waits for: ``wait_subscribers`` when set, else
    this host's (``count``), plus the ground's captioner when this is the drone."""
    if arg("wait_subscribers"):
        return int(arg("wait_subscribers"))
    return count + (len(ROLES["ground"]) if nodes == "drone" else 0)


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    source = arg("source")
    if source not in SOURCES:
        raise ValueError(f"source:={source}: expected one of {', '.join(SOURCES)}")
    graph = arg("graph") or None
    inputs = dict(read_graph(graph).inputs)
    for key in ("events", "image"):
        if arg(f"{key}_topic"):
            inputs[key] = arg(f"{key}_topic")
    namespace = arg("namespace") or None
    overrides = _overrides(arg)
    nodes = arg("nodes")
    specs = _select(load_graph(graph, overrides, namespace=namespace, inputs=inputs), nodes)
    if _link(arg, specs, overrides):        # the relay's parameters: load the specs again
        specs = _select(load_graph(graph, overrides, namespace=namespace, inputs=inputs), nodes)
        _link(arg, specs, overrides)
    if nodes == "ground" and source != "none":
        raise ValueError(f"nodes:=ground takes source:=none (the source runs on the drone), "
                         f"not source:={source}")
    sim_time, respawn = _flag(arg, "use_sim_time"), _flag(arg, "respawn")
    if _flag(arg, "single_process"):
        if nodes not in ("", "all"):
            raise ValueError(f"single_process:=true runs every node: not with nodes:={nodes}")
        if (arg("link") or "raw") != "raw":
            raise ValueError("single_process:=true has no link: only with link:=raw")
        actions = [_single_process(graph, overrides, namespace, inputs,
                                   _prefix(arg, "edge_vlm_graph"), sim_time)]
        subscribers = 1           # the graph process subscribes to the events once
    else:
        actions = [
            Node(package=s.package, executable=s.executable, name=s.name,
                 namespace=s.namespace or None,
                 parameters=[s.parameters, {"use_sim_time": sim_time}],
                 remappings=list(s.remappings.items()), output="screen",
                 prefix=_prefix(arg, s.name), exec_name=s.name, respawn=respawn)
            for s in specs
        ]
        subscribers = len(specs)
    link = (arg("link") or "raw") == "active"
    if link and not arg("wait_subscribers"):   # the captioner takes the relay's events
        subscribers -= sum(s.package == "vlm_captioner" for s in specs) + (nodes == "drone")
    subscribers = _subscribers(arg, nodes, subscribers)
    if source == "bag":
        relay = link and any(s.package == "vlm_captioner" for s in specs)
        actions.append(_player(arg, inputs, namespace, subscribers, _prefix(arg, "player"),
                               relay))
    elif source == "camera":
        actions.append(_camera(arg, inputs, namespace, _prefix(arg, "camera")))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument(
            "graph", default_value=default_graph_path(),
            description="graph file (default: config/graph.yaml of edge_vlm_bringup, or "
                        "EDGE_VLM_GRAPH)"),
        DeclareLaunchArgument(
            "source", default_value="none",
            description="input started with the graph: none, bag (bag:=PATH) or camera "
                        "(camera:=...)"),
        DeclareLaunchArgument(
            "bag", default_value="", description="rosbag2 folder played when source:=bag"),
        DeclareLaunchArgument(
            "rate", default_value="1.0", description="playback rate of the bag"),
        DeclareLaunchArgument(
            "loop", default_value="false", description="play the bag again and again"),
        DeclareLaunchArgument(
            "camera", default_value="dv",
            description="camera driver when source:=camera: dv, metavision or rgb"),
        DeclareLaunchArgument(
            "namespace", default_value="", description="namespace for every node"),
        DeclareLaunchArgument(
            "compute_budget", default_value="",
            description="compute budget in (0, 1] for anc_router and vlm_captioner "
                        "(empty = the graph's)"),
        DeclareLaunchArgument(
            "checkpoint", default_value="",
            description="captioner checkpoint (empty = the one shipped with edge_vlm)"),
        DeclareLaunchArgument(
            "events_topic", default_value="",
            description="EventPacket input topic: camera driver or bag player "
                        "(empty = graph.yaml inputs.events)"),
        DeclareLaunchArgument(
            "image_topic", default_value="",
            description="RGB image input topic (empty = graph.yaml inputs.image)"),
        DeclareLaunchArgument(
            "use_rgb", default_value="",
            description="vlm_captioner's use_rgb: auto, never or always (empty = the graph's)"),
        DeclareLaunchArgument(
            "params", default_value="",
            description="node parameter overrides as one YAML mapping, e.g. "
                        "'{vlm_captioner.decoding: beam, compute_budget: 0.5}'"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false",
            description="nodes take ROS time from /clock; source:=bag publishes it"),
        DeclareLaunchArgument(
            "single_process", default_value="false",
            description="true: every node in one process and one executor (edge_vlm_graph; "
                        "the model loaded once, the events received once)"),
        DeclareLaunchArgument(
            "nodes", default_value="all",
            description="nodes run on this host: all, drone (sttf_perception, anc_router and "
                        "the source), ground (vlm_captioner) or node names, comma-separated"),
        DeclareLaunchArgument(
            "wait_subscribers", default_value="",
            description="source:=bag: EventPacket subscriptions the player waits for (empty: "
                        "this host's nodes, plus the ground's captioner with nodes:=drone)"),
        DeclareLaunchArgument(
            "respawn", default_value="false",
            description="true: a node process that exits (a crash) is started again at once "
                        "(not with single_process)"),
        DeclareLaunchArgument(
            "wait_timeout", default_value="15",
            description="source:=bag: seconds the player waits for those subscriptions before "
                        "it plays anyway (slow starts: several graphs on one loaded machine)"),
        DeclareLaunchArgument(
            "link", default_value="raw",
            description="raw: the raw events cross the link; active: sttf_perception also "
                        "publishes per frame the events of its active patches "
                        "(edge_vlm/link_events) and vlm_captioner bins those (both hosts)"),
        DeclareLaunchArgument(
            "log_dir", default_value="",
            description="write each process's output to LOG_DIR/<node>.log instead of the "
                        "screen"),
        OpaqueFunction(function=_nodes),
    ])
