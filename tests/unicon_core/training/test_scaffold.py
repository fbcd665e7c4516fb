"""SCAFFOLD at a site: each step's gradient is corrected by exactly ``c - c_i``, the new
``c_i`` is the mean raw gradient, and control variates that do not fit are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unicon_core.training.test_optimizer_state import _loader, _model
from unicon_core.config import TrainConfig
from unicon_core.training import train_task
from unicon_core.training.scaffold import ControlVariates

CFG = TrainConfig(max_steps=2, lr=0.1, optimizer="sgd", weight_decay=0.0, progress=False,
                  device="cpu")


def _shift(model: torch.nn.Module, scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {k: (scale * rng.normal(size=tuple(p.shape))).astype(np.float32)
            for k, p in model.skill_parameters("cls").items()}


def test_a_step_moves_by_the_gradient_plus_c_minus_ci_and_ci_is_the_mean_gradient() -> None:
    # Prepare: the same model twice; SGD without momentum, so one step is -lr x gradient
    cfg = TrainConfig(**{**CFG.__dict__, "max_steps": 1})
    plain, scaffold = _model(), _model()
    server, site = _shift(plain, 0.5), _shift(plain, 0.2)
    start = {k: p.detach().clone() for k, p in plain.skill_parameters("cls").items()}
    # Execute
    train_task(plain, "cls", _loader(0, 8), cfg)
    control = ControlVariates(scaffold.skill_parameters("cls"), server, site)
    train_task(scaffold, "cls", _loader(0, 8), cfg, control=control)
    new, change = control.site_update()
    # Assert: the difference of the two steps is exactly -lr (c - c_i); c_i is the gradient
    after_plain = plain.skill_parameters("cls")
    for key, param in scaffold.skill_parameters("cls").items():
        want = after_plain[key].detach() - cfg.lr * torch.as_tensor(server[key] - site[key])
        torch.testing.assert_close(param.detach(), want, rtol=0, atol=1e-6)
        gradient = (start[key] - after_plain[key].detach()) / cfg.lr
        np.testing.assert_allclose(new[key], gradient.numpy(), atol=1e-5)
        np.testing.assert_allclose(change[key], new[key] - site[key], atol=1e-7)


def test_equal_control_variates_change_nothing_and_c_i_averages_over_steps() -> None:
    plain, scaffold = _model(), _model()
    same = _shift(plain, 0.3)
    train_task(plain, "cls", _loader(0, 16), CFG)
    control = ControlVariates(scaffold.skill_parameters("cls"), same, same)
    train_task(scaffold, "cls", _loader(0, 16), CFG, control=control)
    for key, param in scaffold.skill_parameters("cls").items():
        torch.testing.assert_close(param, plain.skill_parameters("cls")[key], rtol=0, atol=0)
    assert control.steps == 2
    first = ControlVariates(_model().skill_parameters("cls"), same)  # c_i starts at zero
    assert all(not v.any() for v in first.site.values())
    idle, change = first.site_update()  # no step taken: c_i unchanged
    assert all(not v.any() for v in change.values()) and idle.keys() == same.keys()


def test_control_variates_that_do_not_fit_are_refused() -> None:
    params = _model().skill_parameters("cls")
    good = _shift(_model(), 1.0)
    key = next(iter(good))
    with pytest.raises(ValueError, match="missing"):
        ControlVariates(params, {k: v for k, v in good.items() if k != key})
    with pytest.raises(ValueError, match="shape"):
        ControlVariates(params, good, {**good, key: np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="non-finite"):
        ControlVariates(params, {**good, key: np.full_like(good[key], np.nan)})


def test_scaffold_is_not_combined_with_dp_sgd() -> None:
    model = _model()
    control = ControlVariates(model.skill_parameters("cls"), _shift(model, 0.1))
    with pytest.raises(ValueError, match="DP-SGD"):
        train_task(model, "cls", _loader(0, 8), CFG, control=control,
                   make_private=lambda m, o, d: (m, o, d))
