"""Event intake of the frame nodes: EventPacket messages into the core's
:class:`~edge_vlm.stream.intake.PacketIntake` (sequence gaps, checked decode + bin, counters),
which the offline evaluation runs too. This adapter adds what only a node has: the logger
(rejections are logged with a throttle: ``rejected packet seq=N (encoding 'e'): reason``) and
the sensor's ``frame_id`` for the outputs.
"""
from __future__ import annotations

import time
from typing import Any

from edge_vlm.stream.binner import FrameBinner
from edge_vlm.stream.frames import Rejection
from edge_vlm.stream.intake import IntakeResult, PacketIntake


class EventInput:
    """EventPacket messages -> closed frames; never raises (see the module doc)."""

    def __init__(self, logger, binner: FrameBinner, throttle_s: float = 2.0):
        self.logger = logger
        self.intake = PacketIntake(binner)
        self.throttle_s = float(throttle_s)
        self.frame_id = ""
        self._last_warn: dict[str, tuple[float, int]] = {}

    def feed(self, msg) -> IntakeResult:
        """One EventPacket message (the frames it closes, its rejections logged)."""
        res = self.intake.push(msg.encoding, msg.events, msg.width, msg.height, msg.time_base,
                               msg.seq, tag=msg, bigendian=bool(msg.is_bigendian))
        if res.accepted:
            self.frame_id = str(msg.header.frame_id)
        self._log(res.rejected)
        return res

    def flush(self) -> IntakeResult:
        """Close the open frame (end of a bag / camera stopped)."""
        res = self.intake.flush()
        self._log(res.rejected)
        return res

    def counters(self) -> dict[str, Any]:
        c = self.intake.counters
        return {"packets": c.packets, "events": c.events, "rejected": c.rejected,
                "seq_gaps": c.seq_gaps, "missing_packets": c.missing_packets}

    def _log(self, rejected: list[Rejection]) -> None:
        for r in rejected:
            self._warn(r.tag, r.reason)

    def _warn(self, msg, reason: str) -> None:
        """A throttled warning per kind of rejection (digits ignored), with the count of
        suppressed ones."""
        text = f"{getattr(msg, 'encoding', '')}:{reason}"
        key = "".join(c for c in text if not c.isdigit())[:80]
        now = time.monotonic()
        last, suppressed = self._last_warn.get(key, (-1e18, 0))
        if now - last < self.throttle_s:
            self._last_warn[key] = (last, suppressed + 1)
            return
        more = f" ({suppressed} similar suppressed)" if suppressed else ""
        try:
            self.logger.warning(f"rejected packet seq={getattr(msg, 'seq', '?')} "
                                f"(encoding '{getattr(msg, 'encoding', '?')}'): {reason}{more}")
        except Exception:
            pass
        self._last_warn[key] = (now, 0)
