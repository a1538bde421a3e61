"""ROS 2 domains on one machine: which ``ROS_DOMAIN_ID`` no graph here holds (standard library
only, no ROS). Used by ``edge_vlm_ros.lifeline.isolated_env`` (every graph run gets its own
domain) and by benchmarks that start several graphs at once (one domain each)."""
from __future__ import annotations

import os
import socket

__all__ = ["DOMAIN_IDS", "domain_in_use", "free_domain_id", "free_domain_ids"]

#: domain ids tried (0 is everyone's default; Fast DDS's ports stay below 32768 up to 101)
DOMAIN_IDS = range(1, 101)


def domain_in_use(domain: int) -> bool:
    """Whether a DDS participant of ``domain`` already holds its first unicast discovery port
    (RTPS: 7400 + 250 * domain + 10), i.e. another graph on this machine uses the domain."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("0.0.0.0", 7410 + 250 * domain))
        except OSError:
            return True
    return False


def free_domain_ids(count: int, seed: int | None = None) -> list[int]:
    """``count`` distinct ids of :data:`DOMAIN_IDS` that no participant on this machine holds,
    the first free ones from ``seed`` (default the pid) on; where fewer are free, the rest are
    taken in order from the seed's (distinct as long as ``count`` <= 100)."""
    n = len(DOMAIN_IDS)
    start = (os.getpid() if seed is None else seed) % n
    order = [DOMAIN_IDS[(start + k) % n] for k in range(n)]
    free = [d for d in order if not domain_in_use(d)][:count]
    rest = [d for d in order if d not in free]
    return free + rest[:count - len(free)]


def free_domain_id(seed: int | None = None) -> int:
    """One ``ROS_DOMAIN_ID`` no participant on this machine holds (:func:`free_domain_ids`)."""
    return free_domain_ids(1, seed)[0]
