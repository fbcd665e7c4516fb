"""Evaluation-only sites are reported as external validation, apart from the task's value."""

from __future__ import annotations

import math

import pytest

from unicon_core.federation.external import split_external


def test_external_sites_move_out_of_the_task_value() -> None:
    # Prepare: two training sites and one external site of task t
    rounds = [{"round": 1, "sites": {
        "a": {"task": "t", "eval": {"auc": 0.6, "num-examples": 10}},
        "b": {"task": "t", "eval": {"auc": 0.9, "num-examples": 30}},
        "ext": {"task": "t", "eval": {"auc": 0.5, "num-examples": 50}},
    }}]
    results = {"tasks": {"t": {"metric": "auc", "value": 0.0,
                               "per_site": {"a": 0.6, "b": 0.9, "ext": 0.5}}}}
    # Execute
    split_external(results, rounds, {"ext"})
    # Assert
    assert results["external_validation"] == {
        "ext": {"task": "t", "metric": "auc", "value": 0.5, "n": 50, "ci95": None}
    }
    task = results["tasks"]["t"]
    assert task["per_site"] == {"a": 0.6, "b": 0.9} and task["n"] == 40
    assert task["value"] == pytest.approx((0.6 * 10 + 0.9 * 30) / 40)


def test_only_external_sites_leave_no_value() -> None:
    rounds = [{"sites": {"ext": {"task": "t", "eval": {"auc": 0.5, "num-examples": 5}}}}]
    results = {"tasks": {"t": {"metric": "auc", "value": 0.5, "per_site": {"ext": 0.5}}}}
    split_external(results, rounds, ["ext"])
    assert math.isnan(results["tasks"]["t"]["value"]) and results["tasks"]["t"]["n"] == 0


def test_n_and_intervals_next_to_every_site_metric() -> None:
    from unicon_core.federation.external import add_uncertainty, site_cell

    rounds = [{"sites": {
        "a": {"task": "t", "eval": {"auc": 0.8, "auc_ci_low": 0.7, "auc_ci_high": 0.9,
                                    "num-examples": 40}},
        "b": {"task": "t", "eval": {"auc": float("nan"), "auc_ci_low": float("nan"),
                                    "auc_ci_high": float("nan"), "num-examples": 3}},
        "ext": {"task": "t", "eval": {"auc": 0.6, "auc_ci_low": 0.5, "auc_ci_high": 0.7,
                                      "num-examples": 20}},
    }}]
    results = {"tasks": {"t": {"metric": "auc", "value": 0.0,
                               "per_site": {"a": 0.8, "b": float("nan"), "ext": 0.6}}}}
    split_external(add_uncertainty(results, rounds), rounds, {"ext"})
    task = results["tasks"]["t"]
    assert task["per_site_n"] == {"a": 40, "b": 3} and task["n"] == 43
    assert task["per_site_ci95"] == {"a": [0.7, 0.9], "b": None} and task["ci95"] is None
    assert results["external_validation"]["ext"]["ci95"] == [0.5, 0.7]
    assert site_cell(0.8, 40, [0.7, 0.9]) == "0.800 [0.700, 0.900] n=40"
    assert site_cell(float("nan"), 3, None) == "n/a n=3"
