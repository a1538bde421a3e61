"""edge_vlm ROS 2 adapter code (imports rclpy)."""
