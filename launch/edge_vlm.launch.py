"""ros2 launch file of edge_vlm: the nodes of config/graph.yaml (same file the local runner reads).

    ros2 launch launch/edge_vlm.launch.py [graph:=config/graph.yaml] [namespace:=ns]
        [compute_budget:=0.5] [checkpoint:=/path/captioner.pt] [events_topic:=/event_camera/events]

Input: a live event camera driver publishing event_camera_msgs/EventPacket on
``events_topic`` (default /event_camera/events), or a bag played into the same
topic (``ros2 bag play BAG`` or ``edge_vlm_play BAG``; bags made by the
simulator also carry /camera/image_raw and /edge_vlm/ground_truth).

Needs a real ROS 2 install (launch, launch_ros); the PyPI wheels used for the
local development environment do not provide them, so there the same graph is
started with ``edge_vlm_run`` (edge_vlm_ros.runner).
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from edge_vlm.cores.graph import default_graph_path, load_graph

# config/graph.yaml next to this launch/ folder (repository checkout), else the runner's lookup
DEFAULT_GRAPH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "graph.yaml")
if not os.path.isfile(DEFAULT_GRAPH):
    DEFAULT_GRAPH = default_graph_path()


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {}
    if arg("compute_budget"):
        overrides["compute_budget"] = float(arg("compute_budget"))    # every node that has it
    if arg("checkpoint"):
        overrides["vlm_captioner.checkpoint"] = arg("checkpoint")
        overrides["sttf_perception.checkpoint"] = arg("checkpoint")
    inputs = {"events": arg("events_topic")} if arg("events_topic") else None
    specs = load_graph(arg("graph"), overrides, namespace=arg("namespace") or None, inputs=inputs)
    return [
        Node(package=s.package, executable=s.executable, name=s.name, namespace=s.namespace or None,
             parameters=[s.parameters], remappings=list(s.remappings.items()), output="screen")
        for s in specs
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("graph", default_value=DEFAULT_GRAPH, description="graph file (config/graph.yaml)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace for every node"),
        DeclareLaunchArgument("compute_budget", default_value="",
                              description="compute budget in (0, 1] for anc_router and vlm_captioner"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="captioner checkpoint (empty = the one shipped with edge_vlm)"),
        DeclareLaunchArgument("events_topic", default_value="",
                              description="EventPacket input topic: camera driver or bag player "
                                          "(empty = graph.yaml inputs.events)"),
        OpaqueFunction(function=_nodes),
    ])
