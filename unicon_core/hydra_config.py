"""Hydra is the one source of configuration: compose ``configs/`` and validate it.

The dataclasses of :mod:`unicon_core.config` are registered as structured-config schemas, so a
misspelt key fails at composition, and :func:`task_specs` / :func:`backbone_config` /
:func:`train_config` run their ``__post_init__`` validation (a ``ValueError`` naming the field).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
from unicon_core.federation.config import ExperimentSettings, settings_from_config
from unicon_core.federation.config import register_schemas as register_federation

#: Environment variable that points at another ``configs/`` folder.
CONFIG_DIR_ENV = "UNICON_CONFIG_DIR"


def config_dir() -> Path:
    """The ``configs/`` folder: ``$UNICON_CONFIG_DIR`` or the one beside the package."""
    env = os.environ.get(CONFIG_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "configs"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"no config.yaml in {path} (set {CONFIG_DIR_ENV})")
    return path


def register_schemas() -> None:
    """Register the validated dataclasses with hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="backbone", name="backbone_schema", node=BackboneConfig)
    store.store(group="train", name="train_schema", node=TrainConfig)
    store.store(group="task", name="task_schema", node=task_schema())
    register_federation(store)


@functools.cache
def task_schema() -> type:
    """``TaskSpec``'s fields as a hydra schema, enum fields typed ``str``.

    OmegaConf matches enums by member name (``CLASSIFICATION``), while task files use the values
    (``classification``, ``ct+pet``). The schema checks keys and types at composition; the full
    validation runs when :func:`task_specs` builds the ``TaskSpec``.
    """
    hints = typing.get_type_hints(TaskSpec)
    fields = []
    for f in dataclasses.fields(TaskSpec):
        hint = hints[f.name]
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            hint = str
        default = (
            dataclasses.field(default_factory=f.default_factory)
            if f.default_factory is not dataclasses.MISSING
            else dataclasses.field(
                default=f.default.value if isinstance(f.default, enum.Enum) else f.default
            )
        )
        fields.append((f.name, hint, default))
    return dataclasses.make_dataclass("TaskSchema", fields)


#: Composed configs of this process: (folder, name, overrides) -> (files fingerprint, config).
_COMPOSED: dict[tuple[str, str, tuple[str, ...]], tuple[tuple[Any, ...], DictConfig]] = {}


def _fingerprint(folder: Path) -> tuple[Any, ...]:
    """Name, size and mtime of every YAML file under ``folder`` (a changed file recomposes)."""
    return tuple(sorted((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
                        for p in folder.rglob("*.yaml") for st in [p.stat()]))


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with command-line style overrides.

    Composing takes most of a second, and the simulations compose the same overrides for every
    site, stage and message, so a process keeps each result (a deep copy per call, flags and
    schema types kept) until a file under ``configs/`` changes.
    """
    from unicon_core.data.run_naming import own_sites_overrides

    overrides = own_sites_overrides(overrides)  # site_dirs alone: no demo, named by tasks
    folder = config_dir()
    key = (str(folder), config_name, tuple(overrides))
    fingerprint = _fingerprint(folder)
    cached = _COMPOSED.get(key)
    if cached is not None and cached[0] == fingerprint:
        return copy.deepcopy(cached[1])
    cfg = _compose(folder, config_name, overrides)
    _COMPOSED[key] = (fingerprint, copy.deepcopy(cfg))
    return cfg


def load_settings(overrides: Sequence[str]) -> ExperimentSettings:
    """Compose the hydra config with ``overrides`` and validate it into typed settings.

    The one place an override list becomes settings: the CLI and Flower's run config
    (``overrides_from_run_config``) call it; code below them passes the settings on.
    """
    return settings_from_config(load_config(list(overrides)))


def _compose(folder: Path, config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(folder)):
        return compose(config_name=config_name, overrides=list(overrides))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def backbone_config(cfg: DictConfig) -> BackboneConfig:
    """The validated backbone section."""
    return BackboneConfig(**_plain(cfg.backbone))


def train_config(cfg: DictConfig) -> TrainConfig:
    """The validated local-training section."""
    return TrainConfig(**_plain(cfg.train))


def task_file_spec(name: str) -> TaskSpec:
    """The validated spec of ``configs/task/<name>.yaml`` on its own, as an experiment composes
    it into ``tasks.<name>`` before its overrides.

    The demo builders write this into each site's ``site.json``, so the task file is the one
    place a demo task (its preprocessing included) is declared.
    """
    path = config_dir() / "task" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no task file {path} (set {CONFIG_DIR_ENV})")
    data = dict(_plain(OmegaConf.load(path)))
    data.pop("defaults", None)
    if data.setdefault("name", name) != name:
        raise ValueError(f"{path}: name is {data['name']!r}; it must equal the file's name")
    return TaskSpec.from_dict(data)


def task_specs(cfg: DictConfig) -> dict[str, TaskSpec]:
    """Validated task specs of ``cfg.tasks``; each task's name is its key."""
    specs: dict[str, TaskSpec] = {}
    for name, node in (_plain(cfg.get("tasks")) or {}).items():
        data = dict(node)
        if data.setdefault("name", name) != name:
            raise ValueError(f"tasks.{name}.name is {data['name']!r}; it must equal its key")
        specs[name] = TaskSpec.from_dict(data)
    return specs
