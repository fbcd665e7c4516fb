"""A site's optimiser state kept between rounds: two resumed runs are one continuous run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unicon_core.training.test_learning import TINY, DictDataset, _squares
from unicon_core.config import TaskSpec, TrainConfig
from unicon_core.model import UniconModel
from unicon_core.training import make_loader, train_task
from unicon_core.training.optimizer_state import export_state, import_state

SPEC = TaskSpec(name="cls", kind="classification", modality="mri", channels=1, spatial_dims=2,
                input_size=[16, 16], patch_size=4, num_classes=2)


def _model() -> UniconModel:
    model = UniconModel(TINY, seed=0)
    model.add_task(SPEC)
    return model


def _loader(lo: int, hi: int) -> torch.utils.data.DataLoader:
    x, _, y = _squares(32, (16, 16), seed=0)
    return make_loader(DictDataset(input=x[lo:hi], label=y[lo:hi]), 8, shuffle=False)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_two_resumed_runs_equal_one_continuous_run(optimizer: str) -> None:
    cfg = TrainConfig(max_steps=4, lr=0.01, optimizer=optimizer, progress=False, device="cpu")
    whole = _model()
    train_task(whole, "cls", _loader(0, 32), cfg)  # 4 batches of 8, one optimiser

    resumed, fresh = _model(), _model()
    first = train_task(resumed, "cls", _loader(0, 16), cfg)
    assert first.optimizer_state and first.state_refused == ""
    second = train_task(resumed, "cls", _loader(16, 32), cfg, optimizer_state=first.optimizer_state)
    assert second.state_refused == ""
    train_task(fresh, "cls", _loader(0, 16), cfg)
    train_task(fresh, "cls", _loader(16, 32), cfg)  # restarts its moments

    want = whole.skill_state_dict("cls")
    got, restarted = resumed.skill_state_dict("cls"), fresh.skill_state_dict("cls")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    assert any(not torch.allclose(restarted[k], want[k], atol=1e-6) for k in want)


def test_hyper_parameters_come_from_the_config_not_the_kept_state() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.AdamW([param], lr=0.5)
    param.grad = torch.ones(3)
    old.step()
    new = torch.optim.AdamW([param], lr=0.01)
    assert import_state(new, export_state(old)) == ""
    assert new.param_groups[0]["lr"] == 0.01
    assert float(new.state[param]["step"]) == 1.0
    torch.testing.assert_close(new.state[param]["exp_avg"], old.state[param]["exp_avg"])


def test_a_state_that_does_not_fit_is_refused_with_the_reason() -> None:
    small = torch.nn.Parameter(torch.ones(2, 3))
    old = torch.optim.AdamW([small])
    small.grad = torch.ones(2, 3)
    old.step()
    state = export_state(old)
    big = torch.nn.Parameter(torch.ones(4, 3))  # another rank
    new = torch.optim.AdamW([big])
    assert "(2, 3) != parameter (4, 3)" in import_state(new, state)
    assert not new.state  # starts fresh
    assert "optimiser has 1 parameters" in import_state(
        new, {"5/exp_avg": np.zeros((4, 3), np.float32)})
    assert "is not '<index>/<name>'" in import_state(new, {"exp_avg": np.zeros(3)})
