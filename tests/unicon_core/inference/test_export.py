"""`export`: a run folder's checkpoint becomes a bundle whose model reproduces the run's skills
exactly, with provenance, router prototypes and feature statistics from the sites."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unicon_core.inference._tiny import SPECS, TINY, example_inputs, tiny_model
from unicon_core.commands.errors import EXIT_INVALID_DATA, EXIT_USAGE, UsageError
from unicon_core.commands.inference import export_command
from unicon_core.data.manifest import SiteMetadata, write_site_json
from unicon_core.federation.aggregation import prefix_task
from unicon_core.federation.checkpoint import Checkpoint, save_checkpoint
from unicon_core.inference.bundle import BundleError, load_bundle
from unicon_core.inference.export import export_run

SPEC = {s.name: s for s in SPECS}


def _clinical_site(root: Path, name: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    site = root / name
    site.mkdir(parents=True)
    lines = ["id,age,size,grade,time,event,split"]
    for i in range(24):
        split = "train" if i < 16 else ("val" if i < 20 else "test")
        lines.append(
            f"{name}_{i},{rng.normal(55, 10):.1f},{rng.normal(25, 8):.1f},"
            f"{rng.integers(1, 4)},{rng.uniform(100, 2000):.0f},{rng.integers(0, 2)},{split}"
        )
    (site / "manifest.csv").write_text("\n".join(lines) + "\n")
    write_site_json(site, SiteMetadata(name, False, "test cohort", "made up rows", SPEC["surv"]))
    return site


def _run(tmp_path: Path, reachable: bool = True) -> tuple[Path, torch.nn.Module]:
    """A run folder as the ServerApp leaves it: checkpoint, rounds.jsonl, results.json."""
    model = tiny_model([SPEC["ct_seg"], SPEC["surv"]])
    data_root = tmp_path / "data"
    if reachable:
        _clinical_site(data_root, "clin_a", 0)
        _clinical_site(data_root, "clin_b", 1)
    arrays: dict[str, np.ndarray] = {}
    for task in model.tasks:
        arrays.update(
            prefix_task(task, {k: v.numpy() for k, v in model.skill_state_dict(task).items()})
        )
    config = {
        "seed": 0,
        "experiment_name": "t",
        "backbone": asdict(TINY),
        "tasks": {"ct_seg": {k: v for k, v in SPEC["ct_seg"].to_dict().items() if k != "name"}},
        "federation": {
            "data_root": str(data_root),
            "sites": {
                "clin_a": {"path": "clin_a", "task": "surv"},
                "clin_b": {"path": "clin_b", "task": "surv"},
                "ct_site": {"path": "ct_site", "task": "ct_seg"},
            },
        },
    }
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(
        run,
        Checkpoint(round=3, arrays=arrays, foundation_hash=model.foundation_hash, config=config),
    )
    (run / "rounds.jsonl").write_text(
        json.dumps(
            {"round": 3, "sites": {"clin_a": {"task": "surv", "train": {"num-examples": 16}}}}
        )
        + "\n"
    )
    (run / "results.json").write_text(json.dumps({"synthetic": ["ct_seg"]}))
    return run, model


def test_exported_run_reproduces_the_global_skills(tmp_path: Path) -> None:
    # Prepare
    run, model = _run(tmp_path)
    # Execute
    bundle = load_bundle(export_run(run, tmp_path / "bundle"))
    # Assert
    with torch.no_grad():
        for task in model.tasks:
            x = example_inputs()[task]
            assert torch.equal(model(x, task), bundle.model(x, task)), task
    surv = bundle.tasks["surv"]
    assert [s.site for s in surv.trained_on] == ["clin_a", "clin_b"]
    assert surv.trained_on[0].num_examples == 16 and not surv.synthetic
    assert bundle.tasks["ct_seg"].synthetic  # from results.json: its site was not reachable
    assert set(bundle.router) == {"surv"} and bundle.router["surv"].count == 32
    assert surv.feature_mean is not None and 40 < surv.feature_mean[0] < 70
    assert bundle.source["round"] == 3
    assert bundle.source["router_sites"] == ["clin_a", "clin_b"]


def test_export_without_provenance_or_with_another_backbone_fails(tmp_path: Path) -> None:
    run, _ = _run(tmp_path, reachable=False)
    (run / "results.json").unlink()
    with pytest.raises(BundleError, match=r"task 'surv': no spec"):
        export_run(run, tmp_path / "b1")
    run2, _ = _run(tmp_path / "x")
    from unicon_core.federation.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run2)
    ckpt.foundation_hash = "0" * 64
    save_checkpoint(run2, ckpt)
    with pytest.raises(BundleError, match="checkpoint's skills were trained on 000000000000"):
        export_run(run2, tmp_path / "b2")


def test_export_command_reports_errors_and_success(tmp_path: Path, capsys) -> None:
    with pytest.raises(UsageError, match=r"run folder not found: .*no_run"):
        export_command(tmp_path / "no_run", tmp_path / "b")
    (tmp_path / "empty_run").mkdir()
    assert export_command(tmp_path / "empty_run", tmp_path / "b") == EXIT_INVALID_DATA
    assert "no checkpoint" in capsys.readouterr().err
    run, _ = _run(tmp_path)
    assert export_command(run, tmp_path / "b") == 0
    out = capsys.readouterr().out
    assert "ct_seg" in out and "SYNTHETIC" in out


def test_cli_export_of_a_missing_run_folder_is_a_usage_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from unicon_core.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path / "no_run"), str(tmp_path / "b")])
    assert result.exit_code == EXIT_USAGE
    assert result.output.strip() == f"error: run folder not found: {tmp_path / 'no_run'}"
    assert not (tmp_path / "b").exists()


def test_export_prefers_the_federated_summaries_of_the_run(tmp_path: Path) -> None:
    from unicon_core.inference.prototypes import Prototype
    from unicon_core.inference.summaries import write_summaries

    # Prepare: site folders unreachable; the run holds what the query round recorded/pooled
    run, model = _run(tmp_path, reachable=False)
    with pytest.raises(BundleError, match="task 'surv': no spec"):
        export_run(run, tmp_path / "refused")
    (run / "tasks.json").write_text(json.dumps({
        "surv": {"spec": SPEC["surv"].to_dict(), "synthetic": False, "sites": ["clin_a"]},
        "ct_seg": {"spec": SPEC["ct_seg"].to_dict(), "synthetic": True, "sites": ["ct_site"]},
    }))
    proto = Prototype(np.full(4, 2.0), np.full(4, 5.0), 50)
    write_summaries(run, {"ct_seg": proto}, {}, {"ct_seg": ["ct_site"]})
    # Execute
    bundle = load_bundle(export_run(run, tmp_path / "bundle"))
    # Assert
    x = example_inputs()["surv"]
    assert torch.equal(model(x, "surv"), bundle.model(x, "surv"))
    assert [s.site for s in bundle.tasks["surv"].trained_on] == ["clin_a"]
    assert not bundle.tasks["surv"].synthetic and bundle.tasks["ct_seg"].synthetic
    assert set(bundle.router) == {"ct_seg"} and bundle.router["ct_seg"].count == 50
    np.testing.assert_array_equal(bundle.router["ct_seg"].mean, proto.mean)
    assert bundle.source["router"].startswith("federated")
    assert bundle.source["router_sites"] == ["ct_site"]
