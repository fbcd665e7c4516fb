"""A whole deployment on one machine's loopback, driven through the deploy scripts: the
second launcher beside :mod:`unicon_flower.launcher` (sharing its Flower environment, run-config
file and ``flwr`` lookup, and the port/process helpers of :mod:`unicon_core.processes`).

Used by the integration test (``tests/deploy``) and ``simulations/cold_start_bench.py``: a test
PKI, the SuperLink (TLS, SuperNode authentication, state database), one SuperNode per site with
its own key, and ``flwr run`` by the researcher, each started exactly as
``docs/deployment.md`` tells a coordinator, a hospital and a researcher to do it. Every process
starts in its own session; :meth:`LoopbackFederation.stop` ends each one by PID (its process
group and every descendant, found with psutil), first with SIGTERM, then SIGKILL. Only
127.0.0.1 is ever contacted. Faults: :meth:`LoopbackFederation.kill_superlink` and
:meth:`LoopbackFederation.kill_site` SIGKILL a role with all its processes (a crash),
:meth:`LoopbackFederation.start_superlink` restarts the SuperLink on the same database and
:meth:`LoopbackFederation.restart_site` a site with the same key. Signed apps:
:meth:`LoopbackFederation.make_signing_key` makes the consortium's key and the sites'
trusted-entities file (sites started afterwards run only signed apps),
:meth:`LoopbackFederation.snapshot_app` freezes the app that later runs submit, and
:meth:`LoopbackFederation.sign` signs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from unicon_core.files import write_atomic
from unicon_core.processes import (
    LOOPBACK,
    alive,
    descendants,
    free_port,
    kill,
    terminate,
    wait_for_port,
    wait_until,
)
from unicon_flower.launcher import flower_tool_env, flwr_executable, write_run_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
HOST = LOOPBACK

__all__ = ["HOST", "LoopbackFederation", "alive", "free_port", "wait_until"]


@dataclass
class LoopbackFederation:
    """Coordinator, sites and researcher of one federation on 127.0.0.1 (see module doc)."""

    root: Path
    sites: dict[str, Path]
    executor: str = "warm"
    name: str = "hospitals"
    python: str = sys.executable
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    used_ports: set[int] = field(default_factory=set)
    trusted_entities: Path | None = None
    app: Path = REPO

    def __post_init__(self) -> None:
        if self.executor not in ("warm", "flower"):
            raise ValueError(f"executor must be 'warm' or 'flower', got {self.executor!r}")
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # logs, state, keys: owner-only
        self.pki = self.root / "pki"
        self.home = self.root / "researcher"

    # ---------------------------------------------------------------- processes
    def env(self, **extra: str) -> dict[str, str]:
        """Environment of every command: this interpreter's tools, one torch thread."""
        return flower_tool_env(self.python, PYTHON=self.python, OMP_NUM_THREADS="1", **extra)

    def run(self, args: Sequence[str], timeout_s: float, **extra: str
            ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion (its output captured), bounded by ``timeout_s``."""
        proc = subprocess.Popen(list(args), env=self.env(**extra), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.procs[f"run-{proc.pid}"] = proc
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._stop_one(proc)
            out, _ = proc.communicate()
            return subprocess.CompletedProcess(proc.args, -signal.SIGKILL, out + "\n[timeout]")
        finally:
            self.procs.pop(f"run-{proc.pid}", None)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out)

    def start(self, label: str, args: Sequence[str], **extra: str) -> subprocess.Popen:
        """Start a long-running command in its own session, output to ``<root>/<label>.log``.

        The log is appended to, so a command restarted under the same label keeps its history.
        """
        fd = os.open(self.root / f"{label}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # also a log an earlier version left world-readable
        log = os.fdopen(fd, "a")
        proc = subprocess.Popen(list(args), env=self.env(**extra), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[label] = proc
        return proc

    def wait(self, label: str, timeout_s: float) -> int | None:
        """Wait (bounded) for a started command to exit; its exit code, or None if it runs on."""
        proc = self.procs[label]
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self.stop(label)
        return code

    def log(self, label: str) -> str:
        """What a started command has written so far."""
        path = self.root / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, label: str | None = None, grace_s: float = 10.0) -> None:
        """Stop one started command (or all), by PID, with its group and descendants."""
        labels = [label] if label else list(self.procs)
        for name in labels:
            proc = self.procs.pop(name, None)
            if proc is not None:
                self._stop_one(proc, grace_s)

    def _stop_one(self, proc: subprocess.Popen, grace_s: float = 10.0) -> None:
        terminate([proc.pid, *descendants([proc.pid])], grace_s, groups=[proc.pid],
                  done=lambda: proc.poll() is not None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def kill(self, label: str) -> list[int]:
        """SIGKILL one started command and everything below it at once (a crash).

        Returns the PIDs killed (the command, its group and descendants); all are gone on return.
        """
        proc = self.procs.pop(label)
        pids = [proc.pid, *descendants([proc.pid])]
        kill(pids, groups=[proc.pid])
        proc.wait(timeout=10)
        wait_until(lambda: not any(map(alive, pids)), 10, f"SIGKILLed {label} to be gone")
        return pids

    def __enter__(self) -> LoopbackFederation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def new_port(self) -> int:
        """A free loopback port that no role of this federation was given before.

        ``free_port`` alone can hand out the same port twice when asked twice before either
        binds it (two SuperNodes then clash: "address already in use").
        """
        port = free_port()
        while port in self.used_ports:
            time.sleep(0.05)
            port = free_port()
        self.used_ports.add(port)
        return port

    # ---------------------------------------------------------------- roles
    def make_pki(self, extra_sites: Sequence[str] = ()) -> None:
        """Test CA, SuperLink certificate, one key pair per site (``deploy/make_test_pki.sh``)."""
        res = self.run([str(DEPLOY / "make_test_pki.sh"), str(self.pki), *self.sites,
                        *extra_sites], timeout_s=120)
        if res.returncode != 0:
            raise RuntimeError(res.stdout)

    def start_superlink(self, timeout_s: float = 120.0) -> None:
        """Coordinator: SuperLink with TLS, node auth and a state database on a free port.

        Called again after a crash it restarts the SuperLink on the same port, certificates and
        database (``<root>/superlink/superlink.db``), as an operator would.
        """
        self.port = self.port or self.new_port()
        proc = self.start("superlink", [
            str(DEPLOY / "start_superlink.sh"), "--certs", str(self.pki),
            "--state", str(self.root / "superlink"), "--port", str(self.port),
        ])
        wait_for_port(self.port, timeout_s, proc)
        res = self.run([str(DEPLOY / "flwr_home.sh"), str(self.home), self.name,
                        f"{HOST}:{self.port}", str(self.pki / "ca.crt")], timeout_s=30)
        if res.returncode != 0:
            raise RuntimeError(res.stdout)

    def kill_superlink(self) -> list[int]:
        """SIGKILL the SuperLink with everything it started (SuperExec, the ServerApp)."""
        return self.kill("superlink")

    def register(self, sites: Sequence[str] | None = None) -> str:
        """Coordinator: register the sites' public keys (``deploy/register_sites.sh``)."""
        keys = [str(self.pki / "sites" / s / "node_key.pub") for s in (sites or self.sites)]
        res = self.run([str(DEPLOY / "register_sites.sh"), self.name, *keys], timeout_s=120,
                       FLWR_HOME=str(self.home))
        if res.returncode != 0:
            raise RuntimeError(res.stdout)
        return res.stdout

    def make_signing_key(self) -> Path:
        """Consortium: an Ed25519 signing key (OpenSSH files, as ``ssh-keygen -t ed25519``
        makes) and the sites' ``trusted_entities.yaml``; sites started afterwards run only
        apps it signed."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        write_atomic(self.pki / "consortium_key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()).decode())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        self.trusted_entities = self.pki / "trusted_entities.yaml"
        write_atomic(self.trusted_entities, f"consortium: '{public}'\n")
        return self.pki / "consortium_key"

    def snapshot_app(self) -> Path:
        """A frozen copy of the app (the files ``flwr run`` would submit from this checkout),
        which later runs submit instead: what was signed stays what runs while the checkout
        changes."""
        import io
        import zipfile

        from deploy.sign_fab import fab_bytes

        target = self.root / "app" / "unicon"
        with zipfile.ZipFile(io.BytesIO(fab_bytes(app=REPO))) as fab:
            fab.extractall(target, [n for n in fab.namelist() if not n.startswith(".info/")])
        self.app = target
        return target

    def sign(self, fab: bytes | None = None) -> str:
        """Consortium: ``fab-signature`` for ``fab`` (default: the FAB ``flwr run`` submits from
        :attr:`app`), made with ``deploy/sign_fab.py``'s functions."""
        from deploy.sign_fab import fab_bytes, load_private_key
        from deploy.site_guard import sign_fab

        content = fab_bytes(app=self.app) if fab is None else fab
        return sign_fab(content, load_private_key(self.pki / "consortium_key"), "consortium")

    def start_site(self, site: str, key_of: str | None = None, **extra: str) -> None:
        """Hospital: one SuperNode (+ warm executor) serving ``site`` with ``key_of``'s key."""
        key = self.pki / "sites" / (key_of or site) / "node_key"
        trust = ([] if self.trusted_entities is None
                 else ["--trusted-entities", str(self.trusted_entities)])
        self.start(f"site-{site}", [
            str(DEPLOY / "start_site.sh"), "--superlink", f"{HOST}:{self.port}",
            "--ca", str(self.pki / "ca.crt"), "--key", str(key),
            "--site-dir", str(self.sites[site]), "--state-dir", str(self.root / "state" / site),
            "--port", str(self.new_port()), "--executor", self.executor, *trust,
        ], FLWR_HOME=str(self.root / "site_home" / site), **extra)

    def kill_site(self, site: str) -> list[int]:
        """SIGKILL one site's SuperNode with its executor and running ClientApps (a crash)."""
        return self.kill(f"site-{site}")

    def restart_site(self, site: str, timeout_s: float = 180.0, pause_s: float = 5.0) -> int:
        """Start a crashed site again (same key, so same node id) until the SuperLink takes it.

        Flower 1.41 refuses to activate a node the SuperLink still counts as online (up to
        2 x 30 s after its last heartbeat: "Failed to activate SuperNode"); like a service
        manager restarting on failure, retry every ``pause_s`` until the SuperNode logs its
        node id. Returns the number of starts.
        """
        label, deadline, starts = f"site-{site}", time.monotonic() + timeout_s, 0
        while True:
            before = self.log(label).count("SuperNode ID:")
            self.start_site(site)
            starts += 1
            proc = self.procs[label]
            with contextlib.suppress(RuntimeError):
                wait_until(lambda n=before: self.log(label).count("SuperNode ID:") > n,
                           max(deadline - time.monotonic(), 1), f"{site} to rejoin", proc)
                return starts
            self.stop(label)
            if time.monotonic() + pause_s > deadline:
                raise TimeoutError(f"{site} could not rejoin within {timeout_s} s")
            time.sleep(pause_s)

    def _flwr_run_args(self, overrides: Sequence[str], signature: str = "") -> list[str]:
        run_config = write_run_config(self.root / "run_config.toml", overrides,
                                      {"fab-signature": signature} if signature else {})
        return [flwr_executable(self.python), "run", str(self.app), self.name, "--run-config",
                str(run_config), "--stream"]

    def flwr_run(self, overrides: Sequence[str], timeout_s: float, signature: str = ""
                 ) -> subprocess.CompletedProcess[str]:
        """Researcher: ``flwr run <app> <federation> --stream`` with hydra ``overrides`` (and
        the consortium's ``signature`` of the FAB in the run config)."""
        result = self.run(self._flwr_run_args(overrides, signature), timeout_s=timeout_s,
                          FLWR_HOME=str(self.home))
        write_atomic(self.root / "flwr_run.log", result.stdout)
        return result

    def start_flwr_run(self, overrides: Sequence[str], label: str = "flwr-run"
                       ) -> subprocess.Popen:
        """:meth:`flwr_run` without waiting: the streamed log goes to ``<root>/<label>.log``."""
        return self.start(label, self._flwr_run_args(overrides), FLWR_HOME=str(self.home))

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink lists as online (``flwr supernode ls``)."""
        res = self.run([flwr_executable(self.python), "supernode", "ls", self.name, "--format",
                        "json"], timeout_s=60,
                       FLWR_HOME=str(self.home))
        try:
            data = json.loads(res.stdout[res.stdout.index("{"):])
        except ValueError:
            return 0
        return sum(1 for n in data.get("nodes", []) if n.get("status") == "online")
