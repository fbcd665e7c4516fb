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
