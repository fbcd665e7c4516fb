"""The refined-foundation strategy: a shared backbone refined per stage, plugins as retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unicon_core.continual.test_stage_run import TINY, TINY_OVERRIDES, _config
from unicon_core.continual.baselines.refined import RefinedFoundation, loop_takes_a_regulariser
from unicon_core.continual.plugins import build_plugins
from unicon_core.continual.runner import run_continual
from unicon_flower.continual import make_context


def _run(tmp_path: Path, plugins: list[Any] | None, tag: str) -> tuple[dict[str, Any], Any]:
    cfg = _config(tmp_path / f"sites_{tag}")
    ctx = make_context(cfg, 0, TINY, tmp_path / tag, TINY_OVERRIDES)
    strategy = RefinedFoundation()
    out = run_continual(strategy, ctx, plugins).to_dict()
    out.pop("wall_s")
    for log in out["logs"]:
        log.pop("train_s")
    return out, strategy


def test_refinement_moves_the_backbone_and_disabled_plugins_change_nothing(
    tmp_path: Path,
) -> None:
    # Prepare
    from unicon_core.model import UniconModel

    disabled = build_plugins(["kd", "lwf", "ewc"])
    for p in disabled:
        p.enabled = False
    # Execute
    plain, strategy = _run(tmp_path, None, "plain")
    off, _ = _run(tmp_path, disabled, "off")
    # Assert
    assert plain == off
    assert plain["order"] == ["tab_cls", "tab_surv"] and plain["bwt"] == plain["bwt"]
    assert strategy.model.foundation_hash != UniconModel(TINY, seed=0).foundation_hash


@pytest.mark.skipif(not loop_takes_a_regulariser(),
                    reason="train_task has no regulariser hook in this checkout")
def test_enabled_plugins_enter_training_and_ewc_consolidates(tmp_path: Path) -> None:
    # Prepare
    plugins = build_plugins(["kd", "ewc"], {"kd": {"retention": 5.0}})
    # Execute
    _, plain = _run(tmp_path, None, "plain")
    _, refined = _run(tmp_path, plugins, "plugins")
    # Assert: the KD (and, at stage 1, EWC) terms changed what training did
    import torch

    a, b = plain.model.backbone_state_dict(), refined.model.backbone_state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for task in ("tab_cls", "tab_surv"):  # stage 0 distils from the initial foundation
        assert any(not torch.equal(plain.skills[task][k], refined.skills[task][k])
                   for k in plain.skills[task])
    assert plugins[1].anchor  # type: ignore[attr-defined]


def test_the_strategy_gives_ewc_its_fisher_and_mds_its_site_features(tmp_path: Path) -> None:
    # Prepare
    import torch

    from unicon_core.continual.plugins import EWCPlugin, MDSPlugin
    from unicon_core.continual.plugins.mds import FeatureStats
    from unicon_core.training.plans import backbone_names

    cfg = _config(tmp_path / "sites")
    ctx = make_context(cfg, 0, TINY, tmp_path / "run", TINY_OVERRIDES)
    strategy = RefinedFoundation()
    plan = ctx.plans[0]
    dim = TINY.hidden_size
    mds = MDSPlugin(FeatureStats(torch.zeros(dim, dtype=torch.float64),
                                 torch.eye(dim, dtype=torch.float64), 100), k=3)
    ewc = EWCPlugin()
    # Execute
    mds.before_stage(strategy, plan, ctx)
    ewc.after_stage(strategy, plan, ctx)
    # Assert
    assert sorted(mds.selected) == ["cls_a", "cls_b"]
    assert all(len(idx) == 3 for idx in mds.selected.values())
    assert sorted(ewc.anchor) == sorted(backbone_names(strategy.model))
    assert all((f >= 0).all() for f in ewc.fisher.values())
    assert any(f.sum() > 0 for f in ewc.fisher.values())


def test_realign_revalidates_and_retunes_earlier_skills_on_the_refined_backbone(
    tmp_path: Path,
) -> None:
    # Prepare: tolerance -1: every changed task is re-tuned
    from unicon_core.continual.plugins import RealignPlugin

    realign = RealignPlugin(tolerance=-1.0)
    # Execute
    _run(tmp_path, [realign], "realign")
    # Assert: nothing earlier at stage 0; at stage 1 the classification skill sits on a
    # backbone that moved, is measured, re-tuned and measured again
    assert realign.reports[0] == []
    (report,) = realign.reports[1]
    assert report.task == "tab_cls" and not report.identical
    assert report.retuned and report.after_retune == report.after_retune


def test_realign_refuses_changed_outputs_when_identity_is_guaranteed(tmp_path: Path) -> None:
    # Prepare
    from unicon_core.continual.plugins import RealignPlugin

    # Execute / Assert
    with pytest.raises(ValueError, match="tab_cls"):
        _run(tmp_path, [RealignPlugin(guarantee_identical=True)], "guarantee")


def test_site_levels_give_every_train_row_per_level_and_site_features_the_last(
    tmp_path: Path,
) -> None:
    # Prepare
    cfg = _config(tmp_path / "sites")
    ctx = make_context(cfg, 0, TINY, tmp_path / "run", TINY_OVERRIDES)
    strategy = RefinedFoundation()
    plan = ctx.plans[0]
    # Execute
    levels = strategy.site_levels(plan, ctx)
    last = strategy.site_features(plan, ctx)
    # Assert: what the retrieval memory and MDS read, one row per train example
    assert sorted(levels) == sorted(plan.site_tasks) == sorted(last)
    for site, feats in levels.items():
        rows = len(ctx.sites[site].dataset("train", train=False))
        assert all(f.shape == (rows, TINY.hidden_size) for f in feats)
        assert last[site].equal(feats[-1])
