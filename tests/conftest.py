"""Test configuration: make the source packages importable without an install."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_REAL = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real"))
for pkg in ("edge_vlm", "edge_vlm_ros", "edge_vlm_tools", "edge_vlm_cameras", "sttf_perception",
            "anc_router", "vlm_captioner"):
    p = os.path.join(ROOT, "ros2_ws", "src", pkg)
    if os.path.isdir(p) and p not in sys.path:
        sys.path.insert(0, p)
