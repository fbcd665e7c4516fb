"""Hydra composition: the task schema checks keys/types early, TaskSpec validates values; the
dataclasses are the one source of defaults (YAML holds only what differs from them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra.errors import ConfigCompositionException

from unicon_core.config import Modality, TaskKind
from unicon_core.hydra_config import backbone_config, load_config, task_specs, train_config


def test_demo_experiment_composes_into_validated_objects() -> None:
    cfg = load_config([])
    specs = task_specs(cfg)
    assert set(specs) == {"tumour_cls", "tissue_seg", "gbsg2_surv", "ct_seg", "ctpet_seg"}
    assert specs["ctpet_seg"].modality is Modality.CT_PET and specs["ctpet_seg"].channels == 2
    assert specs["gbsg2_surv"].kind is TaskKind.SURVIVAL
    assert train_config(cfg).seed == cfg.seed
    assert backbone_config(load_config(["backbone=small"])).hidden_size == 192


@pytest.mark.parametrize(
    "override", ["tasks.ct_seg.patch_sise=4", "tasks.ct_seg.patch_size=abc", "backbone.widht=3"]
)
def test_misspelt_keys_and_wrong_types_fail_at_composition(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        load_config([override])


def test_invalid_task_values_name_the_task_and_field() -> None:
    with pytest.raises(ValueError, match=r"task 'ct_seg'\.kind: 'regression' is not one of"):
        task_specs(load_config(["tasks.ct_seg.kind=regression"]))
    with pytest.raises(ValueError, match=r"task 'ct_seg'\.patch_size: 5 must divide"):
        task_specs(load_config(["tasks.ct_seg.patch_size=5"]))


def test_composed_config_is_reused_until_a_config_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from unicon_core import hydra_config

    folder = tmp_path / "configs"
    shutil.copytree(hydra_config.config_dir(), folder)
    monkeypatch.setenv(hydra_config.CONFIG_DIR_ENV, str(folder))
    first = hydra_config.load_config(["experiment=demo"])
    first.federation.rounds = 99  # a caller's edit must not leak into the next result
    assert hydra_config.load_config(["experiment=demo"]).federation.rounds != 99
    demo = folder / "experiment" / "demo.yaml"
    text = demo.read_text()
    assert "\nexperiment_name: demo\n" in text
    demo.write_text(text.replace("\nexperiment_name: demo\n",
                                 "\nexperiment_name: demo\nfederation: {rounds: 15}\n"))
    assert hydra_config.load_config(["experiment=demo"]).federation.rounds == 15


# --- one source per fact: YAML holds only what differs from the dataclass defaults ----------

#: Keys a task file always states, defaults or not: what the task is (TaskSpec's defaults for
#: them are placeholders, not a task).
TASK_IDENTITY = {"name", "kind", "modality", "spatial_dims"}
EXPERIMENTS = ("demo", "demo_dp", "continual", "continual_quick")


def _schemas() -> dict[str, type]:
    from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
    from unicon_core.federation.config import FederationConfig, PrivacyConfig, StrategyConfig

    return {"backbone": BackboneConfig, "train": TrainConfig, "task": TaskSpec,
            "federation": FederationConfig, "privacy": PrivacyConfig, "strategy": StrategyConfig}


def _defaults(schema: type) -> dict[str, Any]:
    """A dataclass's field defaults as plain YAML-comparable values (enums as their values)."""
    import dataclasses
    import enum

    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            continue
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out


