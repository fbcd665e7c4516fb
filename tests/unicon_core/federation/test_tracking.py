"""wandb runs offline inside the run folder; disabled mode never imports wandb."""

from __future__ import annotations

from pathlib import Path

import pytest

from unicon_core.federation.tracking import Tracker, flatten


def test_offline_run_writes_into_the_run_folder(tmp_path: Path) -> None:
    # Execute
    tracker = Tracker(tmp_path, mode="offline", project="unicon-test", config={"a": 1})
    tracker.log(1, {"task/auc": 0.5, "nan": float("nan"), "text": "skipped"})
    tracker.finish({"done": 1})

    # Assert: everything under <run>/wandb, nothing in the working directory
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_disabled_is_a_no_op(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, mode="disabled")
    tracker.log(1, {"x": 1.0})
    tracker.finish()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="wandb mode"):
        Tracker(tmp_path, mode="sometimes")


def test_flatten_nested_metrics() -> None:
    assert flatten("r/", {"t": {"auc": 1.0}, "b": 2}) == {"r/t/auc": 1.0, "r/b": 2}
