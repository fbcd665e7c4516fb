"""The bytes table measures the product's own messages (no training)."""

from __future__ import annotations

from tests.server.fedtools import CLS_TASK, task_spec
from unicon_core.config import BackboneConfig


def test_skill_and_full_model_bytes_come_from_the_strategys_messages() -> None:
    # Prepare
    from simulations.communication import bytes_table, round_bytes
    from unicon_core.model import UniconModel

    tiny = BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
    model = UniconModel(tiny)
    model.add_task(task_spec(CLS_TASK))
    # Execute
    rows = bytes_table({CLS_TASK: task_spec(CLS_TASK)}, {"tiny": tiny})
    skill, full = round_bytes(model, CLS_TASK, "skill"), round_bytes(model, CLS_TASK, "full")
    # Assert: full = skill + the backbone (4 bytes per float32 weight, both ways, both
    # instructions down and the training reply up), plus per-array overhead
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if n.startswith("backbone.") and ".lora_" not in n)
    extra = full["bytes_down"] + full["bytes_up"] - skill["bytes_down"] - skill["bytes_up"]
    assert 3 * 4 * weights <= extra < 3 * 4 * weights * 1.2
    assert rows[0]["skill_bytes"] == skill["bytes_down"] + skill["bytes_up"]
    assert 0 < rows[0]["ratio"] < 1
