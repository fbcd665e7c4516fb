"""The forgetting-regime benchmark (issue #15): its config validates, and its section is built
from the runs it is given (a runner returning known matrices stands in for the federation)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from simulations import forgetting_bench as fb
from unicon_core.continual.matrix import summary

NAN = math.nan
#: method -> seed-0 matrix (rows tumour_cls, tissue_seg; columns: after stage 0, 1)
KNOWN = {
    "isolated": [[0.70, 0.70], [NAN, 0.80]],
    "naive_sequential": [[0.70, 0.60], [NAN, 0.78]],
    "refined": [[0.72, 0.50], [NAN, 0.75]],
    "medseqft": [[0.72, 0.68], [NAN, 0.83]],
}


def _matrix(name: str, seed: int) -> list[list[float]]:
    """Seed 1 is seed 0 shifted by -0.02 in the final column (a known spread)."""
    return [[v - (0.02 * seed if j == 1 else 0.0) for j, v in enumerate(row)]
            for row in KNOWN[name]]


def _fake_runner(method: fb.Method, cfg: Any, backbone: Any, overrides: list[str],
                 run_dir: Path, seed: int, sites: dict[str, Any]) -> dict[str, Any]:
    matrix = _matrix(method.name, seed)
    result = {"method": method.name, "seed": seed, "stages": ["classification", "segmentation"],
              "order": ["tumour_cls", "tissue_seg"], "matrix": matrix, "trained": [0, 1],
              **summary(matrix, [0, 1]), "wall_s": 60.0, "realign": []}
    if method.name == "refined":  # re-validation only: one report after stage 1
        result["realign"] = [[], [{"task": "tumour_cls", "identical": False, "before": 0.71,
                                   "after": 0.62, "retuned": False, "after_retune": None}]]
    return result


def _site(task: str, n: int, synthetic: bool = False) -> SimpleNamespace:
    kind = "segmentation" if task.endswith("seg") else "classification"
    return SimpleNamespace(task_spec=SimpleNamespace(name=task, kind=kind), synthetic=synthetic,
                           dataset=lambda split, train=False: [0] * n)


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    # Prepare: the real regime config, fake sites and a runner with known matrices
    import unicon_core.continual.runner as runner

    cfg, backbone, overrides = fb.regime(tmp_path, seeds=[0, 1])
    sites = {"brain_axial": _site("tissue_seg", 10), "brain_coronal": _site("tissue_seg", 12),
             "br35h_a": _site("tumour_cls", 30)}
    monkeypatch.setattr(runner, "open_sites", lambda cfg, seed: sites)
    # Execute
    out = fb.run(cfg, backbone, overrides, tmp_path, list(KNOWN), runner=_fake_runner)
    out["meta"] = {"command": "python -m simulations.forgetting_bench", "date": "today",
                   "machine": "test", "run_dir": "runs/x", "minutes": 1.0, "quick": False,
                   "rounds": cfg.rounds, "local_steps": cfg.local_steps,
                   "batch_size": cfg.batch_size, "lr": cfg.lr, "backbone": "tiny"}
    return out


def test_the_regime_config_validates(tmp_path: Path) -> None:
    # Execute
    cfg, backbone, overrides = fb.regime(tmp_path)
    quick, _, _ = fb.regime(tmp_path, quick=True, seeds=[5])
    # Assert: tissue segmentation then tumour classification, both on the pretrained MRI
    # foundation (a backbone of the MRI modality's own), three seeds
    assert [s.name for s in cfg.stages] == ["segmentation", "classification"]
    assert cfg.stages[0].sites == ["brain_axial", "brain_coronal"]
    assert cfg.seeds == [0, 1, 2] and cfg.plugins == []
    assert backbone.modalities["mri"]["name"] == "i3resnet"
    assert backbone.modalities["mri"]["options"]["weights"] == "astra"
    assert f"experiment={fb.EXPERIMENT}" in overrides
    assert (quick.rounds, quick.local_steps, quick.seeds) == (1, 2, [5])
    # the earlier regime (tiny random transformer) stays selectable
    old, _, old_overrides = fb.regime(tmp_path, experiment="continual_forgetting")
    assert [s.name for s in old.stages] == ["prognosis", "classification"]
    assert "experiment=continual_forgetting" in old_overrides


def test_backbone_label_names_each_modality_network() -> None:
    from unicon_core.config import BackboneConfig

    assert fb.backbone_label(BackboneConfig()) == "transformer 64x4"
    label = fb.backbone_label(BackboneConfig(modalities={"mri": {
        "name": "i3resnet", "options": {"weights": "astra", "spatial_dims": 2}}}))
    assert label == ("mri: i3resnet (spatial_dims 2, weights astra); "
                     "other modalities: transformer 64x4")


@pytest.mark.slow  # imports every strategy (the training stack): 10 s alone, minutes under load
def test_every_method_names_a_known_strategy_and_valid_plugins(tmp_path: Path) -> None:
    from unicon_core.continual.baselines import CONTINUAL_STRATEGIES
    from unicon_core.continual.plugins import build_plugins

    cfg, _, _ = fb.regime(tmp_path)
    for method in fb.METHODS:
        assert method.strategy in CONTINUAL_STRATEGIES
        mcfg = type(cfg)(**{**vars(cfg), "plugins": list(method.plugins),
                            "plugin_options": dict(method.options)})
        assert [p.name for p in build_plugins(mcfg.plugins, mcfg.plugin_options)] \
            == list(method.plugins)


def test_the_section_is_built_from_the_runs(results: dict[str, Any]) -> None:
    # Execute
    text = fb.render(results)
    fwt = fb.per_seed_fwt(results)
    # Assert: BWT and FWT from the known matrices (seed 0, seed 1 = final column - 0.02)
    assert [r["bwt"] for r in results["runs"]["refined"]] == pytest.approx([-0.22, -0.24])
    assert fwt["naive_sequential"] == pytest.approx([-0.02, -0.02])
    assert fwt["refined"] == pytest.approx([-0.05, -0.05])
    assert fwt["isolated"] == pytest.approx([0.0, 0.0])
    assert text.startswith(fb.HEADING)
    assert "-0.230 ± 0.014" in text  # refined's mean BWT and sd over the two seeds
    assert "-0.220, -0.240" in text  # per seed
    assert "naive sequential: shared adapter: BWT -0.110: met" in text
    assert "naive sequential: refined backbone, no plugin: BWT -0.230: met" in text
    # the claim: medseqft's final tissue Dice 0.83/0.81 vs refined 0.75/0.73 -> +0.08, met
    assert "tissue_seg final Dice: +0.080" in text and "+0.03: met" in text
    # vs the shared adapter (0.78/0.76): +0.050, also met
    assert "tissue_seg final Dice: +0.050" in text
    assert "test n: tissue_seg: 22 (brain_axial 10, brain_coronal 12); tumour_cls: 30" in text
    assert "the best retention method by BWT" in text and "MedSeqFT" in text
    assert "| 1 | tumour_cls | 0/2 |" in text  # realign: outputs changed in both seeds
    assert "Synthetic tasks in this regime: none" in text
    assert "**Claim (MedSeqFT vs naive sequential fine-tuning of the same backbone): met**" in text


def test_a_regime_that_does_not_forget_says_missed(results: dict[str, Any]) -> None:
    # Prepare: the naive shared adapter keeps its first task
    for r in results["runs"]["naive_sequential"]:
        r["matrix"][0][1] = r["matrix"][0][0]
        r.update(summary(r["matrix"], r["trained"]))
    # Execute
    text = fb.render(results)
    # Assert
    assert "naive sequential: shared adapter: BWT +0.000: **MISSED**" in text
    assert "Neither naive method forgets" not in text  # the backbone one still does


def test_report_only_replaces_its_section(results: dict[str, Any], tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    # Execute: twice, the second replaces the first
    fb.main(["--report-only", str(path), "--out", str(out)])
    fb.main(["--report-only", str(path), "--out", str(out)])
    fb.main(["--report-only", str(path), "--out", str(tmp_path / "new.md")])
    # Assert
    text = out.read_text()
    assert text.count(fb.HEADING) == 1 and "## Other\n\nkept" in text
    assert (tmp_path / "new.md").read_text().lstrip().startswith(fb.HEADING)


def test_seeds_run_apart_merge_into_the_same_runs(results: dict[str, Any]) -> None:
    # Prepare: seed 1 and seed 0 as two processes' results
    parts = [{**results, "seeds": [s],
              "runs": {n: [r for r in rs if r["seed"] == s] for n, rs in results["runs"].items()},
              "meta": {**results["meta"], "minutes": m}} for s, m in ((1, 3.0), (0, 2.0))]
    # Execute
    merged = fb.merge(parts)
    # Assert
    assert merged["seeds"] == [0, 1] and merged["runs"] == results["runs"]
    assert merged["meta"]["minutes"] == 3.0
    with pytest.raises(ValueError, match="seeds repeat"):
        fb.merge([parts[0], parts[0]])
    with pytest.raises(ValueError, match="local_steps"):
        fb.merge([parts[0], {**parts[1], "meta": {**parts[1]["meta"], "local_steps": 1}}])


def test_groups_of_methods_and_a_stopped_process_merge_into_the_same_runs(
        results: dict[str, Any]) -> None:
    # Prepare: seed 0 whole; seed 1 split: its first method from a stopped process's
    # partial.json (no meta), the others from a finished process run with --methods
    first, *others = results["methods"]

    def seed(s: int, names: list[str]) -> dict[str, list]:
        return {n: [r for r in results["runs"][n] if r["seed"] == s] for n in names}

    whole = {**results, "seeds": [0], "runs": seed(0, results["methods"])}
    stopped = {k: v for k, v in results.items() if k != "meta"} | {
        "seeds": [1], "runs": seed(1, [first])}
    rest = {**results, "seeds": [1], "methods": others, "runs": seed(1, others)}
    # Execute
    merged = fb.merge([whole, stopped, rest])
    # Assert: the same runs as one process; the stopped part named in the command
    assert merged["seeds"] == [0, 1] and merged["runs"] == results["runs"]
    assert merged["methods"] == results["methods"]
    assert "1 stopped process(es)" in merged["meta"]["command"]
    with pytest.raises(ValueError, match=f"{first} ran for seeds \\[0\\], the merged"):
        fb.merge([whole, rest])  # seed 1 lacks the stopped process's method
    with pytest.raises(ValueError, match="no finished run"):
        fb.merge([stopped])
    with pytest.raises(ValueError, match="seeds repeat"):
        fb.merge([whole, stopped, rest, stopped])


def test_side_bytes_count_what_the_plugins_would_send() -> None:
    import torch

    from unicon_core.continual.plugins.ewc import EWCPlugin
    from unicon_core.continual.plugins.mds import FeatureStats, MDSPlugin
    from unicon_core.continual.plugins.retrieval import ReferenceMemory, RetrievalKDPlugin

    # Prepare: two sites in stage 0, one joins in stage 1
    cfg = SimpleNamespace(stages=[SimpleNamespace(sites=["a", "b"]),
                                  SimpleNamespace(sites=["c"])])
    mds = MDSPlugin(stats=FeatureStats(torch.zeros(4, dtype=torch.float64),
                                       torch.eye(4, dtype=torch.float64), 10))
    memory = ReferenceMemory()
    memory.items = {"a": {"t0": [torch.zeros(8, 4), torch.zeros(8, 4)]},
                    "b": {"t0": [torch.zeros(8, 4), torch.zeros(8, 4)]},
                    "c": {"t1": [torch.zeros(8, 4), torch.zeros(8, 4)]}}
    retrieval = RetrievalKDPlugin(memory=memory)
    ewc = EWCPlugin()
    ewc.fisher = {"w": torch.zeros(10)}
    # Execute
    out = fb.side_bytes([mds, retrieval, ewc], cfg)
    # Assert: float64 stats (4 + 16 values + count) from a and b up, merged down to c;
    # stage-0 prototypes (2 levels x 8 x 4 float32 per site) up and down to c, stage 1's unused;
    # a float32 Fisher from a and b up, the consolidated one down to c
    assert out == {"mds": (20 * 8 + 8) * 3, "retrieval": 2 * 256 + 2 * 256, "ewc": 40 * 3}
    assert fb.side_bytes([MDSPlugin(), EWCPlugin()], cfg) == {}
