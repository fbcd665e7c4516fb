"""The federated LoRA bench evaluates Br35H's external site in every run, trains it in none."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from simulations import federated_lora_bench as bench


@pytest.mark.slow
def test_runs_report_the_external_site_apart(demo_dir: Path, tmp_path: Path) -> None:
    # Prepare: two training sites and the evaluation-only one, tiny backbone, one step
    task = "tumour_cls"
    sites = [demo_dir / "br35h_a", demo_dir / "br35h_b"]
    setup = bench.site_setup({task: sites}, bench.Budget(rounds=1, local_steps=1, batch_size=4),
                             base=("experiment=continual", "backbone=tiny"), mixed_task="",
                             external={task: [demo_dir / "br35h_ext"]})
    # Execute: one federated run and the centralised bound
    fed = bench.run_fed(setup, bench.Job("fed", task, 0), tmp_path / "fed")
    central = bench.run_central(setup, bench.Job("central", task, 0), tmp_path / "central")
    # Assert: every ext row evaluated, apart from the training sites' value and n
    for run in (fed, central):
        assert set(run["per_site"]) == {"br35h_a", "br35h_b"}
        assert run["external"]["br35h_ext"]["n"] == 274
        assert math.isfinite(run["external"]["br35h_ext"]["value"])
        assert run["n"] == sum(run["per_site_n"].values()) < 274
