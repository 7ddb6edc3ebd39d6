"""CPU time of a process and its descendants, read from /proc (Linux): what a benchmark phase
cost the server and the PostgreSQL backends, whoever else shares the machine."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process, or None if it is gone: user and system time of
    the process and of its children that exited and were reaped (a closed PostgreSQL backend
    counts in the postmaster's), so a tree's sum never goes down."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(value) for value in fields[11:15]) / TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every live descendant (threads included).

    A descendant that exited and was reaped counts in its parent's children time; one that
    exited and was not reaped yet is missing until it is.
    """
    parents: dict[int, list[int]] = defaultdict(list)
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(entry)
        if stat is not None:
            parents[stat[0]].append(int(entry))
            cpu[int(entry)] = stat[1]
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(parents.get(pid, ()))
    return total


def parent_of(pid: int) -> int | None:
    stat = _stat(str(pid))
    return None if stat is None else stat[0]


def cpu_seconds(pid: int) -> float:
    """CPU seconds one process used so far (itself only), 0 if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS
