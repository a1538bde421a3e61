"""Streaming inference: layer memories, the native encoder kernel, engines, routing, factory."""
