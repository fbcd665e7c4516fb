"""Process trees by PID, through psutil: what a launcher needs to stop what it started.

Used by the ``unicon federate`` launcher (the local SuperLink and what it spawned), the
loopback deployment (``deploy/loopback.py``) and the answer timer (a process's age). A zombie
(exited, not yet reaped by its parent) counts as gone everywhere; a process that vanishes while
being read is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import psutil


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def descendants(pids: Iterable[int]) -> list[int]:
    """Live PIDs below any of ``pids`` in the process tree (children, grandchildren, ...)."""
    found: set[int] = set()
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    return sorted(pid for pid in found if alive(pid))


def age_s(pid: int | None = None) -> float | None:
    """Seconds since process ``pid`` (default: this one) started; None when it is gone."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    return max(0.0, time.time() - started)


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when it is gone or not readable)."""
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def find(matches: Callable[[list[str]], bool]) -> list[int]:
    """PIDs of the live processes whose command line ``matches``, sorted."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info.get("cmdline") or []
        if args and matches(list(args)) and alive(proc.pid):
            out.append(proc.pid)
    return sorted(out)
