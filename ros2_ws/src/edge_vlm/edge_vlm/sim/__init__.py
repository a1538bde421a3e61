"""Seeded DVS128 Gesture simulator: the project's embedded default data.

128x128 event streams (log-intensity contrast-threshold DVS model), aligned
30 fps RGB frames and compositional captions for the 11 DVS128 Gesture
classes, performed by procedurally varied subjects under three lightings
(``lab``, ``fluorescent``, ``natural``).  The subject faces the camera, so
the subject's right hand appears on the image's LEFT.  Beyond the gestures,
the scenes of ``captions.SCENE_KINDS``: nothing moving, a person walking,
standing up or sitting down, a hand moving an object, a swinging object, two
people crossing, camera shake.

Modules: :mod:`.gestures` (subjects, kinematics), :mod:`.render` (scene,
lighting, frames), :mod:`.dvs` (events), :mod:`.captions` (caption grammar),
:mod:`.dataset` (clips, recordings, split), :mod:`.actors` + :mod:`.scenes`
(the scenes beyond the gestures), :mod:`.export` (DvsGesture folders, bags, the
demo data; not imported here).
"""
from edge_vlm.datasets.dvs128_gesture import GESTURE_CLASSES
from edge_vlm.sim.captions import (SCENE_KINDS, canonical_caption, reference_captions,
                                   scene_caption, scene_references)
from edge_vlm.sim.dataset import (DVS_RATE_HZ, FRAME_PERIOD_NS, Clip, Recording, simulate_clip,
                                  simulate_recording, simulate_static, split_subjects)
from edge_vlm.sim.gestures import POSITIONS, SIZES, SPEEDS, Subject, make_subject
from edge_vlm.sim.render import LIGHTING_NAMES
from edge_vlm.sim.scenes import SceneClip, simulate_scene, simulate_scene_recording

__all__ = ["Clip", "Recording", "simulate_clip", "simulate_recording", "simulate_static",
           "split_subjects", "canonical_caption", "reference_captions", "make_subject", "Subject",
           "GESTURE_CLASSES", "LIGHTING_NAMES", "SPEEDS", "POSITIONS", "SIZES",
           "FRAME_PERIOD_NS", "DVS_RATE_HZ", "SCENE_KINDS", "SceneClip", "simulate_scene",
           "simulate_scene_recording", "scene_caption", "scene_references"]
