"""edge_vlm's ROS 2 tools: bag player (edge_vlm_play), recorder (edge_vlm_record), local graph
runner (edge_vlm_run) and demo (edge_vlm_demo)."""
