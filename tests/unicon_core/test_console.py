"""A quiet console (issue #16): verbosity levels, what they filter, Flower's output captured into
the run folder, a progress bar per round, and a real `unicon federate` run under a line budget."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from unicon_core import console
from unicon_flower import launcher as federated


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Warning filters, logger levels and the environment as they were before the test."""
    monkeypatch.delenv(console.VERBOSITY_ENV, raising=False)
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    levels = {name: logging.getLogger(name).level for name in console.DEPENDENCY_LOGGERS}
    for name in levels:  # as in a fresh process, whatever an earlier test (e.g. a bench) set
        logging.getLogger(name).setLevel(logging.NOTSET)
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    os.environ.pop(console.VERBOSITY_ENV, None)


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["demo"], 0),
        (["demo", "-v"], 1),
        (["federate", "-vv", "train.lr=0.1"], 2),
        (["federate", "--verbose", "-v"], 2),
        (["federate", "-vvv"], 2),
        (["federate", "--", "-v"], 0),  # after `--`: an argument, not an option
        (["federate", "federation.site_dirs=[-v]"], 0),
    ],
)
def test_count_verbose(argv: list[str], level: int) -> None:
    assert console.count_verbose(argv) == level


def test_verbosity_reads_the_environment_and_names_a_bad_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(console.VERBOSITY_ENV, raising=False)
    assert console.verbosity() == 0 and console.verbosity(default=1) == 1
    monkeypatch.setenv(console.VERBOSITY_ENV, "2")
    assert console.verbosity() == 2
    monkeypatch.setenv(console.VERBOSITY_ENV, "loud")
    with pytest.raises(ValueError, match=r"\$UNICON_VERBOSITY='loud': must be 0, 1 or 2"):
        console.verbosity()


def _emit() -> list[str]:
    """Warn as a dependency (a module of monai, a deprecation) and as unicon itself."""
    caught = []
    with warnings.catch_warnings(record=True) as seen:
        # keep the filters configure() installed; only make "default" actions repeatable
        warnings.warn_explicit("monai internals", UserWarning, "deprecate_utils.py", 1,
                               module="monai.utils.deprecate_utils", registry={})
        warnings.warn_explicit("old API", DeprecationWarning, "x.py", 1, module="unicon_core.x",
                               registry={})
        warnings.warn_explicit("site b has 3 rows", UserWarning, "x.py", 2,
                               module="unicon_core.data.x", registry={})
        caught = [str(w.message) for w in seen]
    return caught


@pytest.mark.usefixtures("restored")
def test_quiet_hides_dependency_warnings_and_logs_but_keeps_ours() -> None:
    warnings.simplefilter("always")

    assert console.configure(0) == 0

    assert _emit() == ["site b has 3 rows"]
    assert logging.getLogger("flwr").level == logging.WARNING
    assert os.environ[console.VERBOSITY_ENV] == "0" and os.environ["WANDB_SILENT"] == "true"


@pytest.mark.usefixtures("restored")
def test_verbose_shows_logs_and_very_verbose_filters_nothing() -> None:
    warnings.simplefilter("always")
    console.configure(1)
    assert logging.getLogger("flwr").level == logging.INFO
    assert _emit() == ["site b has 3 rows"]

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        console.configure(2)
        assert _emit() == ["monai internals", "old API", "site b has 3 rows"]
    assert os.environ[console.VERBOSITY_ENV] == "2"


@pytest.mark.usefixtures("restored")
def test_an_app_handler_applies_the_level_it_inherits_without_exporting_or_loudening() -> None:
    """What the ServerApp/ClientApp lifespan does: default 1, never louder than set before."""
    warnings.simplefilter("always")
    logging.getLogger("flwr").setLevel(logging.WARNING)  # e.g. a benchmark's choice

    assert console.configure(default=console.VERBOSE) == 1

    assert console.VERBOSITY_ENV not in os.environ
    assert logging.getLogger("flwr").level == logging.WARNING
    assert _emit() == ["site b has 3 rows"]


@pytest.mark.usefixtures("restored")
def test_an_app_lifespan_appends_flowers_records_to_the_run_log_it_is_given(
    tmp_path: Path,
) -> None:
    """The in-process engine's ClientApps (Ray actors) write their records to the run's log."""
    from flwr.supercore import log

    path = tmp_path / "flower.log"
    flwr = logging.getLogger("flwr")
    before = list(flwr.handlers)

    # as Flower enters and leaves it around a message
    for _ in console.app_lifespan(None, str(path)):
        log(logging.WARNING, "site a: a warning")
    log(logging.WARNING, "after the message")

    assert flwr.handlers == before
    [line] = path.read_text().splitlines()
    assert line.startswith("WARNING ") and line.endswith(f"[pid {os.getpid()}]: site a: a warning")


def test_a_process_already_writing_the_run_log_writes_each_record_once(tmp_path: Path) -> None:
    """The engine's own process (the ServerApp's) has the run log's handler already."""
    from flwr.supercore import log

    path = tmp_path / "flower.log"
    with console.log_file(path), console.log_file(path), console.log_file(""):
        log(logging.WARNING, "once")

    assert path.read_text().count("once") == 1


