"""The Flower launcher behind ``unicon federate`` and ``unicon demo`` (:mod:`unicon_flower.cli`).

Both launch the Flower app of this repository with ``flwr run <repo> local --stream`` (Flower's
local simulation) in a subprocess whose environment is set here, never at import:

* ``FLWR_HOME`` inside the run folder, with a ``config.toml`` naming Flower's managed local
  SuperLink; ``--federation-config`` gives the run one virtual SuperNode per configured site;
* runtime dependency installation and telemetry off;
* the managed local SuperLink on two free ports of our own, so a SuperLink someone else started
  is never reused; it is stopped by its PID afterwards, so nothing keeps running
  (:class:`KeptSuperLink` keeps one for several runs instead, and stops it at its end).

Flower's run config only carries the hydra overrides (written to ``run_config.toml``): the
Flower run-config boundary, where settings become text (in process,
:mod:`unicon_flower.runner` builds the same run config from typed ``RunSettings``).

The second launcher, :mod:`unicon_flower.loopback`, starts a whole deployment on 127.0.0.1 with
the same environment, run-config file and process helpers.

The console stays quiet (:mod:`unicon_core.console`): Flower's whole output goes to
``<run folder>/flower.log`` and the console shows one progress bar over the rounds; with ``-v``
the output is shown as well as logged.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicon_core import console
from unicon_core.federation.outputs import (
    LATEST,
    RESULTS_FILE,
    ROUNDS_FILE,
    TASKS_FILE,
    new_run_dir,
    write_atomic,
)
from unicon_core.hydra_config import load_settings
from unicon_core.processes import cmdline, descendants, find, free_port, terminate

if TYPE_CHECKING:
    from unicon_core.federation.config import ExperimentSettings

#: Flower's switches for every run either launcher (or the engine in process) starts: no
#: telemetry, no runtime dependency installation, no update check.
FLOWER_SWITCHES = {"FLWR_TELEMETRY_ENABLED": "0",
                   "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                   "FLWR_DISABLE_UPDATE_CHECK": "1"}
FLWR_HOME_DIR = "flwr_home"
RUN_CONFIG_FILE = "run_config.toml"
SUPERLINK_LOG = Path("local-superlink") / "superlink.log"
SIMULATION_PROCESS = "flwr-simulation"
#: Everything ``flwr run --stream`` printed (SuperLink start, ServerApp and ClientApp logs).
FLOWER_LOG = "flower.log"


def project_root() -> Path:
    """The repository holding the Flower app (``pyproject.toml`` with ``[tool.flwr.app]``)."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise FileNotFoundError(f"{root} is not the unicon Flower app (no [tool.flwr.app])")
    return root


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON escaping is valid TOML for these characters)."""
    return json.dumps(value)


def write_flower_home(flwr_home: Path) -> Path:
    """``$FLWR_HOME/config.toml``: the ``local`` federation, Flower's managed local SuperLink
    (simulation mode). The simulation's size and resources go with each run
    (:func:`federation_config_args`), not into this file (its ``options.`` fields are
    deprecated in Flower 1.41)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    write_atomic(path, "\n".join([
        "[superlink]", 'default = "local"', "", "[superlink.local]", 'address = ":local:"', "",
    ]))
    return path


def federation_config_args(num_supernodes: int, cpus_per_site: int = 1,
                           gpus_per_site: float = 0.0) -> list[str]:
    """``flwr run --federation-config``: one virtual SuperNode per site, each with
    ``cpus_per_site`` CPUs and ``gpus_per_site`` of a GPU (0 where torch sees no CUDA)."""
    return ["--federation-config", f"num-supernodes={int(num_supernodes)} "
            f"client-resources-num-cpus={int(cpus_per_site)} "
            f"client-resources-num-gpus={site_gpus(gpus_per_site)}"]


def site_gpus(gpus_per_site: float) -> float:
    """The share of a GPU each simulated site asks for: ``gpus_per_site``, or 0 where torch
    sees no CUDA (Ray would otherwise wait for a GPU that is not there)."""
    import torch

    return float(gpus_per_site) if torch.cuda.is_available() else 0.0


