"""A quick two-stage run on the real federated path with two tiny tabular tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.fedtools import CLS_TASK, SURV_TASK, make_sites
from unicon_core.config import BackboneConfig
from unicon_core.continual.baselines import IsolatedSkills, NaiveSequential
from unicon_core.continual.runner import run_continual
from unicon_core.continual.stages import ContinualConfig, Stage
from unicon_flower.continual import make_context

TINY = BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
TINY_OVERRIDES = ["experiment=continual", "backbone.hidden_size=32", "backbone.num_layers=2",
                  "backbone.num_heads=2", "backbone.mlp_dim=64"]


def _config(root: Path) -> ContinualConfig:
    make_sites(root, [("cls_a", CLS_TASK, 24), ("cls_b", CLS_TASK, 24), ("surv_a", SURV_TASK, 36)])
    return ContinualConfig(
        stages=[Stage("cls", ["cls_a", "cls_b"]), Stage("surv", ["surv_a"])],
        data_root=str(root), rounds=1, local_steps=3, batch_size=8, lr=0.05, seeds=[0],
    )


@pytest.mark.parametrize("strategy_cls", [IsolatedSkills, NaiveSequential])
def test_two_stages_fill_the_matrix(tmp_path: Path, strategy_cls: type) -> None:
    # Prepare
    cfg = _config(tmp_path / "sites")
    ctx = make_context(cfg, 0, TINY, tmp_path / "run", TINY_OVERRIDES)
    # Execute
    result = run_continual(strategy_cls(), ctx).to_dict()
    # Assert
    assert result["order"] == [CLS_TASK, SURV_TASK]
    assert result["trained"] == [0, 1]
    matrix = result["matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert matrix[1][0] != matrix[1][0]  # NaN before the survival task joined
    assert (tmp_path / "run" / "stage0_cls" / "results.json").is_file()
    if strategy_cls is IsolatedSkills:
        # later stages never touch an isolated skill: exactly no backward transfer
        assert matrix[0][1] == matrix[0][0]
        assert result["bwt"] == 0.0 and result["forgetting"] == 0.0
    else:
        # the shared adapter moved under the classification head
        assert result["bwt"] == result["bwt"]  # measured (finite)


@pytest.mark.parametrize("name", ["local_only", "centralised", "full_fedavg"])
def test_loop_baselines_fill_the_matrix(tmp_path: Path, name: str) -> None:
    # Prepare
    from unicon_core.continual.baselines import CONTINUAL_STRATEGIES

    cfg = _config(tmp_path / "sites")
    ctx = make_context(cfg, 0, TINY, tmp_path / "run", TINY_OVERRIDES)
    # Execute
    result = run_continual(CONTINUAL_STRATEGIES[name](), ctx).to_dict()  # type: ignore[arg-type]
    # Assert
    assert result["order"] == [CLS_TASK, SURV_TASK]
    assert all(v == v for v in (result["matrix"][0][0], result["matrix"][1][1]))
    assert result["bwt"] == 0.0  # per-task (or per-site) models: nothing shared across tasks
    if name == "full_fedavg":
        assert result["logs"][0]["bytes_up_per_site_round"] > 0


def test_foundation_stage_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    # Prepare
    from dataclasses import replace

    from unicon_core.continual.foundation import federated_foundation
    from unicon_core.continual.runner import open_sites
    from unicon_core.model import UniconModel

    cfg = _config(tmp_path / "sites")
    sites = open_sites(cfg, 0)
    ctx = make_context(cfg, 0, TINY, tmp_path / "run", TINY_OVERRIDES, sites)
    # Execute
    path, run = federated_foundation(ctx, ["cls_a", "cls_b"], tmp_path / "f.safetensors")
    # Assert: the trained stem is a frozen foundation stem, shared by a task of that kind
    model = UniconModel(replace(TINY, checkpoint=str(path)), seed=0)
    assert model.foundation_hash != UniconModel(TINY, seed=0).foundation_hash
    model.add_task(sites["cls_a"].task_spec)
    assert model.stem_owner[model.task_stem[CLS_TASK]] is None
    # trained on the product's federation, evaluated on the validation split
    assert run.results["communication"]["bytes_up_per_site_round"] > 0
    assert "eval_split: val" in (run.run_dir / "config.yaml").read_text()
