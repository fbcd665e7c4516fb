"""A site's optimiser state kept between rounds: two resumed runs are one continuous run."""

from __future__ import annotations

from dataclasses import replace

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
    cfg = TrainConfig(max_steps=4, lr=0.01, optimizer=optimizer, progress=False, device="cpu",
                      keep_optimizer_state=True)
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
    off = train_task(_model(), "cls", _loader(0, 16), replace(cfg, keep_optimizer_state=False))
    assert off.optimizer_state == {}  # nothing copied when nobody keeps it


def _one(shape: tuple[int, ...], lr: float = 1e-3, step: bool = True
         ) -> tuple[torch.optim.Optimizer, dict[int, str], torch.nn.Parameter]:
    """An AdamW over one parameter named ``w`` (one step taken when ``step``)."""
    param = torch.nn.Parameter(torch.ones(shape))
    optimizer = torch.optim.AdamW([param], lr=lr)
    if step:
        param.grad = torch.ones(shape)
        optimizer.step()
    return optimizer, {id(param): "w"}, param


def test_hyper_parameters_come_from_the_config_not_the_kept_state() -> None:
    old, old_names, old_param = _one((3,), lr=0.5)
    new, names, param = _one((3,), lr=0.01, step=False)
    assert import_state(new, export_state(old, old_names), names) == ""
    assert new.param_groups[0]["lr"] == 0.01
    assert float(new.state[param]["step"]) == 1.0
    torch.testing.assert_close(new.state[param]["exp_avg"], old.state[old_param]["exp_avg"])


def test_state_follows_the_parameter_names_not_their_positions() -> None:
    """A plan that trains other parameters next round (gradual unfreezing): each kept state
    goes to the parameter of its name, new ones start fresh, untrained ones are left out."""
    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    names = {id(a): "a", id(b): "b", id(c): "c"}
    first = torch.optim.AdamW([a, b])
    a.grad, b.grad = torch.ones(2), -torch.ones(2)
    first.step()
    kept = export_state(first, names)
    assert set(kept) == {f"{n}/{k}" for n in "ab" for k in ("step", "exp_avg", "exp_avg_sq")}
    later = torch.optim.AdamW([c, b])  # a frozen now, c new, b at another position
    assert import_state(later, kept, names) == ""
    torch.testing.assert_close(later.state[b]["exp_avg"], first.state[b]["exp_avg"])
    assert c not in later.state and a not in later.state


def test_a_state_that_does_not_fit_is_refused_with_the_reason() -> None:
    old, names, _ = _one((2, 3))
    state = export_state(old, names)
    new, new_names, _ = _one((4, 3), step=False)  # another rank
    assert "(2, 3) != parameter (4, 3)" in import_state(new, state, new_names)
    assert not new.state  # starts fresh
    assert "is not '<parameter>/<state>'" in import_state(new, {"exp_avg": np.zeros(3)},
                                                           new_names)