def flower_tool_env(python: str = sys.executable, **extra: str) -> dict[str, str]:
    """Environment of every Flower command either launcher starts (a copy; ours is unchanged):
    ``python``'s tools first on ``PATH`` (Flower spawns ``flower-superlink``,
    ``flwr-simulation``, ``flower-supernode`` by name), no telemetry, no runtime dependency
    installation, no update check; ``extra`` on top."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    env.update(FLOWER_SWITCHES, **extra)
    return env


def flwr_executable(python: str = sys.executable) -> str:
    """The ``flwr`` command beside ``python`` (else the one on ``PATH``)."""
    return shutil.which("flwr", path=str(Path(python).parent)) or "flwr"


def write_run_config(path: Path, overrides: Sequence[str], extra: dict[str, str] | None = None
                     ) -> Path:
    """The ``--run-config`` file of a ``flwr run`` (owner-only, atomic): the hydra
    ``overrides`` as one shell-quoted string (the Flower run-config boundary) and ``extra``
    string keys (e.g. ``fab-signature``)."""
    lines = ['experiment = ""', f"overrides = {_toml_str(_join(overrides))}"]
    lines += [f"{key} = {_toml_str(value)}" for key, value in (extra or {}).items()]
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def flower_env(flwr_home: Path, ports: tuple[int, int] | None = None) -> dict[str, str]:
    """Environment of the ``flwr run`` subprocess of :func:`launch_flower_run`: its
    ``FLWR_HOME`` and the local SuperLink's two ports (``ports``, else two free ones)."""
    http_port, control_port = ports or (free_port(), free_port())
    env = flower_tool_env(
        FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
    )
    level = console.verbosity()
    if level == console.QUIET:
        # nothing reaches the console: Flower's processes log everything, into flower.log
        env[console.VERBOSITY_ENV] = str(console.EVERYTHING)
    else:
        env[console.VERBOSITY_ENV] = str(level)
        if level == console.VERBOSE:  # shown: without deprecation noise from process start
            env["PYTHONWARNINGS"] = console.child_env_warnings()
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
    terminate(victims, grace_s)
    return victims


class KeptSuperLink:
    """One managed local SuperLink kept for several ``flwr run``s (a benchmark suite, a
    sweep), so that only the first run pays for starting it.

    Flower starts its local SuperLink on the first ``flwr run`` and reuses one that answers on
    the same ports; this object fixes the ports and ``FLWR_HOME`` for every run given it, and
    :meth:`close` (or leaving the ``with`` block) stops the SuperLink and what it started, by
    PID. Without it, each run gets its own SuperLink on fresh ports, stopped after the run.
    """

    def __init__(self, flwr_home: Path) -> None:
        self.flwr_home = Path(flwr_home)
        write_flower_home(self.flwr_home)
        self.ports = (free_port(), free_port())

    def close(self) -> list[int]:
        """Stop the SuperLink (if one was started) and everything it started."""
        return stop_superlink(self.flwr_home)

    def __enter__(self) -> KeptSuperLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch_flower_run(
    run_dir: Path,
    overrides: Sequence[str],
    num_sites: int,
    timeout_s: float | None = None,
    gpus_per_site: float = 0.0,
    rounds: int | None = None,
    superlink: KeptSuperLink | None = None,
) -> int:
    """``flwr run <repo> local --stream`` for this run; returns its exit code.

    Its output goes to ``<run_dir>/flower.log`` (and to the console with ``-v``); quiet, the
    console shows a bar over ``rounds``. Without ``superlink``, the local SuperLink the run
    starts is stopped before returning, whatever happened; with it, the run uses (or starts)
    that kept SuperLink and leaves it running for the next run.
    """
    flwr_home = superlink.flwr_home if superlink else run_dir / FLWR_HOME_DIR
    if superlink is None:
        write_flower_home(flwr_home)
    run_config = write_run_config(run_dir / RUN_CONFIG_FILE, overrides)
    cmd = [flwr_executable(), "run", str(project_root()), "local", "--stream", "--run-config",
           str(run_config), *federation_config_args(num_sites, gpus_per_site=gpus_per_site)]
    quiet = console.verbosity() == console.QUIET
    progress = RoundProgress(run_dir, rounds) if quiet and rounds else None
    try:
        return run_logged(cmd, flower_env(flwr_home, superlink.ports if superlink else None),
                          run_dir, run_dir / FLOWER_LOG, echo=not quiet, timeout_s=timeout_s,
                          poll=progress.poll if progress else None)
    finally:
        if progress:
            progress.close()
        if superlink is None:
            stop_superlink(flwr_home)


def run_logged(
    cmd: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    echo: bool = False,
    timeout_s: float | None = None,
    poll: Callable[[], None] | None = None,
    poll_s: float = 1.0,
) -> int:
    """Run ``cmd`` with its stdout and stderr appended to ``log_path`` (colour codes removed),
    echoed to our stdout when ``echo``; ``poll`` is called every ``poll_s`` while it runs.

    Returns the exit code; past ``timeout_s`` the process is killed and
    ``subprocess.TimeoutExpired`` raised, as ``subprocess.run`` does.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log_file:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        assert proc.stdout is not None
        reader = threading.Thread(target=_copy_lines, args=(proc.stdout, log_file, echo),
                                  daemon=True)
        reader.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                try:
                    code = proc.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if poll is not None:
                        poll()
                    if deadline is not None and time.monotonic() > deadline:
                        raise subprocess.TimeoutExpired(list(cmd), timeout_s) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
        if poll is not None:
            poll()
        return code


def _copy_lines(stream: Any, log_file: Any, echo: bool) -> None:
    for line in stream:
        log_file.write(console.plain(line))
        log_file.flush()
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()


class RoundProgress:
    """A progress bar over a run's rounds, read from its ``rounds.jsonl`` (one line a round)
    and ``tasks.json`` (written once the sites have answered the query round)."""

    def __init__(self, run_dir: Path, rounds: int) -> None:
        from tqdm import tqdm

        self.run_dir = run_dir
        self.done = self._count()  # a resumed run starts after its recorded rounds
        self.bar = tqdm(total=rounds, initial=self.done, desc="rounds", unit="round",
                        file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}{postfix}")
        self.bar.set_postfix_str("starting Flower and querying the sites")

    def _count(self) -> int:
        try:
            lines = (self.run_dir / ROUNDS_FILE).read_text().splitlines()
        except OSError:
            return 0
        count = 0
        for line in lines:  # the last line may be half-written
            try:
                json.loads(line)
            except ValueError:
                break
            count += 1
        return count

    def _tasks(self) -> int | None:
        try:
            return len(json.loads((self.run_dir / TASKS_FILE).read_text()))
        except (OSError, ValueError):
            return None

    def poll(self) -> None:
        """Move the bar to the rounds recorded so far."""
        done, tasks = self._count(), self._tasks()
        if tasks is not None:
            state = "done" if done >= (self.bar.total or 0) else f"round {done + 1} running"
            self.bar.set_postfix_str(f"{tasks} tasks, {state}", refresh=False)
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done
        elif sys.stderr.isatty():
            self.bar.refresh()  # the elapsed time moves on

    def close(self) -> None:
        """Finish the bar's line."""
        self.bar.close()