def _body(path: Path) -> dict[str, Any]:
    """A YAML file's own keys (its defaults list left out), interpolations unresolved."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(data, dict), path
    data.pop("defaults", None)
    return data


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as YAML values (``false`` is not ``0``; ``1.0`` is ``1``)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def test_group_files_state_only_what_differs_from_their_schema() -> None:
    from unicon_core.hydra_config import config_dir

    schemas = _schemas()
    restated = []
    checked = 0
    for group, schema in schemas.items():
        defaults = _defaults(schema)
        for path in sorted((config_dir() / group).glob("*.yaml")):
            checked += 1
            for key, value in _body(path).items():
                if group == "task" and key in TASK_IDENTITY:
                    continue
                assert key in defaults, f"{path}: {key!r} is no field of {schema.__name__}"
                if _same(value, defaults[key]):
                    restated.append(f"{path.relative_to(config_dir())}: {key}: {value!r}")
    assert checked >= 15, "expected the config group files"
    assert not restated, "keys equal to their dataclass default:\n" + "\n".join(restated)


def test_the_check_catches_a_restated_default() -> None:
    """The comparison above fails on a default written out (ints vs floats, bools, lists)."""
    from unicon_core.config import TaskSpec, TrainConfig

    train, task = _defaults(TrainConfig), _defaults(TaskSpec)
    assert _same(0.0, train["weight_decay"]) and _same("adamw", train["optimizer"])
    assert _same({"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["default"]}, task["lora"])
    assert not _same(0, train["progress"]) and not _same(False, train["warmup_steps"])
    assert not _same("${seed}", train["seed"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_state_only_what_their_defaults_do_not(
    experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each key an experiment sets changes the config it composes without its own keys (its
    defaults list kept); keys of sections without a group schema (``continual``) are compared
    with their dataclass's defaults."""
    import shutil

    from omegaconf import OmegaConf

    from unicon_core import hydra_config
    from unicon_core.continual.stages import ContinualConfig

    folder = tmp_path / "configs"
    shutil.copytree(hydra_config.config_dir(), folder)
    path = folder / "experiment" / f"{experiment}.yaml"
    body = _body(path)
    kept = OmegaConf.load(path)
    path.write_text("# @package _global_\n" + OmegaConf.to_yaml(
        OmegaConf.create({"defaults": kept.get("defaults", [])})))
    monkeypatch.setenv(hydra_config.CONFIG_DIR_ENV, str(folder))
    base = OmegaConf.to_container(hydra_config.load_config([f"experiment={experiment}"]),
                                  resolve=False)
    assert isinstance(base, dict)
    base.setdefault("continual", {})
    fallback = {"continual": _defaults(ContinualConfig)}
    restated = []
    for key, value in _leaves(body).items():
        node: Any = base
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError:
            section, _, rest = key.partition(".")
            node = fallback.get(section, {}).get(rest, KeyError)
        if _same(value, node):
            restated.append(f"{key}: {value!r}")
    assert not restated, f"experiment/{experiment}.yaml restates: {restated}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_resolves_into_validated_settings(experiment: str) -> None:
    """The values the shortened YAML now takes from the dataclasses (compared once against the
    full YAML of before, issue #16): unchanged."""
    from omegaconf import OmegaConf

    from unicon_core.continual.stages import ContinualConfig
    from unicon_core.federation.config import settings_from_config

    cfg = load_config([f"experiment={experiment}"])
    settings = settings_from_config(cfg)
    assert settings.experiment == experiment
    assert settings.federation.rounds == 3 and settings.federation.evaluate
    assert settings.federation.round_timeout_s == 3600 and settings.federation.min_sites == 1
    train = settings.train
    assert (train.max_steps, train.batch_size, train.lr) == (20, 16, 0.002)
    assert settings.train.epochs == (4 if experiment.startswith("demo") else 1)
    assert settings.train.progress is False and settings.train.weight_decay == 0.0
    assert (settings.backbone.hidden_size, settings.backbone.num_layers) == (64, 4)
    assert settings.strategy.name == "per_task_fedavg" and settings.strategy.lora == {}
    assert settings.privacy.enabled is (experiment == "demo_dp")
    assert settings.privacy.epsilon_budget == (10.0 if experiment == "demo_dp" else None)
    assert settings.privacy.noise_multiplier == 1.0 and settings.privacy.delta == 1e-5
    for spec in settings.tasks.values():
        assert (spec.lora.rank, spec.lora.alpha, spec.patch_size) == (4, 8.0, 8)
    assert settings.tasks["gbsg2_surv"].input_size == [8]
    assert settings.tasks["ctpet_seg"].channels == 2 and settings.tasks["ct_seg"].channels == 1
    if experiment.startswith("continual"):
        quick = experiment == "continual_quick"
        plan = ContinualConfig.from_dict(OmegaConf.to_container(cfg.continual, resolve=True))
        assert (plan.rounds, plan.local_steps, plan.batch_size) == ((2, 2, 8) if quick
                                                                    else (3, 12, 8))
        assert plan.lr == 0.002 and plan.seeds == [0, 1, 2] and not plan.foundation_stage
        assert plan.adaptation_task == "tumour_cls" and len(plan.stages) == 5
        assert settings.federation.wandb == "disabled" and not settings.federation.plots
    else:
        assert settings.federation.wandb == "offline" and settings.federation.plots
        assert settings.backbone.modalities["ct"]["name"] == "i3resnet"
