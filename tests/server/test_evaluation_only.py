"""Evaluation-only sites (no train rows declared) get evaluation instructions, never train ones;
``federation.init_skill`` starts a run's tasks from a bundle's skills."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from server.strategies.per_task_fedavg import PerTaskFedAvg, SiteNode
from unicon_core.federation.aggregation import prefix_task

HASH = "f" * 64


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def test_an_evaluation_only_site_is_never_sent_a_train_instruction() -> None:
    # Prepare: two training sites and one that declared no train rows
    nodes = [SiteNode(1, "a", "cls", train_examples=10), SiteNode(2, "b", "cls", train_examples=5),
             SiteNode(3, "ext", "cls", train_examples=0, eval_examples=40)]
    strategy = PerTaskFedAvg(nodes, foundation_hash=HASH)
    arrays = ArrayRecord({k: Array(v) for k, v in
                          prefix_task("cls", {"head.w": np.zeros(4, np.float32)}).items()})
    # Execute
    train = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    evaluate = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid=None))
    # Assert
    assert sorted(m.metadata.dst_node_id for m in train) == [1, 2]
    assert sorted(m.metadata.dst_node_id for m in evaluate) == [1, 2, 3]
    assert nodes[2].evaluation_only and not nodes[0].evaluation_only
    assert strategy._record["sites"]["ext"]["status"] == "evaluation-only"
    assert strategy._record["sites"]["ext"]["role"] == "evaluation"  # outlives its status
    assert "role" not in strategy._record["sites"].get("a", {})


def test_init_skill_loads_a_trained_bundle(tmp_path: Path) -> None:
    import torch

    from server.federation import skills_from_bundle
    from tests.unicon_core.data.sites import CLS_SPEC, cls_site
    from unicon_core.commands.core import train_local_command
    from unicon_core.config import TaskSpec
    from unicon_core.hydra_config import backbone_config, load_config
    from unicon_core.model import UniconModel

    # Prepare: a skill trained by `unicon train --bundle`
    site = cls_site(tmp_path / "site", n=9)
    train_local_command(site, 1, ["backbone=tiny", "train.max_steps=2"], bundle_dir=tmp_path / "b")
    fresh = UniconModel(backbone_config(load_config(["backbone=tiny"])))
    fresh.add_task(CLS_SPEC)
    # Execute
    skills = skills_from_bundle(tmp_path / "b", {CLS_SPEC.name: CLS_SPEC}, fresh.foundation_hash)
    # Assert: the bundle's trained tensors, not the fresh ones
    start = fresh.skill_state_dict(CLS_SPEC.name)
    assert set(skills[CLS_SPEC.name]) == set(start)
    assert any(not torch.equal(torch.from_numpy(np.asarray(v)), start[k])
               for k, v in skills[CLS_SPEC.name].items())
    with pytest.raises(ValueError, match="another foundation"):
        skills_from_bundle(tmp_path / "b", {CLS_SPEC.name: CLS_SPEC}, "0" * 64)
    other = TaskSpec.from_dict({**CLS_SPEC.to_dict(), "num_classes": 3})
    with pytest.raises(ValueError, match="defined differently"):
        skills_from_bundle(tmp_path / "b", {CLS_SPEC.name: other}, fresh.foundation_hash)
