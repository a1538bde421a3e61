# edge_vlm: two commands for a newcomer: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
RUN := set -o pipefail; source env.sh &&

.PHONY: help setup demo test bench train synth clean

help:
	@echo "make demo   - set up (idempotent), then replay the simulated demo bag through the three nodes"
	@echo "make test   - set up (idempotent), then run the test suite"
	@echo "make bench  - benchmarks (writes docs/benchmarks.md)"
	@echo "make train  - retrain the shipped captioning checkpoint (CPU, ~15 min)"
	@echo "make setup  - create .venv, install pinned dependencies, build the ROS 2 workspace"

setup:
	@bash scripts/setup.sh

demo: setup
	@$(RUN) edge-vlm demo

test: setup
	@$(RUN) python -m pytest -q -p no:cacheprovider tests

# Benchmarks (decode throughput, STTF vs dense, end-to-end latency); writes docs/benchmarks.md
bench: setup
	@$(RUN) edge-vlm bench all --json

# The exact command that produced ros2_ws/src/edge_vlm/edge_vlm/checkpoints/captioner.pt
train: setup
	@$(RUN) edge-vlm train --out data/train/captioner.pt && \
	  cp data/train/captioner.pt ros2_ws/src/edge_vlm/edge_vlm/checkpoints/captioner.pt && \
	  cp data/train/train_summary.json ros2_ws/src/edge_vlm/edge_vlm/checkpoints/train_summary.json && \
	  cp data/train/training_curves.png docs/training_curves.png

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log data out .setup-stamp
