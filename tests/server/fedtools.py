"""Shared helpers of the federated tests: tiny tabular sites, tiny configs, the in-process runner.

The sites are clinical (tabular) so a round takes well under a second on one core; two tasks
(classification, survival) with their own stems exercise per-task aggregation of adapters,
heads and stems.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.manifest import SiteMetadata, write_site_json
from unicon_core.federation.config import site_dirs_override
from unicon_flower.inprocess import InProcessGrid

FEATURES = ["f0", "f1", "f2"]
CLS_TASK = "tab_cls"
SURV_TASK = "tab_surv"


def task_spec(name: str) -> TaskSpec:
    """One of the two tiny test tasks (small LoRA rank keeps skills small)."""
    kind = TaskKind.CLASSIFICATION if name == CLS_TASK else TaskKind.SURVIVAL
    return TaskSpec(
        name=name, kind=kind, modality=Modality.CLINICAL, spatial_dims=0,
        input_size=[len(FEATURES)], num_classes=2, feature_names=list(FEATURES),
        lora={"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "linear1"]},
    )


def make_site(root: Path, name: str, task: str, n: int = 24, seed: int = 0) -> Path:
    """Write a valid tabular site folder (``site.json`` + ``manifest.csv``) and return it."""
    rng = np.random.default_rng(seed)
    site = root / name
    site.mkdir(parents=True)
    spec = task_spec(task)
    write_site_json(site, SiteMetadata(site=name, synthetic=True, source="test",
                                       description="tiny test site", task=spec))
    x = rng.normal(size=(n, len(FEATURES)))
    splits = (["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    rows = []
    for i in range(n):
        row = {f: f"{x[i, j]:.4f}" for j, f in enumerate(FEATURES)}
        row.update(id=f"{name}-{i}", split=splits[i])
        if task == CLS_TASK:
            row["label"] = str(i % 2)  # both classes in every split
        else:
            row["time"] = f"{float(np.exp(-x[i, 0]) * 100 + 1):.3f}"
            row["event"] = str(int(i % 3 != 0))
        rows.append(row)
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return site


def make_sites(root: Path, layout: Sequence[tuple[str, str, int]]) -> list[Path]:
    """Sites from ``(name, task, n)`` triples."""
    return [make_site(root, name, task, n, seed=i) for i, (name, task, n) in enumerate(layout)]


def break_label(site: Path) -> None:
    """Give the first data row of a classification site's manifest class 7 (of 2): it won't join."""
    manifest = site / "manifest.csv"
    head, first, *rest = manifest.read_text().splitlines()
    assert head.endswith(",label"), f"{manifest}: not a classification manifest"
    manifest.write_text("\n".join([head, first.rsplit(",", 1)[0] + ",7", *rest]) + "\n")


#: 3 sites, 2 tasks: two classification sites of different sizes, one survival site.
THREE_SITES = [("site_a", CLS_TASK, 24), ("site_b", CLS_TASK, 36), ("site_c", SURV_TASK, 24)]


def tiny_overrides(
    site_dirs: Sequence[Path], run_dir: Path, rounds: int = 2, *extra: str
) -> list[str]:
    """Hydra overrides of a tiny, fast federated run writing into ``run_dir``."""
    return [
        "experiment=demo",
        "backbone=tiny",  # the demo's CT foundation is not needed by these tasks
        site_dirs_override(site_dirs),
        f"federation.rounds={rounds}",
        f"federation.run_dir='{run_dir}'",
        "federation.wandb=disabled",
        "backbone.hidden_size=32",
        "backbone.num_layers=2",
        "backbone.num_heads=2",
        "backbone.mlp_dim=64",
        "train.epochs=1",
        "train.max_steps=3",
        "train.batch_size=8",
        *extra,
    ]


def run_in_process(
    overrides: Sequence[str], num_nodes: int, client_overrides: Sequence[str] = ()
) -> InProcessGrid:
    """Run the real ServerApp logic against the real ClientApp over an in-process grid
    (:func:`unicon_flower.runner.run_overrides`); returns the grid (every exchange)."""
    from unicon_flower.runner import run_overrides

    return run_overrides(overrides, num_nodes, client_overrides=client_overrides)
