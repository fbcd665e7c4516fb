"""Experiment settings: run config -> overrides, node -> site, validation of paths."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from unicon_core.federation.config import (
    FederationConfig,
    PrivacyConfig,
    StrategyConfig,
    overrides_from_run_config,
    site_dirs_override,
    site_for_node,
)
from unicon_core.hydra_config import load_settings


def test_run_config_names_experiment_and_carries_overrides() -> None:
    run_config = {"experiment": "demo", "overrides": "federation.rounds=2 'privacy=dp'"}
    assert overrides_from_run_config(run_config) == [
        "experiment=demo", "federation.rounds=2", "privacy=dp"]
    assert overrides_from_run_config({}) == []


def test_site_for_node_simulation_and_deployment(tmp_path: Path) -> None:
    # Prepare
    fed = FederationConfig(data_root=str(tmp_path),
                           sites={"a": {"path": "site_a"}, "b": {"path": "/abs/b", "task": "t"}})

    # Execute / Assert: partition i serves the i-th site; site-dir wins in a deployment
    assert site_for_node({"partition-id": 0}, fed) == ("a", tmp_path / "site_a")
    assert site_for_node({"partition-id": 1}, fed) == ("b", Path("/abs/b"))
    assert site_for_node({"site-dir": "/data/x", "partition-id": 0}, fed) == ("x", Path("/data/x"))
    with pytest.raises(ValueError, match="num-supernodes to 2"):
        site_for_node({"partition-id": 2}, fed)
    with pytest.raises(ValueError, match="neither"):
        site_for_node({}, fed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rounds": 0}, "rounds"),
        ({"runs_dir": "runs"}, "absolute"),
        ({"wandb": "maybe"}, "wandb"),
        ({"sites": {"a": {"path": ""}}}, "path"),
        ({"site_dirs": ["/x/a", "/y/a"]}, "unique"),
        ({"evaluate_every": 0}, "evaluate_every"),
        ({"evaluate_every": True}, "evaluate_every"),
        ({"val_split": "validation"}, "val_split"),
        ({"eval_split": "train "}, "eval_split"),
    ],
)
def test_federation_config_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FederationConfig(**kwargs)


def test_no_val_split_is_allowed() -> None:
    assert FederationConfig(val_split=None, evaluate_every=5).val_split is None


def test_relative_site_needs_data_root() -> None:
    with pytest.raises(ValueError, match="data_root"):
        FederationConfig(sites={"a": {"path": "rel"}}).site_path("a")


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (PrivacyConfig, {"delta": 0.0}, "delta"),
        (PrivacyConfig, {"enabled": True, "noise_multiplier": 0.0}, "noise"),
        (PrivacyConfig, {"epsilon_budget": -1.0}, "budget"),
        (StrategyConfig, {"name": "nope"}, "strategy.name"),
    ],
)
def test_privacy_and_strategy_validate(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_fedopt_split_under_the_relative_norm_bound_is_warned_of() -> None:
    """The round's relative norm bound rejects honest raw gradients under FedOpt's split: the
    config warns, naming the tasks and the fixed bound to use instead, and stays quiet
    without the split or with the relative bound off."""
    with pytest.warns(UserWarning, match=r"update_norm_factor=4 .*\(t\).*max_update_norm"):
        StrategyConfig(lora_tasks={"t": {"site_sgd_lr": 1.0}})
    with pytest.warns(UserWarning, match=r"\(the default, t\)"):
        StrategyConfig(lora={"site_sgd_lr": 1.0}, lora_tasks={"t": {"delta": True}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StrategyConfig(lora_tasks={"t": {"delta": True}})
        StrategyConfig(update_norm_factor=None, max_update_norm=5.0,
                       lora_tasks={"t": {"site_sgd_lr": 1.0}})


def test_hydra_composes_federated_groups(tmp_path: Path) -> None:
    # Execute: the demo experiment, DP on, sites replaced by folders (quoted paths)
    settings = load_settings([
        "experiment=demo", "privacy=dp", site_dirs_override([tmp_path / "s 1", tmp_path / "b"]),
        f"federation.run_dir='{tmp_path}'",
    ])

    # Assert
    assert settings.experiment == "demo"
    assert settings.privacy.enabled and settings.privacy.epsilon_budget is not None
    assert list(settings.federation.sites) == ["s 1", "b"]
    assert settings.strategy.name == "per_task_fedavg"
    assert settings.resume is False
