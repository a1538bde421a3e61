"""Seeded DVS128 Gesture simulator: the project's embedded default data.

128x128 event streams (log-intensity contrast-threshold DVS model), aligned
30 fps RGB frames and compositional captions for the 11 DVS128 Gesture
classes, performed by procedurally varied subjects under three lightings
(``lab``, ``fluorescent``, ``natural``).  The subject faces the camera, so
the subject's right hand appears on the image's LEFT.

Modules: :mod:`.gestures` (subjects, kinematics), :mod:`.render` (scene,
lighting, frames), :mod:`.dvs` (events), :mod:`.captions` (caption grammar),
:mod:`.dataset` (clips, recordings, split), :mod:`.export` (DvsGesture folders,
bags, the demo data; not imported here).
"""
from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES
from edge_vlm.sim.captions import canonical_caption, reference_captions
from edge_vlm.sim.dataset import (DVS_RATE_HZ, FRAME_PERIOD_NS, Clip, Recording, simulate_clip,
                                  simulate_recording, simulate_static, split_subjects)
from edge_vlm.sim.gestures import POSITIONS, SIZES, SPEEDS, Subject, make_subject
from edge_vlm.sim.render import LIGHTING_NAMES

__all__ = ["Clip", "Recording", "simulate_clip", "simulate_recording", "simulate_static",
           "split_subjects", "canonical_caption", "reference_captions", "make_subject", "Subject",
           "GESTURE_CLASSES", "LIGHTING_NAMES", "SPEEDS", "POSITIONS", "SIZES",
           "FRAME_PERIOD_NS", "DVS_RATE_HZ"]
