# edge_vlm: two commands for a newcomer: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
RUN := set -o pipefail; source env.sh &&

.PHONY: help setup demo test lint bench train train-heads train-levels synth clean

help:
	@echo "make demo   - set up (idempotent), then replay the simulated demo bag through the three nodes"
	@echo "make test   - set up (idempotent), then lint (ruff, 99 columns) and run the test suite"
	@echo "make bench  - benchmarks (writes docs/benchmarks.md)"
	@echo "make train  - retrain the shipped STTF+ANC checkpoint (CPU, ~105 min)"
	@echo "make train-heads - refit only the gesture + scene heads of the shipped checkpoint (~50 min)"
	@echo "make train-levels - the ANC levels' own heads + router on the shipped checkpoint (~25 min; not shipped)"
	@echo "make setup  - create .venv, install pinned dependencies, build the ROS 2 workspace"

setup:
	@bash scripts/setup.sh

demo: setup
	@$(RUN) edge-vlm demo

lint: setup
	@$(RUN) ruff check .

test: setup
	@$(RUN) ruff check . && python -m pytest -q -p no:cacheprovider tests

# Benchmarks (decode throughput, STTF vs dense, end-to-end latency); writes docs/benchmarks.md
bench: setup
	@$(RUN) edge-vlm bench all --json

# The exact commands that produced ros2_ws/src/edge_vlm/edge_vlm/checkpoints/captioner.pt (the joint STTF+ANC
# model): STTF from scratch, its per-layer gate thresholds fitted on the validation subjects, ANC grown
# from it, the ANC router fitted on the frozen branches, then the gesture head's motion net fitted on the
# frozen model. About 105 min on 2 CPU cores.
CKPT_DIR := ros2_ws/src/edge_vlm/edge_vlm/checkpoints
train: setup
	@mkdir -p data/train_sttf data/train_anc data/train_router data/train_gesture && $(RUN) \
	  edge-vlm train --out data/train_sttf/captioner.pt --no-progress | tee data/train_sttf/train_log.txt && \
	  edge-vlm calibrate data/train_sttf/captioner.pt > data/train_sttf/calibrate.json && \
	  edge-vlm train --model anc --init data/train_sttf/captioner.pt --out data/train_anc/captioner.pt \
	    --no-progress | tee data/train_anc/train_log.txt && \
	  edge-vlm train --model router --init data/train_anc/captioner.pt --out data/train_router/captioner.pt \
	    --no-progress | tee data/train_router/train_log.txt && \
	  edge-vlm train --model gesture --init data/train_router/captioner.pt --out data/train_gesture/captioner.pt \
	    --extra-subjects 10 --cache data/train_gesture/frames.pt --no-progress | tee data/train_gesture/train_log.txt && \
	  cp data/train_gesture/captioner.pt $(CKPT_DIR)/captioner.pt && \
	  cp data/train_gesture/gesture_fit.json $(CKPT_DIR)/gesture_fit.json && \
	  cp data/train_router/router_fit.json $(CKPT_DIR)/router_fit.json && \
	  cp data/train_sttf/train_summary.json $(CKPT_DIR)/train_summary_sttf.json && \
	  cp data/train_sttf/train_log.txt $(CKPT_DIR)/train_log_sttf.txt && \
	  cp data/train_sttf/calibrate.json $(CKPT_DIR)/calibrate_sttf.json && \
	  cp data/train_anc/train_summary_anc.json $(CKPT_DIR)/train_summary_anc.json && \
	  cp data/train_anc/train_log.txt $(CKPT_DIR)/train_log_anc.txt && \
	  cp data/train_sttf/training_curves.png docs/training_curves.png && \
	  cp data/train_sttf/confusion_test.png docs/confusion_test_sttf.png && \
	  cp data/train_anc/confusion_test_anc.png docs/confusion_test_anc.png

# The last stage of `make train` alone, on the shipped checkpoint (its frozen encoder, fusion and
# decoder): the gesture + scene heads (no gesture, scene kind, direction, speed, position) and
# their calibration temperatures, from simulated gesture and scene recordings. This is the command
# that produced the shipped checkpoint's heads (docs/design.md, "Grounded outputs").
train-heads: setup
	@mkdir -p data/train_heads && $(RUN) \
	  edge-vlm train --model gesture --init "" --out data/train_heads/captioner.pt \
	    --extra-subjects 10 --cache data/train_heads/frames.pt --no-progress | tee data/train_heads/train_log.txt && \
	  cp data/train_heads/captioner.pt $(CKPT_DIR)/captioner.pt && \
	  cp data/train_heads/gesture_fit.json $(CKPT_DIR)/gesture_fit.json

# ANC levels with their own gesture heads (issue 19, part 3; docs/design.md, "ANC levels with their
# own heads"), on the shipped checkpoint: Tiny's and Small's own gesture and scene heads (8 and 16
# channels; Medium keeps the shared 32-channel head) on its frozen model, then a fresh router fitted
# on streamed frames scored by those heads, its cost weight chosen on the validation subjects.
# Writes data/train_levels/router/captioner.pt; NOT copied into the shipped checkpoint (what it
# gives and costs: design.md). About 25 min on 2 CPU cores.
train-levels: setup
	@mkdir -p data/train_levels && $(RUN) \
	  edge-vlm train --model gesture --level tiny --motion-width 8 --init "" \
	    --out data/train_levels/tiny/captioner.pt --extra-subjects 10 --cache data/train_levels/frames.pt \
	    --no-progress | tee data/train_levels/train_log_tiny.txt && \
	  edge-vlm train --model gesture --level small --motion-width 16 --init data/train_levels/tiny/captioner.pt \
	    --out data/train_levels/small/captioner.pt --extra-subjects 10 --cache data/train_levels/frames.pt \
	    --no-progress | tee data/train_levels/train_log_small.txt && \
	  edge-vlm train --model router --heads --init data/train_levels/small/captioner.pt \
	    --out data/train_levels/router/captioner.pt --no-progress | tee data/train_levels/train_log_router.txt

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log data out .setup-stamp ros2_ws/src/edge_vlm/edge_vlm/_native/libevbin.so ros2_ws/src/edge_vlm/edge_vlm/_native/libsparsevit.so ros2_ws/src/edge_vlm/edge_vlm/_native/libconvnets.so ros2_ws/src/edge_vlm/edge_vlm/_native/evbinext*.so
