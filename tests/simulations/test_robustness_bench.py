"""The robustness bench's pure parts: attacks, norm bound, step diagnostic, report (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.mods.attack import attack_update
from simulations.robustness_bench import (
    ATTACKED,
    ATTACKS,
    CLEAN,
    REFERENCE,
    norm_bound,
    report,
    step_error,
)
from unicon_core.federation.validation import update_norm


def _pair() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    sent = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([[0.0]], np.float32)}
    trained = {"a": np.array([1.5, 1.0], np.float32), "b": np.array([[2.0]], np.float32)}
    return sent, trained


@pytest.mark.parametrize(("factor", "a", "b"), [
    (-1.0, [0.5, 3.0], [[-2.0]]),      # sign flip
    (10.0, [6.0, -8.0], [[20.0]]),     # x10 scaled
    (-10.0, [-4.0, 12.0], [[-20.0]]),  # sign flip, x10
])
def test_attack_update_is_global_plus_factor_times_update(factor, a, b) -> None:
    # Prepare
    sent, trained = _pair()

    # Execute
    bad = attack_update(sent, trained, factor)

    # Assert: values, dtype kept, norm scaled by |factor|
    np.testing.assert_allclose(bad["a"], a)
    np.testing.assert_allclose(bad["b"], b)
    assert bad["a"].dtype == np.float32 and bad["b"].shape == (1, 1)
    assert update_norm(sent, bad) == pytest.approx(abs(factor) * update_norm(sent, trained))


def test_attacks_are_the_three_the_issue_names() -> None:
    assert ATTACKS == {"sign flip": -1.0, "x10 scaled": 10.0, "sign flip, x10": -10.0}
    assert len(ATTACKED) == 3 * 3 * 2  # attacks x rules x (bound or not)
    assert REFERENCE in CLEAN and not REFERENCE.bounded and REFERENCE.attack is None


def test_update_norm_and_bound() -> None:
    sent, trained = _pair()
    assert update_norm(sent, trained) == pytest.approx(math.sqrt(0.25 + 1.0 + 4.0))
    assert norm_bound([1.0, 2.0, 10.0], multiple=3.0) == 6.0  # 3 x median
    with pytest.raises(ValueError):
        norm_bound([])
    with pytest.raises(ValueError):
        norm_bound([1.0], multiple=0.0)


def test_step_error_against_the_honest_mean() -> None:
    start = {"w": np.zeros(2)}
    honest = [{"w": np.array([1.0, 0.0])}, {"w": np.array([1.0, 2.0])}]  # mean update (1, 1)

    assert step_error(start, {"w": np.array([1.0, 1.0])}, honest) == pytest.approx((0.0, 1.0))
    err, proj = step_error(start, {"w": np.array([0.5, 0.5])}, honest)  # half the step
    assert (err, proj) == pytest.approx((0.5, 0.5))
    err, proj = step_error(start, {"w": np.array([-1.0, -1.0])}, honest)  # reversed
    assert (err, proj) == pytest.approx((2.0, -1.0))
    assert all(math.isnan(v) for v in step_error(start, start, [start]))


def _fake(value: float, rejected: int = 0) -> dict:
    return {"value": value, "honest": value, "curve": [value] * 2, "norms": [1.0, 1.1],
            "attacker_rejected": rejected, "honest_rejected": 0, "reasons": [],
            "step_error": [0.1], "projection": [0.9]}


def test_report_computes_the_verdicts_from_the_numbers() -> None:
    # Prepare: clean 0.90; median with x10 scaled 3 points down, everything else 1 down
    seeds = [0, 1]
    out = {(cfg, s): _fake(0.90) for cfg in CLEAN for s in seeds}
    for cfg in ATTACKED:
        for s in seeds:
            miss = cfg.strategy == "median" and cfg.attack == "x10 scaled" and not cfg.bounded
            out[(cfg, s)] = _fake(0.87 if miss else 0.89, rejected=2 if cfg.bounded else 0)

    # Execute
    text = report(out, {0: 3.0, 1: 3.3}, rounds=2, seeds=seeds, wall_s=60.0, jobs=2)

    # Assert
    row = next(line for line in text.splitlines()
               if line.startswith("| x10 scaled | median | no |"))
    assert "| -3.0 [-3.0..-3.0] |" in row and "| no |" in row
    verdicts_yes = text.count("| yes | 0, 0 |") + text.count("| yes | 4, 0 |")  # 2 per seed
    assert verdicts_yes == len(ATTACKED) - 1
    assert "*x10 scaled, without the norm bound*: FedAvg -1.0" in text
    assert "missed: median (-3.0, below -2 in 2 of 2 seeds)" in text
    assert "seed 0: 3" in text and "1.0 min" in text
