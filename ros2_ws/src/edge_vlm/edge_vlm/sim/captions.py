"""Compositional caption grammar: class phrase + subject, position, speed (+ lighting).

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
