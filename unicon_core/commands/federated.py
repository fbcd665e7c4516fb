"""Bodies of the federated CLI commands: ``unicon federate`` and ``unicon demo``.

Both launch the Flower app of this repository with ``flwr run <repo> local --stream`` (Flower's
local simulation) in a subprocess whose environment is set here, never at import:

* ``FLWR_HOME`` inside the run folder, with a ``config.toml`` whose ``local`` federation has one
  virtual SuperNode per configured site;
* runtime dependency installation and telemetry off;
* the managed local SuperLink on two free ports of our own, so a SuperLink someone else started
  is never reused; it is stopped by its PID afterwards, so nothing keeps running.

Flower's run config only carries the hydra overrides (written to ``run_config.toml``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unicon_core.federation.outputs import LATEST, RESULTS_FILE, new_run_dir, write_atomic
from unicon_core.hydra_config import load_settings
from unicon_core.processes import alive, cmdline, descendants, find

FLWR_HOME_DIR = "flwr_home"
RUN_CONFIG_FILE = "run_config.toml"
SUPERLINK_LOG = Path("local-superlink") / "superlink.log"
SIMULATION_PROCESS = "flwr-simulation"


def project_root() -> Path:
    """The repository holding the Flower app (``pyproject.toml`` with ``[tool.flwr.app]``)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise FileNotFoundError(f"{root} is not the unicon Flower app (no [tool.flwr.app])")
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON escaping is valid TOML for these characters)."""
    return json.dumps(value)


def write_flower_home(
    flwr_home: Path, num_supernodes: int, cpus_per_site: float = 1, gpus_per_site: float = 0.0
) -> Path:
    """``$FLWR_HOME/config.toml``: the ``local`` simulation federation with one node per site.

    Each ClientApp gets ``gpus_per_site`` of a GPU (a fraction shares one) when CUDA is visible,
    else none, so the same command runs on a CPU machine.
    """
    import torch

    gpus = gpus_per_site if torch.cuda.is_available() else 0.0
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    write_atomic(path, "\n".join([
        "[superlink]",
        'default = "local"',
        "",
        "[superlink.local]",
        'address = ":local:"',
        "",
        "[superlink.local.options]",
        f"num-supernodes = {int(num_supernodes)}",
        "",
        "[superlink.local.options.backend.client-resources]",
        f"num-cpus = {cpus_per_site}",
        f"num-gpus = {gpus}",
        "",
    ]))
    return path


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment of the ``flwr`` subprocess (a copy; ours is not changed)."""
    env = dict(os.environ)
    # flwr spawns `flower-superlink` and `flwr-simulation` by name: use this interpreter's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()),
    )
    return env


def superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLink started for ``flwr_home`` (its log path is unique to it)."""
    marker = str(flwr_home / SUPERLINK_LOG)
    return find(lambda args: any("flower-superlink" in a for a in args[:2]) and marker in args)


def stop_superlink(flwr_home: Path, settle_s: float = 30.0, grace_s: float = 10.0) -> list[int]:
    """Stop the SuperLink of ``flwr_home`` and everything it started, by PID.

    The simulation process finishes on its own once the run is over (it shuts Ray down), so it
    gets ``settle_s`` to exit; then the SuperLink and what it keeps running (its SuperExec, any
    leftover) are terminated.
    """
    links = superlink_pids(flwr_home)
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and any(
        SIMULATION_PROCESS in " ".join(cmdline(pid)) for pid in descendants(links)
    ):
        time.sleep(0.5)
    victims = descendants(links) + links
    for pid in victims:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in victims):
        time.sleep(0.2)
    for pid in victims:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    return victims


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def launch_flower_run(
    run_dir: Path,
    overrides: Sequence[str],
    num_sites: int,
    timeout_s: float | None = None,
    gpus_per_site: float = 0.0,
) -> int:
    """``flwr run <repo> local --stream`` for this run; returns its exit code.

    The local SuperLink it starts is stopped before returning, whatever happened.
    """
    flwr_home = run_dir / FLWR_HOME_DIR
    write_flower_home(flwr_home, num_sites, gpus_per_site=gpus_per_site)
    run_config = run_dir / RUN_CONFIG_FILE
    write_atomic(run_config, f'experiment = ""\noverrides = {_toml_str(_join(overrides))}\n')
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
    cmd = [flwr, "run", str(project_root()), "local", "--stream", "--run-config", str(run_config)]
    try:
        return subprocess.run(cmd, env=flower_env(flwr_home), cwd=run_dir, timeout=timeout_s,
                              check=False).returncode
    finally:
        stop_superlink(flwr_home)


def _join(overrides: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(o) for o in overrides)


def run_federated(overrides: Sequence[str], timeout_s: float | None = None) -> Path:
    """Run (or with ``resume=true`` continue) a federated experiment; returns its run folder.

    ``overrides`` are hydra overrides, e.g. ``["experiment=demo", "federation.rounds=5"]``.
    Outputs go to ``federation.runs_dir`` (default ``<repo>/runs``).
    """
    from unicon_core.commands.errors import RunFailedError, UsageError, config_errors

    overrides = list(overrides)
    with config_errors():
        settings = load_settings(overrides)
    runs_dir = Path(settings.federation.runs_dir or project_root() / "runs")
    if settings.federation.run_dir:
        run_dir = Path(settings.federation.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    elif settings.resume:
        latest = runs_dir / LATEST
        if not latest.exists():
            raise UsageError(f"resume=true but there is no {latest} to continue")
        run_dir = latest.resolve()
    else:
        run_dir = new_run_dir(runs_dir, settings.experiment)
    full = [*overrides, f"federation.runs_dir='{runs_dir}'", f"federation.run_dir='{run_dir}'"]
    code = launch_flower_run(run_dir, full, len(settings.federation.sites), timeout_s,
                             gpus_per_site=settings.federation.gpus_per_site)
    if code != 0 or not (run_dir / RESULTS_FILE).is_file():
        raise RunFailedError(
            f"the federated run failed (flwr exit code {code}); see the log above and "
            f"{run_dir / FLWR_HOME_DIR / SUPERLINK_LOG}"
        )
    return run_dir


def results_table(results: dict[str, Any]) -> str:
    """A plain-text per-task table of ``results.json``."""
    synthetic = set(results.get("synthetic", []))
    lines = [f"{'task':<14} {'kind':<15} {'metric':<8} {'value':>7}  {'data':<9} per site"]
    for task, entry in results["tasks"].items():
        per_site = ", ".join(f"{s} {_fmt(v)}" for s, v in entry["per_site"].items())
        data = "SYNTHETIC" if task in synthetic else "real"
        lines.append(f"{task:<14} {entry['kind']:<15} {entry['metric']:<8} "
                     f"{_fmt(entry['value']):>7}  {data:<9} {per_site}")
    comm = results["communication"]
    lines.append(
        f"bytes per site and round: up {comm['bytes_up_per_site_round']:,.0f}, down "
        f"{comm['bytes_down_per_site_round']:,.0f}; full model {comm['full_model_bytes']:,}"
    )
    for site, privacy in results.get("privacy", {}).items():
        lines.append(f"privacy {site}: epsilon {_fmt(privacy['epsilon'])} "
                     f"(delta {privacy['delta']:g})")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def demo_command(
    overrides: Sequence[str] = (), data_dir: Path | None = None, timeout_s: float | None = None
) -> Path:
    """``make demo``: prepare the demo sites if missing, run the federated demo, print a table."""
    from unicon_core.demo_data.prepare import prepare_demo

    data_root = (data_dir or project_root() / "demo_data").resolve()
    report = prepare_demo(data_root)
    built = [name for name, entry in report.items() if isinstance(entry, dict) and entry["built"]]
    print(f"demo sites in {data_root} ({'built ' + ', '.join(built) if built else 'reused'})")
    run_dir = run_federated(
        ["experiment=demo", f"federation.data_root='{data_root}'", *overrides], timeout_s
    )
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    print()
    print(results_table(results))
    print(f"\nrun folder: {run_dir}")
    return run_dir
