"""The wall-time comparison's longer pair of runs, without running Flower: what each side is
asked to run and how the ratio is formed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulations import overhead
from unicon_flower.runner import RunSettings


def test_longer_runs_both_sides_at_its_rounds_and_divides_their_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a flwr run that "takes" 6 s, an engine run 5 s, an in-process run timed at 2 s
    calls: dict[str, Any] = {}

    def flwr(overrides: list[str], out_dir: Path, engine: bool = False) -> dict[str, float]:
        calls["engine" if engine else "flwr"] = (overrides, out_dir)
        return {"total_s": 5.0 if engine else 6.0}

    def in_process(site_dirs: list[Path], out_dir: Path, settings: RunSettings) -> None:
        calls["in_process"] = (out_dir, settings.rounds)

    clock = iter([10.0, 12.0])
    monkeypatch.setattr(overhead, "_timed_flwr_run", flwr)
    monkeypatch.setattr(overhead, "run_in_process", in_process)
    monkeypatch.setattr(overhead.time, "perf_counter", lambda: next(clock))
    settings = RunSettings(base=("experiment=continual",), seed=0, rounds=3)

    # Execute
    out = overhead._longer(settings, [tmp_path / "site_a"], tmp_path, 15)

    # Assert: both sides at 15 rounds, each in its own folder; flwr's runs folder is the run's
    overrides, flwr_dir = calls["flwr"]
    assert "federation.rounds=15" in overrides and "federation.rounds=3" not in overrides
    assert f"federation.runs_dir='{tmp_path}'" in overrides
    assert flwr_dir == tmp_path / "flwr_run_15_rounds"
    assert calls["in_process"] == (tmp_path / "in_process_run_15_rounds", 15)
    overrides, engine_dir = calls["engine"]
    assert "federation.rounds=15" in overrides and engine_dir == tmp_path / "engine_run_15_rounds"
    assert out == {"rounds": 15, "flwr_s": 6.0, "plain_s": 2.0, "ratio": 3.0,
                   "engine_s": 5.0, "engine_ratio": 2.5}


def test_the_kept_engine_pair_runs_in_one_kept_engine_and_refuses_a_cold_warm_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: engine runs that "take" 9 s then 4 s, inside a stand-in KeptEngine
    import unicon_flower.engine

    opened: list[str] = []

    class Kept:
        pools_started = 1

        def __enter__(self) -> Kept:
            opened.append("in")
            return self

        def __exit__(self, *exc: object) -> None:
            opened.append("out")

    seconds = iter([9.0, 4.0])

    def flwr(overrides: list[str], out_dir: Path, engine: bool = False) -> dict[str, float]:
        assert engine and opened == ["in"]  # both runs inside the one kept engine
        return {"total_s": next(seconds), "dir": str(out_dir)}  # type: ignore[dict-item]

    monkeypatch.setattr(overhead, "_timed_flwr_run", flwr)
    monkeypatch.setattr(unicon_flower.engine, "KeptEngine", Kept)
    settings = RunSettings(base=("experiment=continual",), seed=0, rounds=3)

    # Execute
    out = overhead._kept_engine_runs(settings, [tmp_path / "site_a"], tmp_path)

    # Assert
    assert opened == ["in", "out"]
    assert out == {"engine_first": {"total_s": 9.0, "dir": str(tmp_path / "engine_first_run")},
                   "engine_warm": {"total_s": 4.0, "dir": str(tmp_path / "engine_warm_run")}}
    Kept.pools_started = 2  # the second run started its own actors: not a warm run
    seconds, opened[:] = iter([9.0, 4.0]), []
    with pytest.raises(RuntimeError, match="started 2 actor pools for two runs"):
        overhead._kept_engine_runs(settings, [tmp_path / "site_a"], tmp_path)
