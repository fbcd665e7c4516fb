"""A site folder as the site guard reads it (``site.json`` only) and the run config it sees."""

from __future__ import annotations

from pathlib import Path

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.manifest import SiteMetadata, write_site_json

TASK = "tab_cls"
#: The tiny architecture the loopback deployment test runs (the run config's only say).
RUN_CONFIG = {"experiment": "", "overrides": "~experiment backbone.hidden_size=32 "
              "backbone.num_layers=2 backbone.num_heads=2 backbone.mlp_dim=64"}


def task_spec(name: str = TASK) -> TaskSpec:
    """A tiny tabular classification task (LoRA rank 2 on two targets)."""
    return TaskSpec(
        name=name, kind=TaskKind.CLASSIFICATION, modality=Modality.CLINICAL, spatial_dims=0,
        input_size=[3], num_classes=2, feature_names=["f0", "f1", "f2"],
        lora={"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "linear1"]},
    )


def make_site_json(root: Path, name: str = "site_a", task: str = TASK) -> Path:
    """A folder holding ``site.json`` for ``task`` (no manifest: the guard reads none)."""
    site = root / name
    site.mkdir(parents=True)
    write_site_json(site, SiteMetadata(site=name, synthetic=True, source="test",
                                       description="site guard test", task=task_spec(task)))
    return site
