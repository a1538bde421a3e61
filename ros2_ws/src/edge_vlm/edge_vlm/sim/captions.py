"""Compositional caption grammar: gestures (class phrase + subject, position, speed (+ lighting))
and the scenes beyond the 11 gestures (what moves, where, in which direction, how fast).

The *canonical* caption has one fixed template and fixed words (it is what the
model is trained to produce)::

    "{subject} {position} {verb phrase} {speed}"
    e.g. "a tall person on the left waves the right hand quickly"

*References* are paraphrases (different templates and synonyms), all
consistent with the same attributes; the canonical caption is the first one.
Everything is lowercase and has no trailing period.  "right"/"left" hand or
arm always mean the subject's own side; "on the left" means the left of the
camera's view.
"""
from __future__ import annotations

import numpy as np

# (canonical verb phrase, other verb phrases, gerund phrases)
CLASS_PHRASES: dict[int, tuple[str, list[str], list[str]]] = {
    1: ("claps hands", ["claps their hands", "claps", "brings both hands together repeatedly"],
        ["clapping", "clapping their hands", "clapping both hands together"]),
    2: ("waves the right hand", ["waves their right hand", "waves with the right hand",
                                 "gives a wave with the right hand"],
        ["waving the right hand", "waving their right hand", "waving with the right hand"]),
    3: ("waves the left hand", ["waves their left hand", "waves with the left hand",
                                "gives a wave with the left hand"],
        ["waving the left hand", "waving their left hand", "waving with the left hand"]),
    4: ("rotates the right arm clockwise", ["circles the right arm clockwise",
                                            "swings their right arm around clockwise",
                                            "turns the right arm in clockwise circles"],
        ["rotating the right arm clockwise", "circling their right arm clockwise",
         "making clockwise circles with the right arm"]),
    5: ("rotates the right arm counter-clockwise",
        ["circles the right arm counter-clockwise", "swings their right arm around anticlockwise",
         "turns the right arm in counter-clockwise circles"],
        ["rotating the right arm counter-clockwise", "circling their right arm anticlockwise",
         "making counter-clockwise circles with the right arm"]),
    6: ("rotates the left arm clockwise", ["circles the left arm clockwise",
                                           "swings their left arm around clockwise",
                                           "turns the left arm in clockwise circles"],
        ["rotating the left arm clockwise", "circling their left arm clockwise",
         "making clockwise circles with the left arm"]),
    7: ("rotates the left arm counter-clockwise",
        ["circles the left arm counter-clockwise", "swings their left arm around anticlockwise",
         "turns the left arm in counter-clockwise circles"],
        ["rotating the left arm counter-clockwise", "circling their left arm anticlockwise",
         "making counter-clockwise circles with the left arm"]),
    8: ("rolls the arms", ["rolls their forearms around each other", "does an arm roll",
                           "circles the forearms around each other"],
        ["rolling the arms", "rolling their forearms around each other", "doing an arm roll"]),
    9: ("plays air drums", ["plays the air drums", "drums in the air", "pretends to play drums"],
        ["playing air drums", "drumming in the air", "pretending to play the drums"]),
    10: ("plays air guitar", ["plays the air guitar", "strums an invisible guitar",
                              "pretends to play guitar"],
         ["playing air guitar", "strumming an invisible guitar", "pretending to play the guitar"]),
    11: ("makes another gesture", ["makes some other gesture", "moves the arms freely",
                                   "makes a random arm movement"],
         ["making another gesture", "moving the arms freely", "making random arm movements"]),
}

SUBJECT_WORDS = {"small": ("a small person",
                           ["a short person", "a small person", "a short subject"]),
                 "medium": ("a person", ["someone", "a person", "a subject", "an individual"]),
                 "tall": ("a tall person",
                          ["a tall individual", "a tall person", "a tall subject"])}
POSITION_WORDS = {"left": ("on the left", ["on the left side", "on the left of the view",
                                           "at the left of the frame", "on the left"]),
                  "center": ("in the center", ["in the middle", "in the center of the view",
                                               "at the center of the frame", "in the center"]),
                  "right": ("on the right", ["on the right side", "on the right of the view",
                                             "at the right of the frame", "on the right"])}
SPEED_WORDS = {"slow": ("slowly", ["slowly", "at a slow pace", "in a slow manner"]),
               "normal": ("at a steady pace", ["at a steady pace", "at a normal pace",
                                               "at a moderate speed", "steadily"]),
               "fast": ("quickly", ["quickly", "fast", "rapidly", "at a fast pace"])}
LIGHTING_WORDS = {"lab": ["in a bright room", "under bright light"],
                  "fluorescent": ["under fluorescent light", "in fluorescent lighting"],
                  "natural": ["in dim natural light", "in a dimly lit room"]}


