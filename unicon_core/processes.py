"""Process trees by PID (through psutil) and loopback ports: what a launcher needs to start,
wait for and stop what it started.

One set of helpers for both launchers of :mod:`unicon_flower.launcher` (``flwr run`` with its
local SuperLink, and the loopback deployment of every role) and the answer timer (a process's
age). A zombie (exited, not yet reaped by its parent) counts as gone everywhere; a process that
vanishes while being read is skipped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence

import psutil

#: The only host the launchers bind or contact.
LOOPBACK = "127.0.0.1"


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


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (it may be taken again before it is bound)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               proc: subprocess.Popen | None = None, poll_s: float = 0.2) -> None:
    """Poll ``check`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout_s``.

    With ``proc``, fail early (``RuntimeError``) if that process exits before ``check`` holds.
    """
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process {proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s} s")
        time.sleep(poll_s)


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None,
                  host: str = LOOPBACK) -> None:
    """Block until something accepts TCP connections on ``host:port`` (bounded)."""

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        return False

    wait_until(listening, timeout_s, f"something to listen on {host}:{port}", proc, poll_s=0.3)


def send_signal(pid: int, sig: int, group: bool = False) -> None:
    """``sig`` to ``pid`` (or its process group), ignoring a process already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


def terminate(pids: Sequence[int], grace_s: float = 10.0, groups: Sequence[int] = (),
              done: Callable[[], bool] | None = None) -> None:
    """SIGTERM ``pids`` (and the process ``groups``), wait up to ``grace_s`` for them to go
    (and ``done`` to hold), then SIGKILL whatever is left."""
    for group in groups:
        send_signal(group, signal.SIGTERM, group=True)
    for pid in pids:
        send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (
            any(map(alive, pids)) or (done is not None and not done())):
        time.sleep(0.2)
    kill(pids, groups)


def kill(pids: Sequence[int], groups: Sequence[int] = ()) -> None:
    """SIGKILL the process ``groups`` and every one of ``pids`` still alive (a crash)."""
    for group in groups:
        send_signal(group, signal.SIGKILL, group=True)
    for pid in pids:
        if alive(pid):
            send_signal(pid, signal.SIGKILL)
