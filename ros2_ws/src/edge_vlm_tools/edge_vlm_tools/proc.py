"""The processes of a graph, from ``/proc`` (Linux): children and descendants of a launcher, and
their resident memory (``VmRSS``). Used by the runner (the node processes launch started) and
the demo (the graph's RSS, reported by the bench as ``graph_rss_mb_multi`` / ``_single``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class GraphMemory:
    """Resident memory of a graph's processes at one moment, and the CPU time they used."""

    rss_mb: float                 # sum of VmRSS (MiB)
    processes: dict[int, str]     # pid -> command name
    cpu_s: dict[str, float] = field(default_factory=dict)    # command name -> user + system s


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        out[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    return out


def children(pid: int | None = None) -> list[int]:
    """Pids of the children of ``pid`` (default: this process)."""
    me = os.getpid() if pid is None else pid
    return [p for p, parent in _parents().items() if parent == me]


def descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid`` (children, their children, ...)."""
    parents = _parents()
    out, frontier = [], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        out += frontier
    return out


def rss_kb(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB (0: gone, a zombie, or unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (s; 0.0 when unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def graph_memory(launcher_pid: int) -> GraphMemory:
    """The summed RSS of the processes below ``launcher_pid`` (the node processes a launcher
    started; the launcher itself not counted)."""
    pids = {p: rss_kb(p) for p in descendants(launcher_pid)}
    pids = {p: kb for p, kb in pids.items() if kb > 0}
    names = {p: _comm(p) for p in pids}
    return GraphMemory(sum(pids.values()) / 1024.0, names,
                       {names[p]: round(cpu_seconds(p), 2) for p in pids})