def _join(overrides: Sequence[str]) -> str:
    return " ".join(shlex.quote(o) for o in overrides)


def prepare_run(overrides: Sequence[str]) -> tuple[ExperimentSettings, Path, list[str]]:
    """A run's validated settings, its run folder (made; the latest one with
    ``resume=true``) and its overrides with both folders pinned, as every launcher runs it."""
    from unicon_core.commands.errors import UsageError, config_errors

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
    return settings, run_dir, [*overrides, f"federation.runs_dir='{runs_dir}'",
                               f"federation.run_dir='{run_dir}'"]


def check_finished(run_dir: Path, code: int) -> Path:
    """``run_dir`` when the run exited with 0 and wrote its results; else a
    ``RunFailedError`` pointing at its Flower log and quoting its last error line."""
    from unicon_core.commands.errors import RunFailedError

    if code != 0 or not (run_dir / RESULTS_FILE).is_file():
        raise RunFailedError(
            f"the federated run failed (exit code {code}); its output is in "
            f"{run_dir / FLOWER_LOG}{_last_error(run_dir / FLOWER_LOG)}"
        )
    return run_dir


def run_federated(overrides: Sequence[str], timeout_s: float | None = None,
                  superlink: KeptSuperLink | None = None) -> Path:
    """Run (or with ``resume=true`` continue) a federated experiment; returns its run folder.

    ``overrides`` are hydra overrides, e.g. ``["experiment=demo", "federation.rounds=5"]``.
    Outputs go to ``federation.runs_dir`` (default ``<repo>/runs``). With ``superlink``, the
    run goes to that kept local SuperLink (see :class:`KeptSuperLink`).
    """
    settings, run_dir, full = prepare_run(overrides)
    code = launch_flower_run(run_dir, full, len(settings.federation.sites), timeout_s,
                             gpus_per_site=settings.federation.gpus_per_site,
                             rounds=settings.federation.rounds, superlink=superlink)
    return check_finished(run_dir, code)


def _last_error(log_path: Path) -> str:
    """The log's last ``ERROR`` line, as a hint in the failure message ("" if none)."""
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-2000:]
    except OSError:
        return ""
    errors = [line.strip() for line in tail if "ERROR" in line and line.strip()]
    return f"; last error: {errors[-1][:300]}" if errors else ""


def results_table(results: dict[str, Any]) -> str:
    """A plain-text per-task table of ``results.json``."""
    synthetic = set(results.get("synthetic", []))
    lines = [f"{'task':<14} {'kind':<15} {'metric':<8} {'value':>7}  {'data':<9} per site"]
    for task, entry in results["tasks"].items():
        from unicon_core.federation.external import site_cell  # n and 95 % CI per site

        per_site = ", ".join(
            f"{s} {site_cell(v, entry.get('per_site_n', {}).get(s), entry.get('per_site_ci95', {}).get(s))}"  # noqa: E501
            for s, v in entry["per_site"].items()
        )
        data = "SYNTHETIC" if task in synthetic else "real"
        lines.append(f"{task:<14} {entry['kind']:<15} {entry['metric']:<8} "
                     f"{_fmt(entry['value']):>7}  {data:<9} {per_site}")
    for site, ext in results.get("external_validation", {}).items():
        from unicon_core.federation.external import site_cell

        lines.append(f"external validation {site} ({ext['task']}, never trained): "
                     f"{ext['metric']} {site_cell(ext['value'], ext['n'], ext.get('ci95'))}")
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
    print(run_report(run_dir))
    return run_dir


def run_report(run_dir: Path) -> str:
    """What a finished run prints: where its outputs and log are, then the results table."""
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    return (f"run folder: {run_dir} (Flower's output: {FLOWER_LOG})\n\n"
            f"{results_table(results)}")
