"""Robust aggregation rules: one poisoned site among five cannot drag median or trimmed mean.

Test-size version of the mechanism behind ``simulations/robustness_bench.py``: four honest
updates around a common direction and one sign-flipped, x10 scaled update.
"""

from __future__ import annotations

import numpy as np
import pytest

from unicon_core.federation.aggregation import coordinate_median, trimmed_mean, weighted_average


def _updates(seed: int = 0) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    start = {"adapter.a": rng.normal(size=(4, 6)).astype(np.float32),
             "head.b": rng.normal(size=(3,)).astype(np.float32)}
    direction = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in start.items()}
    honest = [
        {k: start[k] + direction[k] + 0.05 * rng.normal(size=v.shape).astype(np.float32)
         for k, v in start.items()}
        for _ in range(4)
    ]
    poisoned = {k: start[k] - 10.0 * direction[k] for k in start}  # sign flip, x10
    return start, [*honest, poisoned]


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


def test_one_poisoned_site_moves_fedavg_but_not_median_or_trimmed_mean() -> None:
    # Prepare
    _, states = _updates()
    clean = weighted_average(states[:4], [1.0] * 4)

    # Execute
    fedavg = weighted_average(states, [1.0] * 5)
    median = coordinate_median(states)
    trimmed = trimmed_mean(states, 0.2)

    # Assert: the poisoned site pulls FedAvg far away; robust rules stay near the clean mean
    scale = _distance(clean, weighted_average([_updates()[0]], [1.0]))
    assert _distance(fedavg, clean) > scale
    assert _distance(median, clean) < 0.1 * scale
    assert _distance(trimmed, clean) < 0.1 * scale


def test_robust_rules_keep_dtype_and_layout() -> None:
    _, states = _updates()
    for out in (coordinate_median(states), trimmed_mean(states, 0.2)):
        assert set(out) == set(states[0])
        assert all(out[k].dtype == np.float32 and out[k].shape == states[0][k].shape
                   for k in out)


def test_trimmed_mean_without_trimming_is_the_plain_mean() -> None:
    _, states = _updates()
    plain = weighted_average(states, [1.0] * 5)
    trimmed = trimmed_mean(states, 0.1)  # floor(0.1 * 5) = 0: nothing cut
    for key in plain:
        np.testing.assert_allclose(trimmed[key], plain[key], rtol=1e-6)


def test_robust_rules_refuse_bad_input() -> None:
    _, states = _updates()
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(states, 0.5)
    with pytest.raises(ValueError, match="at least one"):
        coordinate_median([])
    with pytest.raises(ValueError, match="does not match"):
        coordinate_median([states[0], {"adapter.a": states[1]["adapter.a"]}])


@pytest.mark.parametrize(("n_sites", "trim_fraction"), [(5, 0.2), (7, 0.3), (4, 0.0), (9, 0.45)])
def test_trimmed_mean_is_bit_identical_to_flowers_rule(n_sites: int, trim_fraction: float) -> None:
    # Prepare: the rule was Flower's ``trim_mean`` before the core stopped importing flwr
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

    rng = np.random.default_rng(n_sites)
    states = [{"w": rng.normal(size=(3, 5)).astype(np.float32)} for _ in range(n_sites)]

    # Execute
    ours = trimmed_mean(states, trim_fraction)["w"]
    flowers = trim_mean(np.stack([s["w"].astype(np.float64) for s in states]), trim_fraction)

    # Assert
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, flowers.astype(np.float32))
