"""Red team, surface "outputs": what `predict` writes, named by hostile input ids.

Each case failed before the fix (see ``docs/security.md``, "Files and outputs"). Outcomes:
``confined`` (every output stays under ``--out``, under a sanitised, unique name) and
``clear_error`` (refused, naming the file, rather than overwriting anything).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.unicon_core.inference._tiny import tiny_model, trained_on
from unicon_core.commands.inference import predict_command
from unicon_core.inference.bundle import load_bundle, save_bundle
from unicon_core.inference.export import bundle_from_model
from unicon_core.inference.inputs import InputRef, load_input
from unicon_core.inference.predict import Predictor

OUTPUTS = "outputs"
FEATURES = {"surv": ([50.0, 20.0, 2.0], [10.0, 5.0, 1.0])}
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    model = tiny_model()
    stats = {k: (np.array(m), np.array(s)) for k, (m, s) in FEATURES.items()}
    bundle = bundle_from_model(model, trained_on(model), feature_stats=stats)
    return save_bundle(bundle, tmp_path_factory.mktemp("bundle") / "b")


def _rows(path: Path, ids: list[str]) -> Path:
    """A CSV of survival rows with the given ``id`` cells (quoted: ids may hold anything)."""
    lines = ["id,age,size,grade"]
    lines += ['"{}",{},20,2'.format(i.replace('"', '""'), 40 + n) for n, i in enumerate(ids)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _per_input(out: Path) -> dict[str, dict]:
    """The per-input JSON summaries under ``out`` by file name."""
    return {
        p.name: json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "summary.json"
    }


@pytest.mark.redteam(surface=OUTPUTS, outcome="confined")
def test_input_ids_cannot_write_outside_out(bundle_dir: Path, tmp_path: Path) -> None:
    # Prepare: ids that climb out of --out, or name an absolute path
    work = tmp_path / "work"
    work.mkdir()
    csv = _rows(work / "rows.csv", ["../escaped", "../../escaped2", str(tmp_path / "abs")])
    out = work / "deep" / "out"
    before = _files(tmp_path)
    # Execute
    code = predict_command(bundle_dir, out, [csv], None, None)
    # Assert: every new file is under --out, one JSON per row
    assert code == 0
    new = _files(tmp_path) - before
    assert all(out in p.parents for p in new), sorted(map(str, new))
    assert sorted(s["csv_row"] for s in _per_input(out).values()) == [1, 2, 3]


@pytest.mark.redteam(surface=OUTPUTS, outcome="confined")
def test_output_names_are_sanitised(bundle_dir: Path, tmp_path: Path) -> None:
    ids = [".hidden", "a b:c*d", "line\nbreak", "-rf", "ü", "x" * 300]
    csv = _rows(tmp_path / "rows.csv", ids)
    assert predict_command(bundle_dir, tmp_path / "out", [csv], None, None) == 0
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert all(SAFE.fullmatch(n) and len(n) <= 120 for n in names), names
    assert len(_per_input(tmp_path / "out")) == len(ids)


@pytest.mark.redteam(surface=OUTPUTS, outcome="confined")
def test_duplicate_and_colliding_ids_never_overwrite(bundle_dir: Path, tmp_path: Path) -> None:
    # Prepare: "a" twice (-> a_2 before the fix) next to a real "a_2", and "A" (same file on
    # a case-insensitive file system)
    csv = _rows(tmp_path / "rows.csv", ["a", "a", "a_2", "A"])
    # Execute
    assert predict_command(bundle_dir, tmp_path / "out", [csv], None, None) == 0
    # Assert: four outputs, distinct even ignoring case, each row once
    outputs = _per_input(tmp_path / "out")
    assert len({n.lower() for n in outputs}) == 4
    assert sorted(s["csv_row"] for s in outputs.values()) == [1, 2, 3, 4]


@pytest.mark.redteam(surface=OUTPUTS, outcome="confined")
def test_an_input_named_summary_does_not_clobber_the_run_summary(
    bundle_dir: Path, tmp_path: Path
) -> None:
    csv = _rows(tmp_path / "rows.csv", ["summary"])
    assert predict_command(bundle_dir, tmp_path / "out", [csv], None, None) == 0
    run = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(run["predictions"]) == 1
    (own,) = _per_input(tmp_path / "out").values()
    assert own["csv_row"] == 1


@pytest.mark.redteam(surface=OUTPUTS, outcome="clear_error")
def test_a_second_run_into_the_same_out_never_overwrites(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a first run, then a note added to its result
    csv = _rows(tmp_path / "rows.csv", ["p1"])
    out = tmp_path / "out"
    assert predict_command(bundle_dir, out, [csv], None, None) == 0
    (out / "p1.json").write_text('{"note": "reviewed by Dr X"}\n')
    capsys.readouterr()
    # Execute
    code = predict_command(bundle_dir, out, [csv], None, None)
    # Assert: refused, naming the file; nothing changed
    assert code == 1
    assert "p1.json" in capsys.readouterr().err
    assert json.loads((out / "p1.json").read_text()) == {"note": "reviewed by Dr X"}


@pytest.mark.redteam(surface=OUTPUTS, outcome="clear_error")
def test_a_planted_symlink_in_out_is_not_followed(bundle_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.json").symlink_to(victim)
    csv = _rows(tmp_path / "rows.csv", ["x"])
    assert predict_command(bundle_dir, out, [csv], None, None) == 1
    assert victim.read_text() == "precious\n"


@pytest.mark.redteam(surface=OUTPUTS, outcome="confined")
def test_library_callers_are_confined_too(bundle_dir: Path, tmp_path: Path) -> None:
    """``Predictor.write`` confines names it did not get from ``collect_inputs``."""
    predictor = Predictor(load_bundle(bundle_dir))
    row = {"age": "50", "size": "20", "grade": "2"}
    ref = InputRef(name="../../lib_escape", paths=[tmp_path / "rows.csv"], row=row, row_number=1)
    out = tmp_path / "a" / "out"
    summary = predictor.write(predictor.predict(load_input(ref)), out)
    assert summary["task"] == "surv"
    assert [p.parent for p in _files(tmp_path)] == [out]
