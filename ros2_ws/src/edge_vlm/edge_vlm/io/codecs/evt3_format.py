"""EVT 3.0 words, the decoder state and what a decoded packet adds to the decoder's counters.

Shared by the two decoding paths (:mod:`.evt3_fast`, :mod:`.evt3_general`) and the decoder
(:mod:`.evt3`, which describes the format).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

import numpy as np

__all__ = ["ADDR_Y", "ADDR_X", "VECT_BASE_X", "VECT_12", "VECT_8", "TIME_LOW", "CONTINUED_4",
           "TIME_HIGH", "EXT_TRIGGER", "OTHERS", "CONTINUED_12", "WRAP_THRESHOLD_HIGH",
           "UNKNOWN_TYPES", "TRIGGER_DTYPE", "Evt3State", "Evt3Columns", "PacketTally",
           "no_triggers"]

ADDR_Y, ADDR_X, VECT_BASE_X, VECT_12, VECT_8 = 0x0, 0x2, 0x3, 0x4, 0x5
TIME_LOW, CONTINUED_4, TIME_HIGH, EXT_TRIGGER = 0x6, 0x7, 0x8, 0xA
OTHERS, CONTINUED_12 = 0xE, 0xF

#: A TIME_HIGH that goes back by more than this many units (of 4.096 ms) is a
#: 24-bit wrap; smaller backward steps are sensor jitter (half the 12-bit
#: range: a real wrap jumps back by ~4095, jitter by a few units).
WRAP_THRESHOLD_HIGH = 2048

#: word types EVT 3.0 does not define (a packet holding one is malformed)
UNKNOWN_TYPES = (0x1, 0x9, 0xB, 0xC, 0xD)

#: External trigger events of the last decoded packet.
TRIGGER_DTYPE = np.dtype([("t", "<i8"), ("id", "u1"), ("value", "u1")])


@dataclass
class Evt3State:
    """What the stream carries from packet to packet."""

    y: int = 0
    time_low: int = 0
    time_high: int = 0      # last raw 12-bit TIME_HIGH payload
    wraps: int = 0          # number of 24-bit wrap-arounds seen
    base_x: int = 0
    pol: int = 0
    seen_high: bool = False
    valid: bool = False     # TIME_LOW seen after a TIME_HIGH

    def copy(self) -> "Evt3State":
        return Evt3State(self.y, self.time_low, self.time_high, self.wraps, self.base_x,
                         self.pol, self.seen_high, self.valid)


#: trigger events (TRIGGER_DTYPE), or a function building them on first access
Triggers = Union[np.ndarray, Callable[[], np.ndarray]]


class PacketTally(NamedTuple):
    """What one decoded packet adds to the decoder's counters, and its trigger events."""

    events: int           # CD events
    rising: int           # trigger events with value 1
    triggers: int         # all trigger events
    trigger_events: Triggers


def no_triggers() -> np.ndarray:
    """An empty TRIGGER_DTYPE array (a fresh one: callers may keep it)."""
    return np.zeros(0, dtype=TRIGGER_DTYPE)


class Evt3Columns(NamedTuple):
    """Decoded events as plain columns (what ``Evt3Decoder.decode_columns`` returns)."""

    t: np.ndarray                 # int64 event times, ns
    y: np.ndarray                 # int64 rows
    xp: np.ndarray                # int64 ``x | p << 11``
    ends: np.ndarray | None       # event index where each joined packet ends (None: one packet)
