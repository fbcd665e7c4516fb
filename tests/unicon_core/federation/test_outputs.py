"""Run folders, atomic writes, results.json, plots and byte accounting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from unicon_core.federation.outputs import (
    append_jsonl,
    build_results,
    new_run_dir,
    plot_rounds,
    read_jsonl,
    truncate_rounds,
    write_atomic,
    write_json,
)

ROWS = [
    {"round": r, "tasks": {"t": {"auc": 0.5 + r / 10, "train_loss": 1.0 / r}},
     "sites": {
         "a": {"task": "t", "bytes_down": 100, "bytes_up": 50 * r,
               "eval": {"num-examples": 10, "auc": 0.6 + r / 10}},
         "b": {"task": "t", "bytes_down": 100, "bytes_up": 50,
               "eval": {"num-examples": 30, "auc": float("nan") if r == 2 else 0.4}},
     }}
    for r in (1, 2)
]
TASK_INFO = {"t": {"kind": "classification", "metric": "auc", "synthetic": True}}


def test_new_run_dir_is_unique_and_latest_points_at_it(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, "exp")
    second = new_run_dir(tmp_path, "exp")
    assert first != second and first.is_dir() and second.is_dir()
    assert (tmp_path / "latest").resolve() == second.resolve()


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    write_atomic(tmp_path / "f.txt", "one")
    write_atomic(tmp_path / "f.txt", b"two")
    assert (tmp_path / "f.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_json_outputs_are_strict(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", {"x": float("nan"), "y": np.float32(1.5)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": None, "y": 1.5}
    for row in ROWS:
        append_jsonl(tmp_path / "rounds.jsonl", row)
    truncate_rounds(tmp_path / "rounds.jsonl", 1)
    assert [r["round"] for r in read_jsonl(tmp_path / "rounds.jsonl")] == [1]


def test_build_results_schema_and_weighting() -> None:
    # Execute
    results = build_results(experiment="e", rounds=ROWS, task_info=TASK_INFO,
                            full_model_bytes=1000, privacy={"a": {"epsilon": 1.0, "delta": 1e-5}})

    # Assert: schema of the issue; value = example-weighted mean over finite last evaluations
    assert set(results) == {"experiment", "synthetic", "rounds", "tasks", "communication",
                            "privacy"}
    assert results["synthetic"] == ["t"] and results["rounds"] == 2
    task = results["tasks"]["t"]
    assert task["kind"] == "classification" and task["metric"] == "auc"
    assert task["per_site"]["a"] == pytest.approx(0.8)
    assert math.isnan(task["per_site"]["b"])
    assert task["value"] == pytest.approx(0.8)
    comm = results["communication"]
    assert comm["bytes_up_per_site_round"] == pytest.approx((50 + 50 + 100 + 50) / 4)
    assert comm["bytes_down_per_site_round"] == pytest.approx(100)
    assert comm["full_model_bytes"] == 1000


def test_plots_are_written(tmp_path: Path) -> None:
    paths = plot_rounds(ROWS, TASK_INFO, 1000, tmp_path / "plots")
    assert [p.name for p in paths] == ["metrics.png", "bytes.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_bytes_per_site_round_count_training_sites_only() -> None:
    # Arrange: an evaluation-only site gets the skill down but never trains, so it sends little
    ext = {"task": "t", "status": "evaluation-only", "bytes_down": 40, "bytes_up": 2,
           "eval": {"num-examples": 5, "auc": 0.9}}
    rows = [{**r, "sites": {**r["sites"], "ext": ext}} for r in ROWS]

    # Execute
    comm = build_results(experiment="e", rounds=rows, task_info=TASK_INFO,
                         full_model_bytes=1000, privacy={})["communication"]

    # Assert: the training sites' means are those without it; its own are reported apart
    assert comm["bytes_up_per_site_round"] == pytest.approx((50 + 50 + 100 + 50) / 4)
    assert comm["bytes_down_per_site_round"] == pytest.approx(100)
    assert comm["evaluation_only_bytes"] == {"bytes_down_per_site_round": 40.0,
                                             "bytes_up_per_site_round": 2.0}
    plain = build_results(experiment="e", rounds=ROWS, task_info=TASK_INFO,
                          full_model_bytes=1000, privacy={})["communication"]
    assert "evaluation_only_bytes" not in plain
    # its role still tells it apart when a failed evaluate reply overwrote its status
    failed = {**ext, "status": "error", "role": "evaluation"}
    rows = [{**r, "sites": {**r["sites"], "ext": failed}} for r in ROWS]
    again = build_results(experiment="e", rounds=rows, task_info=TASK_INFO,
                          full_model_bytes=1000, privacy={})["communication"]
    assert again["bytes_down_per_site_round"] == pytest.approx(100)
