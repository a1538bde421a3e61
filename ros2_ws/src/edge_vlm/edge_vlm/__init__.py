"""edge_vlm core library: event I/O, simulator, models. Never imports rclpy."""

__version__ = "0.1.0"