@pytest.mark.usefixtures("restored")
def test_flower_gets_everything_when_quiet_and_the_asked_level_otherwise(tmp_path: Path) -> None:
    console.configure(0)  # the console shows nothing of Flower: its processes log it all
    env = federated.flower_env(tmp_path)
    assert env[console.VERBOSITY_ENV] == "2" and "PYTHONWARNINGS" not in env
    console.configure(1)
    env = federated.flower_env(tmp_path)
    assert env[console.VERBOSITY_ENV] == "1"
    assert env["PYTHONWARNINGS"] == "ignore::DeprecationWarning,ignore::PendingDeprecationWarning,"\
        "ignore::FutureWarning"


@pytest.mark.parametrize(("level", "echo", "bar"), [(0, False, True), (1, True, False)])
def test_launch_shows_flowers_output_only_when_verbose(
    level: int, echo: bool, bar: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`unicon federate` quiet: a bar, Flower's output to flower.log only; -v: echoed too."""
    # Prepare
    seen: dict[str, object] = {}

    def fake_run_logged(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path,
                        **kwargs: object) -> int:
        seen.update(kwargs, cmd=cmd, log_path=log_path, env=env)
        return 0

    monkeypatch.setattr(federated, "run_logged", fake_run_logged)
    monkeypatch.setattr(federated, "stop_superlink", lambda flwr_home: [])
    monkeypatch.setenv(console.VERBOSITY_ENV, str(level))

    # Execute
    federated.launch_flower_run(tmp_path, ["federation.rounds=2"], 1, rounds=2)

    # Assert
    assert seen["log_path"] == tmp_path / federated.FLOWER_LOG
    assert seen["echo"] is echo and (seen["poll"] is not None) is bar
    assert "--stream" in seen["cmd"]  # type: ignore[operator]


NOISY = """
import sys
for i in range(300):
    print(f"\\x1b[92mINFO \\x1b[0m: line {i}", flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("echo", [False, True])
def test_run_logged_keeps_everything_in_the_log_and_echoes_only_when_asked(
    echo: bool, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    log_path = tmp_path / "run" / "flower.log"
    polls: list[int] = []

    # Execute
    code = federated.run_logged([sys.executable, "-c", NOISY], dict(os.environ), tmp_path,
                                log_path, echo=echo, poll=lambda: polls.append(1), poll_s=0.01)

    # Assert
    out = capfd.readouterr().out
    logged = log_path.read_text().splitlines()
    assert code == 0 and len(logged) == 301
    assert logged[0] == "INFO : line 0" and "a warning on stderr" in logged  # colours removed
    assert polls, "poll runs at least once (after the process ends)"
    if echo:
        assert out.count("\n") == 301 and "\x1b[92m" in out
    else:
        assert out == ""


def test_run_logged_kills_a_process_past_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        federated.run_logged([sys.executable, "-c", "import time; time.sleep(60)"],
                             dict(os.environ), tmp_path, tmp_path / "log", timeout_s=0.5,
                             poll_s=0.05)


def test_round_progress_follows_the_recorded_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    rounds = tmp_path / "rounds.jsonl"
    progress = federated.RoundProgress(tmp_path, rounds=3)

    # Execute / Assert
    progress.poll()
    assert progress.bar.n == 0 and "starting Flower" in progress.bar.postfix
    (tmp_path / "tasks.json").write_text(json.dumps({"a": {}, "b": {}}))
    rounds.write_text('{"round": 1}\n{"round": 2}\n{"rou')  # the last line half-written
    progress.poll()
    assert progress.bar.n == 2 and progress.bar.postfix == "2 tasks, round 3 running"
    rounds.write_text('{"round": 1}\n{"round": 2}\n{"round": 3}\n')
    progress.poll()
    progress.close()
    assert progress.bar.n == 3 and progress.bar.postfix == "2 tasks, done"
    err = capsys.readouterr().err
    assert "3/3" in err and err.count("\n") <= 1  # one line, redrawn in place


@pytest.mark.slow
def test_federate_prints_a_short_console_that_ends_with_the_results_table(
    tmp_path: Path,
) -> None:
    """The real `flwr run` path of `unicon federate`, as a user runs it (a new process)."""
    # Prepare
    from tests.server.fedtools import THREE_SITES, make_sites, tiny_overrides

    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != console.VERBOSITY_ENV}
    main = "import sys; from unicon_flower.cli import main; sys.argv[0] = 'unicon'; main()"

    # Execute
    proc = subprocess.run(
        [sys.executable, "-c", main, "federate", *tiny_overrides(dirs, run_dir, 2)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )

    # Assert
    console_lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = federated.results_table(json.loads((run_dir / "results.json").read_text()))
    assert proc.stdout.rstrip("\n").endswith(table)
    assert len(console_lines) < 15, "\n".join(console_lines)
    assert "rounds 2/2" in proc.stderr and "2 tasks" in proc.stderr
    logged = (run_dir / federated.FLOWER_LOG).read_text()
    assert "[ROUND 2/2]" in logged and "Starting local SuperLink" in logged
    assert len(logged.splitlines()) > 3 * len(console_lines)
