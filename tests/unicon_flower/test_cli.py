"""The ``unicon`` console script: library commands from unicon_core, Flower launchers added here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from unicon_core.commands.errors import EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]
CORE_COMMANDS = ("validate", "prepare-demo", "init-site", "pretrain", "train", "export", "predict")


def test_the_console_script_is_the_flower_layers_cli() -> None:
    text = (REPO / "pyproject.toml").read_text()  # no tomllib on Python 3.10
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert [line for line in section.splitlines() if line.strip()] == [
        'unicon = "unicon_flower.cli:main"'
    ]


def test_the_library_cli_alone_imports_no_flower_and_the_script_has_every_command() -> None:
    # Prepare: a fresh interpreter, so no other test has imported the Flower layer yet
    code = (
        "import sys\n"
        "from unicon_core.cli import app\n"
        "core = sorted(c.name or c.callback.__name__ for c in app.registered_commands)\n"
        "flower = sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'unicon_flower'))\n"
        "import unicon_flower.cli\n"
        "full = sorted(c.name or c.callback.__name__ for c in app.registered_commands)\n"
        "print(core, flower, full, sep='\\n')\n"
    )

    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=120, check=True).stdout.splitlines()

    # Assert
    core, flower, full = (ast.literal_eval(line) for line in out[-3:])
    assert set(CORE_COMMANDS) <= set(core) and not {"federate", "demo"} & set(core)
    assert flower == []
    assert set(full) == set(core) | {"federate", "demo"}


def test_federate_reports_a_bad_setting_as_a_usage_error_before_starting_flower(
    tmp_path: Path,
) -> None:
    # Prepare
    from unicon_flower.cli import app

    # Execute
    result = CliRunner().invoke(app, ["federate", "federation.rounds=0",
                                      f"federation.run_dir={tmp_path / 'run'}"])

    # Assert
    assert result.exit_code == EXIT_USAGE, result.output
    assert "rounds" in result.output
    assert not (tmp_path / "run" / "flwr_home").exists()
