"""DP-SGD accounting: epsilon grows with rounds, equals opacus' accountant, budget stop works."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import Dataset

from unicon_core.config import BackboneConfig, TrainConfig
from unicon_core.federation.config import PrivacyConfig
from unicon_core.model import UniconModel
from unicon_core.privacy import (
    DPSGD,
    PrivacyLedger,
    epsilon_of,
    sample_rate,
    steps_per_round,
)
from unicon_core.training import make_loader, train_task

DELTA = 1e-5
PRIVACY = PrivacyConfig(enabled=True, noise_multiplier=1.1, max_grad_norm=1.0, delta=DELTA)


class _Rows(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input": self.x[i], "label": self.y[i]}


def _model() -> UniconModel:
    from tests.server.fedtools import CLS_TASK, task_spec

    model = UniconModel(BackboneConfig(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16))
    model.add_task(task_spec(CLS_TASK))
    return model


def test_dpsgd_round_history_matches_opacus_accountant() -> None:
    # Prepare
    from tests.server.fedtools import CLS_TASK

    model, data = _model(), _Rows(40)
    cfg = TrainConfig(epochs=1, max_steps=4, batch_size=8, progress=False)
    ledger = PrivacyLedger(delta=DELTA)
    epsilons = []

    # Execute: three rounds of DP-SGD, each recorded in the ledger
    for rnd in (1, 2, 3):
        dp = DPSGD(PRIVACY, seed=rnd)
        result = train_task(model, CLS_TASK, make_loader(data, 8, shuffle=True, seed=rnd),
                            replace(cfg, seed=rnd), make_private=dp)
        dp.close()
        ledger.record(rnd, dp.history)
        epsilons.append(ledger.epsilon)
        assert sum(s for _, _, s in dp.history) == result.steps == 4

    # Assert: epsilon grows each round and equals opacus stepping the same 12 steps
    assert epsilons[0] < epsilons[1] < epsilons[2]
    reference = RDPAccountant()
    for _ in range(12):
        reference.step(noise_multiplier=PRIVACY.noise_multiplier, sample_rate=sample_rate(40, 8))
    assert ledger.epsilon == pytest.approx(reference.get_epsilon(delta=DELTA), rel=1e-9)
    # opacus' hooks are gone: a plain forward works and leaves no per-sample gradients
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None
                   for p in model.parameters())


def test_planned_steps_match_what_a_round_spends() -> None:
    assert steps_per_round(40, 8, epochs=1) == 5
    assert steps_per_round(41, 8, epochs=2) == 12
    assert steps_per_round(41, 8, epochs=2, max_steps=3) == 3
    assert sample_rate(41, 8) == pytest.approx(1 / 6)


def test_budget_stop() -> None:
    # Prepare: a budget that three rounds exactly fit (RDP composes sublinearly)
    step = [(1.1, 0.2, 5)]
    ledger = PrivacyLedger(delta=DELTA)
    budget = epsilon_of(step * 3, DELTA) * (1 + 1e-9)

    # Execute: spend rounds until the ledger refuses
    rounds = 0
    while not ledger.would_exceed(budget, step):
        ledger.record(rounds + 1, step)
        rounds += 1

    # Assert: three rounds fit, the fourth would exceed; no budget never stops
    assert rounds == 3
    assert ledger.epsilon <= budget < ledger.epsilon_after(step)
    assert not ledger.would_exceed(None, step * 100)


def test_ledger_persists_atomically(tmp_path: Path) -> None:
    ledger = PrivacyLedger(delta=DELTA)
    ledger.record(1, [(1.0, 0.1, 10)])
    ledger.save(tmp_path)
    loaded = PrivacyLedger.load(tmp_path, DELTA)
    assert loaded == ledger and loaded.epsilon == pytest.approx(ledger.epsilon)
    assert [p.name for p in tmp_path.iterdir()] == ["privacy_ledger.json"]
    assert PrivacyLedger.load(tmp_path / "none", DELTA).history == []
    with pytest.raises(ValueError, match="delta"):
        PrivacyLedger.load(tmp_path, 1e-6)


def test_dpsgd_needs_privacy_enabled() -> None:
    with pytest.raises(ValueError, match="enabled"):
        DPSGD(PrivacyConfig(enabled=False), seed=0)
