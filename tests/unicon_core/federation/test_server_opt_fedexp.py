"""FedExP's server step (unicon_core.federation.server_opt) on hand-made updates: FedAvg while
the sites agree, the mean delta extrapolated as they turn orthogonal, and its inputs checked."""

from __future__ import annotations

import numpy as np
import pytest

from unicon_core.federation.config import StrategyConfig, TaskFederation
from unicon_core.federation.server_opt import ServerOptConfig, ServerOptimizer, site_sq_norm


def _step(deltas: list[np.ndarray], eps: float = 1e-3) -> tuple[np.ndarray, float]:
    x = {"w": np.zeros(len(deltas[0]), np.float32)}
    states = [{"w": x["w"] + d} for d in deltas]
    weights = [1.0] * len(deltas)
    aggregate = {"w": sum(s["w"].astype(np.float64) for s in states) / len(states)}
    opt = ServerOptimizer(ServerOptConfig("fedexp", eps=eps))
    new = opt.step(x, aggregate, site_sq_norm(states, weights, x))
    assert new["w"].dtype == np.float32
    return new["w"].astype(np.float64), opt.last_lr


def test_agreeing_sites_get_plain_fedavg() -> None:
    d = np.array([0.3, -0.1, 0.2, 0.0])
    new, lr = _step([d, d, d])
    assert lr == 1.0  # mean |d|^2 / (2 |d|^2) = 0.5 < 1
    np.testing.assert_allclose(new, d, rtol=1e-6)


def test_orthogonal_sites_step_towards_sites_over_two() -> None:
    eye = list(np.eye(4))
    new, lr = _step(eye)
    # mean = 1/4 each, |mean|^2 = 1/4, mean |d_i|^2 = 1: eta = 1 / (2 (1/4 + eps))
    assert lr == pytest.approx(1 / (2 * (0.25 + 1e-3)))
    np.testing.assert_allclose(new, lr * np.full(4, 0.25), rtol=1e-6)


def test_cancelling_sites_stay_bounded_by_eps() -> None:
    # mostly cancelling: mean (0, 0.1), |mean|^2 = 0.01, mean |d_i|^2 = (1 + 1.04) / 2
    new, lr = _step([np.array([1.0, 0.0]), np.array([-1.0, 0.2])], eps=0.01)
    assert lr == pytest.approx(1.02 / (2 * (0.01 + 0.01)))  # 25.5; 51 without eps
    np.testing.assert_allclose(new, [0.0, lr * 0.1], atol=1e-6)


def test_site_sq_norm_is_example_weighted() -> None:
    ref = {"a": np.zeros(2), "b": np.zeros(1)}
    states = [{"a": np.array([1.0, 0.0]), "b": np.array([0.0])},
              {"a": np.array([0.0, 0.0]), "b": np.array([2.0])}]
    assert site_sq_norm(states, [3.0, 1.0], ref) == pytest.approx((3 * 1 + 1 * 4) / 4)
    with pytest.raises(ValueError, match="positive weights"):
        site_sq_norm(states, [0.0, 0.0], ref)


def test_fedexp_without_the_sites_spread_is_refused() -> None:
    opt = ServerOptimizer(ServerOptConfig("fedexp"))
    x = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match="fedexp needs"):
        opt.step(x, {"w": np.ones(2)})
    with pytest.raises(ValueError, match="fedexp needs"):
        opt.step(x, {"w": np.ones(2)}, float("nan"))
    with pytest.raises(ValueError, match="eps"):
        ServerOptConfig("fedexp", eps=0.0)


def test_fedexp_needs_a_shared_parameter_space() -> None:
    TaskFederation(server_opt="fedexp", lora_rule="ffa")
    with pytest.raises(ValueError, match=r"strategy\.lora\.server_opt"):
        TaskFederation(server_opt="fedexp", lora_rule="svd")
    with pytest.raises(ValueError, match=r"strategy\.lora\.server_opt"):
        TaskFederation(server_opt="fedexp", site_ranks={"a": 2})


def test_fedexp_is_refused_with_a_robust_strategy() -> None:
    # one site sets the spread, so a trimmed or median aggregate would still be stretched by it
    StrategyConfig(lora={"server_opt": "fedexp"})
    for name in ("per_task_median", "per_task_trimmed_mean"):
        with pytest.raises(ValueError, match=f"{name} is robust to a lying site; FedExP"):
            StrategyConfig(name=name, lora_tasks={"t": {"server_opt": "fedexp"}})
