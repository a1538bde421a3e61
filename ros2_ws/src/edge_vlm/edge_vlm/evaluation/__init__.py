"""Offline evaluation: replay through the node cores, metrics, COCO harness, paper table."""
