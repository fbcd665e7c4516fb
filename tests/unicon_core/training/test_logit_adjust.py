"""Logit adjustment: the training loss sees logits + log class prior; evaluation does not."""

from __future__ import annotations

import math

import pytest
import torch

from tests.unicon_core.training.test_optimizer_state import _loader, _model
from unicon_core.config import TrainConfig
from unicon_core.keys import BatchKey
from unicon_core.training import train_task
from unicon_core.training.losses import logit_prior_shift

CFG = TrainConfig(max_steps=1, lr=0.1, optimizer="sgd", progress=False, device="cpu")


def test_the_shift_is_the_smoothed_log_prior() -> None:
    shift = logit_prior_shift([3, 1])  # (3 + 1) / 6, (1 + 1) / 6
    torch.testing.assert_close(shift, torch.tensor([math.log(4 / 6), math.log(2 / 6)]))
    assert torch.isfinite(logit_prior_shift([0, 9])).all()  # a class the site lacks
    for bad in ([5], [1, -1]):
        with pytest.raises(ValueError, match="class counts"):
            logit_prior_shift(bad)


def test_the_training_loss_is_cross_entropy_of_the_shifted_logits() -> None:
    # Prepare: the first batch's logits before any step
    model = _model()
    batch = next(iter(_loader(0, 8)))
    with torch.no_grad():
        logits = model(batch[BatchKey.INPUT.value], "cls")
    shift = logit_prior_shift([6, 2])
    label = batch[BatchKey.LABEL.value].long().reshape(-1)
    want = float(torch.nn.functional.cross_entropy(logits + shift, label))
    plain = float(torch.nn.functional.cross_entropy(logits, label))
    # Execute: one step; its reported loss is the loss of that first batch
    shifted = train_task(model, "cls", _loader(0, 8), CFG, logit_shift=shift)
    unshifted = train_task(_model(), "cls", _loader(0, 8), CFG)
    # Assert
    assert shifted.loss == pytest.approx(want, rel=1e-5)
    assert unshifted.loss == pytest.approx(plain, rel=1e-5)
    assert want != pytest.approx(plain, rel=1e-3)


def test_a_shift_that_does_not_fit_the_task_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit task 'cls'"):
        train_task(_model(), "cls", _loader(0, 8), CFG, logit_shift=torch.zeros(3))
