"""CPU time of a process and its descendants, read from /proc (Linux): what a benchmark phase
cost the server and the PostgreSQL backends, whoever else shares the machine."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, CPU seconds of its children that exited and were reaped),
    or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, (int(fields[13]) + int(fields[14])) / TICKS


def _kind(pid: int) -> str:
    """What a process is: for PostgreSQL, its role from the process title ("walwriter",
    "autovacuum worker", "backend" for a client connection); otherwise "process"."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "process"
    if not title.startswith("postgres: "):
        return "process"
    role = title.removeprefix("postgres: ")
    cluster, _, rest = role.partition(": ")
    if rest and "/" in cluster:  # Debian's cluster name first: "15/main: walwriter"
        role = rest
    known = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "autovacuum worker", "io worker")
    for name in known:
        if role.startswith(name):
            return name
    return "backend" if "[local]" in role or "127.0.0.1" in role or "(" in role else role.split(" ")[0]


@dataclass
class TreeCpu:
    """CPU seconds of a process tree at one moment: each live process's own, by pid (with its
    kind), and what its descendants that ended (and were reaped) used."""

    processes: dict[int, tuple[str, float]]
    exited: float

    @property
    def total(self) -> float:
        return self.exited + sum(used for _, used in self.processes.values())

    def used_since(self, before: TreeCpu) -> dict[str, float]:
        """CPU seconds used between ``before`` and this moment, by kind of process; what
        processes that ended meanwhile used after ``before`` is under "exited"."""
        used: dict[str, float] = defaultdict(float)
        for pid, (kind, seconds) in self.processes.items():
            earlier = before.processes.get(pid)
            used[kind] += seconds - (earlier[1] if earlier is not None and earlier[0] == kind else 0.0)
        gone = sum(seconds for pid, (_, seconds) in before.processes.items() if pid not in self.processes)
        used["exited"] += self.exited - before.exited - gone
        return dict(used)


def tree_cpu(root: int) -> TreeCpu:
    """The CPU used so far by ``root`` and every live descendant (threads included)."""
    parents: dict[int, list[int]] = defaultdict(list)
    stats: dict[int, tuple[float, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(entry)
        if stat is not None:
            parents[stat[0]].append(int(entry))
            stats[int(entry)] = (stat[1], stat[2])
    processes: dict[int, tuple[str, float]] = {}
    exited = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            own, reaped = stats[pid]
            processes[pid] = (_kind(pid), own)
            exited += reaped
        todo.extend(parents.get(pid, ()))
    return TreeCpu(processes, exited)


def tree_cpu_seconds(root: int) -> float:
    return tree_cpu(root).total


def parent_of(pid: int) -> int | None:
    stat = _stat(str(pid))
    return None if stat is None else stat[0]


def cpu_seconds(pid: int) -> float:
    """CPU seconds one process used so far (itself only), 0 if it is gone."""
    stat = _stat(str(pid))
    return 0.0 if stat is None else stat[1]