#: what a scene shows (the model's scene head predicts one per frame). ``nothing``: no motion
#: (an empty room, or a person standing still: a DVS sees no still object, only sensor noise);
#: ``gesture``: one of the 11 DVS128 gestures; ``two_movers``: two people walking across in
#: opposite directions; ``camera_shake``: ego-motion of a hovering drone, nothing moves by itself
SCENE_KINDS = ("nothing", "gesture", "walk", "stand_up", "sit_down", "object_moved",
               "object_swings", "two_movers", "camera_shake")
#: direction of the motion in the camera's view ("none": no single direction)
DIRECTIONS = ("none", "left_to_right", "right_to_left", "up", "down")
DIRECTION_WORDS = {"left_to_right": "from left to right", "right_to_left": "from right to left",
                   "up": "upwards", "down": "downwards", "none": ""}
NOTHING_MOVES = "nothing moves"


def scene_caption(kind: str, attributes: dict) -> str:
    """THE canonical caption of a scene (the verbaliser): the simulator's ground truth and the
    text the captioner publishes for what its heads found. ``attributes``: ``direction``,
    ``speed``, ``position`` (and ``label``, ``size`` for a gesture)."""
    if kind == "gesture":
        return canonical_caption(int(attributes["label"]), attributes)
    if kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {SCENE_KINDS}")
    if kind in ("nothing", "camera_shake"):
        return NOTHING_MOVES if kind == "nothing" else "the camera shakes"
    speed = SPEED_WORDS[attributes["speed"]][0]
    pos = POSITION_WORDS[attributes["position"]][0]
    direction = DIRECTION_WORDS[attributes.get("direction", "none")]
    text = {"walk": f"a person walks {direction}",
            "stand_up": f"a person {pos} stands up",
            "sit_down": f"a person {pos} sits down",
            "object_moved": f"a hand moves an object {direction}",
            "object_swings": f"an object swings {pos}",
            "two_movers": "two people walk in opposite directions"}[kind]
    return " ".join(f"{text} {speed}".split())


#: paraphrases of the scenes beyond the gestures: (subjects, verb phrases, gerund phrases);
#: ``{d}`` is a direction phrase; subjects ``None``: the subject's size words
SCENE_PHRASES: dict[str, tuple[list[str] | None, list[str], list[str]]] = {
    "walk": (None, ["walks {d}", "walks across the view {d}", "crosses the view {d}",
                    "walks past {d}"],
             ["walking {d}", "crossing the view {d}", "walking past {d}"]),
    "stand_up": (None, ["stands up", "gets up", "rises from a chair", "gets up from a chair"],
                 ["standing up", "getting up", "rising from a chair"]),
    "sit_down": (None, ["sits down", "sits down on a chair", "takes a seat", "sits on a chair"],
                 ["sitting down", "sitting down on a chair", "taking a seat"]),
    "object_moved": (["a hand", "someone's hand", "a person's hand"],
                     ["moves an object {d}", "carries an object {d}", "moves a small object {d}",
                      "slides an object {d}"],
                     ["moving an object {d}", "carrying an object {d}",
                      "moving a small object {d}"]),
    "pendulum": (["an object", "a pendulum", "a hanging object"],
                 ["swings", "swings back and forth", "sways", "sways back and forth"],
                 ["swinging", "swinging back and forth", "swaying"]),
    "bar": (["an object", "a bar", "a rotating bar"],
            ["rotates", "spins", "turns around", "swings around"],
            ["rotating", "spinning", "turning around"]),
    "two_movers": (["two people", "two persons", "a pair of people", "two walkers"],
                   ["walk in opposite directions", "cross each other", "pass each other",
                    "walk past each other in opposite directions"],
                   ["walking in opposite directions", "crossing each other",
                    "passing each other"]),
}
DIRECTION_PHRASES = {"left_to_right": ["from left to right", "to the right",
                                       "from the left to the right", "towards the right"],
                     "right_to_left": ["from right to left", "to the left",
                                       "from the right to the left", "towards the left"],
                     "up": ["upwards", "up", "upward"], "down": ["downwards", "down", "downward"],
                     "none": [""]}
#: scenes without a moving thing: every phrasing, whatever the attributes
STILL_PHRASES = {
    "empty": ["no motion", "the scene is still", "nothing moves in the room",
              "an empty room, nothing moves", "the room is empty and still",
              "there is no movement", "nobody is there and nothing moves"],
    "still_person": ["no motion", "a person stands still", "someone stands without moving",
                     "a still person, nothing moves", "nobody moves", "the scene is still",
                     "a person is standing still"],
    "camera_shake": ["the view shakes", "the camera jitters", "the whole image trembles",
                     "the camera wobbles in place", "the hovering camera shakes",
                     "the view jitters slightly", "the camera is shaking"],
}


