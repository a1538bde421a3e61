"""edge_vlm's ROS 2 library (imports rclpy), shared by the node, tool and camera packages.

Modules: ``qos`` (profiles of the topic table ``edge_vlm.topics``), ``params`` (ROS
parameters from ``edge_vlm.params``), ``conversions`` (stamps, images, message -> dict),
``intake`` (EventPacket intake), ``diagnostics``, ``frame_node`` (base of the frame nodes),
``run`` (one node process: init, spin, exit codes).
"""
