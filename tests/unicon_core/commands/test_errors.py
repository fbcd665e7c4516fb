"""A user error on the command line is a short message and a fixed exit code: no traceback, no
local variables, no cell values; ``-v`` adds the traceback; ``unicon validate`` groups problems."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unicon_core.data.sites import CLS_SPEC, cls_site, read_rows, rewrite
from unicon_core import cli
from unicon_core.cli import app
from unicon_core.commands import errors
from unicon_core.commands.errors import EXIT_FAILED, EXIT_INVALID_DATA, EXIT_OK, EXIT_USAGE

TINY = ["backbone.hidden_size=32", "backbone.num_layers=1", "backbone.mlp_dim=32"]
#: A cell value that must never be printed by a command other than `validate`.
SECRET = "SECRET-CELL-VALUE"
REPO = Path(__file__).resolve().parents[3]


def _invalid_site(root: Path) -> Path:
    """A classification site whose row 2 label is a non-numeric secret and row 4 a 7."""
    site = cls_site(root, n=6)
    rows = read_rows(site)
    rows[1]["label"] = SECRET
    rows[3]["label"] = "7"
    rewrite(site, rows, CLS_SPEC)
    return site


def _run_cli(*args: str, script: str = "") -> subprocess.CompletedProcess[str]:
    """``unicon ARGS`` in a fresh interpreter through the console-script entry point."""
    code = f"{textwrap.dedent(script)}\nfrom unicon_flower.cli import main\nmain()"
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False,
    )


def test_exit_codes_are_stable() -> None:
    assert (EXIT_OK, EXIT_INVALID_DATA, EXIT_USAGE, EXIT_FAILED) == (0, 1, 2, 3)
    assert app.pretty_exceptions_show_locals is False


def test_validate_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    site = cls_site(tmp_path / "ok")
    assert runner.invoke(app, ["validate", str(site)]).exit_code == EXIT_OK
    bad = runner.invoke(app, ["validate", str(_invalid_site(tmp_path / "bad"))])
    assert bad.exit_code == EXIT_INVALID_DATA
    missing = runner.invoke(app, ["validate", str(tmp_path / "nowhere")])
    assert missing.exit_code == EXIT_USAGE
    assert "site folder not found" in missing.output
    assert runner.invoke(app, ["validate", str(site), "--no-such"]).exit_code == EXIT_USAGE


def test_validate_prints_the_grouped_summary_then_every_problem_with_all(
    make_cohort: Callable[..., Path],
) -> None:
    # Prepare: a pandas export with 200 non-numeric cells, empty ages and 3 zero times
    site = make_cohort(n=200, zero_times=(16, 120, 150))
    runner = CliRunner()
    # Execute
    short = runner.invoke(app, ["validate", str(site)])
    every = runner.invoke(app, ["validate", str(site), "--all"])
    # Assert: a few lines, both kinds with their counts; --all adds one line per problem
    assert short.exit_code == every.exit_code == EXIT_INVALID_DATA
    lines = short.output.splitlines()
    assert len(lines) <= 7
    assert lines[0] == f"{site}: 208 problems in 4 groups (rows count from 1 after the header)"
    assert any(ln.startswith("  - time: 3 out-of-range values") for ln in lines)
    assert any(ln.startswith("  - smoker: 200 non-numeric values such as") for ln in lines)
    assert "--all" in lines[-1]
    assert len(every.output.splitlines()) >= 208 + 5
    assert "manifest.csv row 121 (time): non-positive survival time '0.0'" in every.output


def test_train_on_an_invalid_site_is_a_short_message_without_values(tmp_path: Path) -> None:
    site = _invalid_site(tmp_path / "bad")
    result = CliRunner().invoke(app, ["train", str(site), *TINY])
    assert result.exit_code == EXIT_INVALID_DATA
    assert isinstance(result.exception, SystemExit)  # handled, not raised through typer
    assert f"error: site {site} is not valid (2 problems in 2 groups)" in result.output
    assert "label: 1 out-of-range value (row 4)" in result.output
    assert "label: 1 non-numeric value (row 2)" in result.output
    assert f"unicon validate {site}" in result.output
    assert SECRET not in result.output and "Traceback" not in result.output


def test_verbose_adds_the_traceback(tmp_path: Path) -> None:
    site = _invalid_site(tmp_path / "bad")
    result = CliRunner().invoke(app, ["train", str(site), "-v", *TINY])
    assert result.exit_code == EXIT_INVALID_DATA
    assert "Traceback (most recent call last)" in result.output
    assert "SiteValidationError" in result.output


@pytest.mark.parametrize(
    ("override", "text"),
    [
        ("train.lr=abc", "'abc' of type 'str' could not be converted to Float"),
        ("backbone=no_such_backbone", "small, tiny)"),
        ("no_such_key=1", "Could not override 'no_such_key'"),
    ],
)
def test_bad_config_value_is_a_usage_error(tmp_path: Path, override: str, text: str) -> None:
    site = cls_site(tmp_path / "ok")
    result = CliRunner().invoke(app, ["train", str(site), override])
    assert result.exit_code == EXIT_USAGE
    assert result.output.startswith("error: bad configuration: ")
    assert text in result.output
    assert "Traceback" not in result.output
    assert len(result.output.splitlines()) <= 3


def test_missing_site_folder_for_train_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(tmp_path / "nowhere")])
    assert result.exit_code == EXIT_USAGE
    assert result.output.strip() == f"error: site folder not found: {tmp_path / 'nowhere'}"


def test_console_script_prints_no_traceback_for_an_invalid_site(tmp_path: Path) -> None:
    site = _invalid_site(tmp_path / "bad")
    done = _run_cli("train", str(site), *TINY)
    assert done.returncode == EXIT_INVALID_DATA, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "╭" not in done.stderr  # no rich traceback box
    assert SECRET not in done.stderr + done.stdout
    assert f"error: site {site} is not valid" in done.stderr


def test_console_script_shows_a_bug_without_locals_and_exits_3(tmp_path: Path) -> None:
    # Prepare: validate's body fails with a bug while a local holds a secret value
    script = f"""
        import unicon_core.commands.data as data

        def broken(site_dir, show_all=False):
            rows = [{{"label": {SECRET!r}}}]
            raise ZeroDivisionError("a bug")

        data.validate_command = broken
    """
    # Execute
    done = _run_cli("validate", str(tmp_path), script=script)
    # Assert
    assert done.returncode == EXIT_FAILED
    assert "ZeroDivisionError" in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_user_errors_maps_project_exceptions_to_codes() -> None:
    import typer

    cases: list[tuple[Exception, int]] = [
        (errors.UsageError("u"), EXIT_USAGE),
        (errors.ConfigError("c"), EXIT_USAGE),
        (errors.RunFailedError("r"), EXIT_FAILED),
        (FileNotFoundError(2, "No such file or directory", "x.yaml"), EXIT_USAGE),
    ]
    for error, code in cases:
        with pytest.raises(typer.Exit) as info, errors.user_errors("x"):
            raise error
        assert info.value.exit_code == code
    with pytest.raises(KeyError), errors.user_errors("x"):  # a bug is not a user error
        raise KeyError("bug")
    assert cli.EXIT_FAILED == EXIT_FAILED
