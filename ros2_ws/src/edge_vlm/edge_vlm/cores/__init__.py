"""Per-node logic without rclpy (perception, router, captioner scheduling), used by the ROS nodes
and by offline evaluation."""