def scene_references(kind: str, attributes: dict, seed: int, n: int = 6) -> list[str]:
    """``n`` (>= 5) distinct paraphrases of a scene, :func:`scene_caption` first (a gesture:
    :func:`reference_captions`)."""
    if kind == "gesture":
        return reference_captions(int(attributes["label"]), attributes, seed, n)
    canonical = scene_caption(kind, attributes)
    n = max(5, n)
    rng = np.random.default_rng([0x5CA9, int(seed) % (1 << 64), SCENE_KINDS.index(kind)])
    if kind in ("nothing", "camera_shake"):
        pool = STILL_PHRASES["camera_shake" if kind == "camera_shake"
                             else attributes.get("setting", "empty")]
        others = [pool[int(i)] for i in rng.permutation(len(pool))]
        return [canonical] + [c for c in others if c != canonical][:n - 1]
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    key = attributes.get("object", "pendulum") if kind == "object_swings" else kind
    subjects, vps, gers = SCENE_PHRASES[key]
    subj = subjects or SUBJECT_WORDS[attributes.get("size", "medium")][1]
    with_pos = kind in ("stand_up", "sit_down", "object_swings")
    pos = POSITION_WORDS[attributes["position"]][1] if with_pos else [""]
    spd = SPEED_WORDS[attributes["speed"]][1]
    dirs = DIRECTION_PHRASES[attributes.get("direction", "none")]
    light = LIGHTING_WORDS.get(attributes.get("lighting", ""), ["in a room"])
    v = lambda xs: pick(xs).format(d=pick(dirs))  # noqa: E731
    templates = [
        lambda: f"{pick(subj)} {pick(pos)} {v(vps)} {pick(spd)}",
        lambda: f"{pick(subj)} {pick(pos)} is {v(gers)} {pick(spd)}",
        lambda: f"{pick(subj)} {v(gers)} {pick(spd)} {pick(pos)}",
        lambda: f"the camera shows {pick(subj)} {pick(pos)} {v(gers)} {pick(spd)}",
        lambda: f"{pick(subj)} {pick(pos)} {v(vps)} {pick(spd)} {pick(light)}",
        lambda: f"the event camera sees {pick(subj)} {v(gers)} {pick(pos)} {pick(spd)}",
    ]
    if with_pos:
        templates.append(lambda: f"{pick(pos)}, {pick(subj)} {v(vps)} {pick(spd)}")
    order = rng.permutation(len(templates))
    refs = [canonical]
    for attempt in range(200):
        c = " ".join(templates[order[attempt % len(templates)]]().split())
        if c not in refs:
            refs.append(c)
        if len(refs) >= n:
            break
    return refs


def canonical_caption(label: int, attributes: dict) -> str:
    """The fixed-template caption the captioning model is trained to produce."""
    return " ".join((SUBJECT_WORDS[attributes["size"]][0],
                     POSITION_WORDS[attributes["position"]][0],
                     CLASS_PHRASES[label][0], SPEED_WORDS[attributes["speed"]][0]))


def reference_captions(label: int, attributes: dict, seed: int, n: int = 6) -> list[str]:
    """``n`` (>= 5) distinct paraphrases, the canonical caption first."""
    rng = np.random.default_rng([0xCA9, int(seed) % (1 << 64), int(label)])
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    vp0, vps, gers = CLASS_PHRASES[label]
    subj = SUBJECT_WORDS[attributes["size"]][1]
    pos = POSITION_WORDS[attributes["position"]][1]
    spd = SPEED_WORDS[attributes["speed"]][1]
    light = LIGHTING_WORDS.get(attributes.get("lighting", ""), ["in a room"])
    extra = ""
    if label == 10:
        extra = f", strumming with the {attributes.get('handedness', 'right')} hand"
    templates = [
        lambda: f"{pick(subj)} {pick(pos)} {pick(vps)} {pick(spd)}",
        lambda: f"{pick(subj)} {pick(pos)} is {pick(gers)} {pick(spd)}",
        lambda: f"{pick(pos)}, {pick(subj)} {pick(vps + [vp0])} {pick(spd)}",
        lambda: f"{pick(subj)} {pick(gers)} {pick(spd)} {pick(pos)}",
        lambda: f"the camera shows {pick(subj)} {pick(pos)} {pick(gers)} {pick(spd)}",
        lambda: f"{pick(subj)} {pick(pos)} {pick(vps + [vp0])} {pick(spd)} {pick(light)}",
        lambda: f"{pick(subj)} standing {pick(pos)} {pick(vps)} {pick(spd)}{extra}",
    ]
    order = rng.permutation(len(templates))
    refs = [canonical_caption(label, attributes)]
    n = max(5, n)
    for attempt in range(200):
        c = templates[order[attempt % len(templates)]]()
        if c not in refs:
            refs.append(c)
        if len(refs) >= n:
            break
    return refs


def class_references(label: int) -> list[str]:
    """Class-level references of a gesture whose attributes are unknown (real DvsGesture
    segments): every verb and gerund phrase of the class after "a person"."""
    vp0, vps, gers = CLASS_PHRASES[int(label)]
    return ([f"a person {vp0}"] + [f"a person {v}" for v in vps]
            + [f"a person is {g}" for g in gers])
