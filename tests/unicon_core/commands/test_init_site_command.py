"""``unicon init-site`` at the command line: output, exit codes, and an evaluation-only site
that ``unicon train`` refuses with a usage error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from unicon_core.cli import app

RUNNER = CliRunner()


def _classes(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (10, 12)).astype(np.uint8)).save(
                root / label / f"{i}.png")
    return root


def test_init_site_prints_and_validates(tmp_path: Path) -> None:
    src = _classes(tmp_path / "src")
    result = RUNNER.invoke(app, ["init-site", str(src), str(tmp_path / "s"), "--task", "demo2",
                                 "--size", "16", "--size", "16"])
    assert result.exit_code == 0, result.output
    assert "labels 'a' -> 0, 'b' -> 1" in result.output and "OK (site 's'" in result.output


def test_exit_codes(tmp_path: Path) -> None:
    missing = RUNNER.invoke(app, ["init-site", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert missing.exit_code == 2 and "nope" in missing.output
    (tmp_path / "flat").mkdir()
    bad = RUNNER.invoke(app, ["init-site", str(tmp_path / "flat"), str(tmp_path / "o")])
    assert bad.exit_code == 1 and "neither class subfolders" in bad.output
    assert "Traceback" not in bad.output


def test_train_refuses_an_evaluation_only_site(tmp_path: Path) -> None:
    src = _classes(tmp_path / "src")
    made = RUNNER.invoke(app, ["init-site", str(src), str(tmp_path / "ext"), "--evaluation-only"])
    assert made.exit_code == 0, made.output
    assert "evaluation only (test rows, never trains)" in made.output
    result = RUNNER.invoke(app, ["train", str(tmp_path / "ext"), "backbone=tiny"])
    assert result.exit_code == 2 and "no train rows" in result.output
