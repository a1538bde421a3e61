"""ros2 launch file of edge_vlm: the nodes of the graph file (the file the local runner reads).

    ros2 launch edge_vlm_bringup edge_vlm.launch.py [graph:=/path/graph.yaml] [namespace:=ns]
        [compute_budget:=0.5] [checkpoint:=/path/captioner.pt] [events_topic:=/event_camera/events]

The graph file defaults to ``edge_vlm.cores.graph.default_graph_path()``, as for the runner
(``edge_vlm_run``): ``EDGE_VLM_GRAPH`` when set, else ``config/graph.yaml`` of this package
(the checkout's ``ros2_ws/src/edge_vlm_bringup/config/graph.yaml``, else the installed
``share/edge_vlm_bringup/config/graph.yaml``). Nodes and parameters come from
``edge_vlm.cores.graph.load_graph``.

Input: a live event camera driver publishing event_camera_msgs/EventPacket on
``events_topic`` (default /event_camera/events), or a bag played into the same
topic (``ros2 bag play BAG`` or ``edge_vlm_play BAG``; bags made by the
simulator also carry /camera/image_raw and /edge_vlm/ground_truth).

Needs ``launch`` and ``launch_ros`` (a ROS 2 install); without them the same graph is
started with ``edge_vlm_run`` (package edge_vlm_tools).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from edge_vlm.cores.graph import default_graph_path, load_graph


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {}
    if arg("compute_budget"):
        overrides["compute_budget"] = float(arg("compute_budget"))    # every node that has it
    if arg("checkpoint"):
        overrides["vlm_captioner.checkpoint"] = arg("checkpoint")
        overrides["sttf_perception.checkpoint"] = arg("checkpoint")
    inputs = {"events": arg("events_topic")} if arg("events_topic") else None
    specs = load_graph(arg("graph") or None, overrides, namespace=arg("namespace") or None,
                       inputs=inputs)
    return [
        Node(package=s.package, executable=s.executable, name=s.name,
             namespace=s.namespace or None, parameters=[s.parameters],
             remappings=list(s.remappings.items()), output="screen")
        for s in specs
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("graph", default_value=default_graph_path(),
                              description="graph file (default: config/graph.yaml of "
                                          "edge_vlm_bringup, or EDGE_VLM_GRAPH)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace for every node"),
        DeclareLaunchArgument("compute_budget", default_value="",
                              description="compute budget in (0, 1] for anc_router and "
                                          "vlm_captioner"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="captioner checkpoint (empty = the one shipped with "
                                          "edge_vlm)"),
        DeclareLaunchArgument("events_topic", default_value="",
                              description="EventPacket input topic: camera driver or bag player "
                                          "(empty = graph.yaml inputs.events)"),
        OpaqueFunction(function=_nodes),
    ])
