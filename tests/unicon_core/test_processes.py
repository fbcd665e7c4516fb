"""Process trees through psutil: descendants, liveness (zombies are gone), command lines; the
launchers' port and stop helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from unicon_core.processes import (
    age_s,
    alive,
    cmdline,
    descendants,
    find,
    free_port,
    terminate,
    wait_for_port,
    wait_until,
)


def _wait(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_tree_is_found_named_and_gone_after_a_kill() -> None:
    # Prepare: a shell that starts a sleeping grandchild, tagged so that find() sees only it
    tag = f"unicon-test-{uuid.uuid4().hex}"
    parent = subprocess.Popen(
        ["/bin/sh", "-c", f'{sys.executable} -c "import time; time.sleep(60)" {tag} & wait'],
        start_new_session=True,
    )
    try:
        _wait(lambda: len(descendants([parent.pid])) == 1)

        # Execute
        (grandchild,) = descendants([parent.pid])
        found = find(lambda args: tag in args)

        # Assert
        assert alive(parent.pid) and alive(grandchild)
        assert found == [grandchild] and cmdline(grandchild)[-1] == tag
        assert descendants([grandchild]) == []
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
    _wait(lambda: not alive(grandchild))  # reaped by init, or a zombie: gone either way
    assert not alive(parent.pid) and cmdline(parent.pid) == [] and find(lambda a: tag in a) == []


def test_an_unknown_pid_is_not_alive_and_has_no_descendants() -> None:
    # Prepare: a process that has exited and been reaped
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)

    # Assert
    assert not alive(proc.pid) and descendants([proc.pid]) == [] and cmdline(proc.pid) == []


def test_age_of_this_process_and_of_a_gone_one() -> None:
    # Prepare
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)

    # Execute
    mine, gone = age_s(), age_s(proc.pid)

    # Assert
    assert mine is not None and 0.0 < mine < 24 * 3600
    assert gone is None


def test_terminate_ends_a_process_that_ignores_sigterm_with_sigkill() -> None:
    # Prepare: a child that ignores SIGTERM, and one that exits on it
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ready"

    # Execute
    start = time.monotonic()
    terminate([stubborn.pid, polite.pid], grace_s=1.0)
    stubborn.wait(timeout=10)
    polite.wait(timeout=10)

    # Assert: SIGTERM for the polite one, SIGKILL after the grace for the stubborn one
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert time.monotonic() - start >= 1.0


def test_wait_for_port_sees_a_listener_and_times_out_naming_the_port() -> None:
    # Prepare: a listening socket on a free port, and a port nobody listens on
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()

        # Execute / Assert: returns at once while something listens
        wait_for_port(port, timeout_s=5)
    with pytest.raises(TimeoutError, match=str(port)):
        wait_for_port(port, timeout_s=0.5)


def test_wait_until_fails_early_when_the_watched_process_exits() -> None:
    # Prepare
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(timeout=10)

    # Execute / Assert
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_until(lambda: False, 30, "never", proc)
