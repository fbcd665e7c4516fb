"""A run over one's own site folders drops the demo experiment and is named after its tasks."""

from __future__ import annotations

from pathlib import Path

from tests.unicon_core.data.sites import cls_site, surv_site
from unicon_core.data.run_naming import own_sites_overrides, run_name


def test_site_dirs_drop_the_demo_and_name_the_run(tmp_path: Path) -> None:
    # Prepare
    a, b = cls_site(tmp_path / "a"), surv_site(tmp_path / "b")
    override = f"federation.site_dirs=[{a},'{b}']"
    # Execute
    out = own_sites_overrides([override, "federation.rounds=2"])
    # Assert
    assert out == ["~experiment", override, "federation.rounds=2",
                   "+experiment_name=tiny_cls_tiny_surv_2sites"]
    assert run_name([str(a), str(tmp_path / "missing")]) == "tiny_cls_unknown_2sites"


def test_an_explicit_experiment_or_name_is_kept(tmp_path: Path) -> None:
    a = cls_site(tmp_path / "a")
    given = [f"federation.site_dirs=[{a}]", "experiment=demo"]
    assert own_sites_overrides(given) == given
    named = own_sites_overrides([f"federation.site_dirs=[{a}]", "+experiment_name=mine"])
    assert named == ["~experiment", f"federation.site_dirs=[{a}]", "+experiment_name=mine"]
    assert own_sites_overrides(["federation.rounds=2"]) == ["federation.rounds=2"]


def test_loaded_settings_carry_no_demo(tmp_path: Path) -> None:
    from unicon_core.hydra_config import load_settings

    a, b = cls_site(tmp_path / "a"), cls_site(tmp_path / "b")
    settings = load_settings([f"federation.site_dirs=[{a},{b}]"])
    assert settings.experiment == "tiny_cls_2sites"
    assert list(settings.federation.sites) == ["a", "b"] and settings.tasks == {}
    assert "demo" not in str(settings.resolved)
