"""Hydra composition: the task schema checks keys/types early, TaskSpec validates values."""

from __future__ import annotations

from pathlib import Path

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
    demo.write_text(demo.read_text().replace("rounds: 3", "rounds: 15"))
    assert hydra_config.load_config(["experiment=demo"]).federation.rounds == 15
