"""CLI bodies of pretrain/train, and the typer layer over them."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tests.unicon_core.data.sites import CLS_SPEC, cls_site, read_rows, rewrite, surv_site
from unicon_core.cli import app
from unicon_core.commands.core import pretrain_command, train_local_command
from unicon_core.model import UniconModel
from unicon_core.model.foundation import read_foundation_meta
from unicon_core.pretrain import pretraining_images

# backbone=tiny: the default experiment's backbone also holds the real CT foundation
TINY = ["backbone=tiny", "backbone.hidden_size=32", "backbone.num_layers=1",
        "backbone.mlp_dim=32"]


def test_pretraining_reads_only_the_train_split(tmp_path: Path) -> None:
    # Prepare
    site = cls_site(tmp_path, n=12)
    rows = read_rows(site)
    train_rows = {number for number, r in enumerate(rows, start=1) if r["split"] == "train"}
    # Execute
    images = pretraining_images([site])
    # Assert
    ((stem, dataset),) = images.items()
    seen = {int(dataset[i]["id"].rsplit(":", 1)[1]) for i in range(len(dataset))}  # "site:row"
    assert seen == train_rows
    assert len(seen) < len(rows)  # val/test rows exist and were left out
    assert stem.key == CLS_SPEC.stem_key


def test_pretrain_command_writes_a_loadable_foundation(tmp_path: Path) -> None:
    site = cls_site(tmp_path, n=12)
    out = tmp_path / "f.safetensors"
    digest = pretrain_command([site], out, steps=3, mask_ratio=0.5, overrides=TINY)
    meta = read_foundation_meta(out)
    assert meta["hash"] == digest and meta["extra"]["split"] == "train"
    from unicon_core.hydra_config import backbone_config, load_config

    cfg = backbone_config(load_config([*TINY, f"backbone.checkpoint={out}"]))
    model = UniconModel(cfg)
    model.add_task(CLS_SPEC)
    assert model.foundation_hash == digest
    assert model.task_stem[CLS_SPEC.name] == CLS_SPEC.stem_key  # the foundation's stem is shared


def test_federated_pretrain_command_pools_nothing_and_records_rounds(tmp_path: Path) -> None:
    sites = [cls_site(tmp_path / name, n=12) for name in ("a", "b")]
    out = tmp_path / "fed.safetensors"
    digest = pretrain_command(sites, out, steps=2, mask_ratio=0.5, overrides=TINY, rounds=2)
    meta = read_foundation_meta(out)
    assert meta["hash"] == digest and meta["extra"]["federated_rounds"] == 2


def test_train_local_reports_held_out_metrics_and_real_or_synthetic(tmp_path: Path) -> None:
    site = surv_site(tmp_path, n=30)
    report = train_local_command(site, epochs=1, overrides=TINY)
    assert "val (held out): c_index=" in report
    assert "test (held out): c_index=" in report
    assert ("SYNTHETIC" in report) or ("real data" in report)


def test_train_local_keeps_the_round_budget_and_writes_a_bundle(tmp_path: Path) -> None:
    # Prepare: a config whose round trains 2 steps
    from unicon_core.inference.bundle import load_bundle

    site = surv_site(tmp_path, n=30)
    out = tmp_path / "bundle"
    # Execute: no --epochs, so the train config's budget (max_steps) holds
    report = train_local_command(site, epochs=None, overrides=[*TINY, "train.max_steps=2"],
                                 bundle_dir=out)
    # Assert: two steps; the bundle holds a trained skill (not the initial one), the same one
    # a second identical run writes (training is deterministic under the seed)
    assert "trained 2 steps" in report and f"wrote bundle {out}" in report
    bundle = load_bundle(out)
    (task,) = bundle.model.tasks
    record = bundle.entry(task).trained_on[0]
    assert record.site and "unicon train" in record.source
    from unicon_core.hydra_config import backbone_config, load_config

    fresh = UniconModel(backbone_config(load_config(TINY)), seed=0)
    fresh.add_task(bundle.entry(task).spec)
    trained = bundle.model.skill_state_dict(task)
    assert any(not (v == fresh.skill_state_dict(task)[k]).all() for k, v in trained.items())
    train_local_command(site, epochs=None, overrides=[*TINY, "train.max_steps=2"],
                        bundle_dir=tmp_path / "bundle2")
    second = load_bundle(tmp_path / "bundle2").model.skill_state_dict(task)
    assert all((v == second[k]).all() for k, v in trained.items())


def test_cli_lists_commands_and_validate_exit_status(tmp_path: Path) -> None:
    from unicon_flower.cli import app as console_app  # the console script: + Flower commands

    runner = CliRunner()
    result = runner.invoke(console_app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "federate", "validate", "prepare-demo", "pretrain", "train"):
        assert command in result.output
    site = cls_site(tmp_path, n=6)
    assert runner.invoke(app, ["validate", str(site)]).exit_code == 0
    rows = read_rows(site)
    rows[0]["label"] = "7"
    rewrite(site, rows, CLS_SPEC)
    bad = runner.invoke(app, ["validate", str(site)])
    assert bad.exit_code != 0
    assert "row 1" in bad.output
