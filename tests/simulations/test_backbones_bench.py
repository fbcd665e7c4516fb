"""The backbone benchmark's pure helpers: its section lands in BENCHMARKS.md, AUC intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simulations.backbones_bench import bootstrap_auc, insert_section


def test_section_is_appended_then_replaced(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n# Other benchmarks\n\n## routing\n\nr\n")
    insert_section(md, "## backbones\n\nfirst\n")
    assert md.read_text().endswith("## backbones\n\nfirst\n")
    md.write_text(md.read_text() + "\n## cold start\n\nc\n")
    insert_section(md, "## backbones\n\nsecond\n")
    text = md.read_text()
    assert "first" not in text and "second" in text
    assert text.index("## routing") < text.index("## backbones") < text.index("## cold start")


def test_bootstrap_auc_brackets_the_point_estimate() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    score = y + rng.normal(0, 1.0, size=200)
    auc, lo, hi = bootstrap_auc(y, score, reps=200)
    assert lo < auc < hi and 0.6 < auc < 0.9
    assert bootstrap_auc(y, y.astype(float), reps=50)[0] == 1.0


def test_held_out_sources_are_whole_and_reach_their_share() -> None:
    from simulations.backbones_bench import _hold_out_sources

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    labels = (groups % 2).astype(int)
    pool = groups >= 4  # sources 0-3 already elsewhere
    held = _hold_out_sources(groups, labels, pool, 0.25, rng)
    assert not held[~pool].any()
    assert not set(groups[held]) & set(groups[pool & ~held])
    for label in (0, 1):
        share = held[pool & (labels == label)].mean()
        assert 0.25 <= share < 0.25 + 5 / (pool & (labels == label)).sum() + 1e-9


def test_train_select_keeps_the_best_validation_epoch() -> None:
    import torch
    from sklearn.metrics import roc_auc_score

    from simulations.backbones_bench import TINY, Tensors, _scores, _task, train_select
    from unicon_core.model.unicon import UniconModel

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 2
    x = torch.rand(48, 1, 64, 64, generator=gen) * 0.5 + y[:, None, None, None] * 0.3
    train = Tensors(x[:32], label=y[:32])
    val = Tensors(x[32:], label=y[32:])
    model = UniconModel(TINY, seed=0)
    model.add_task(_task("tumour", "classification", "mri", 2, [64, 64]))
    chosen = train_select(model, "tumour", train, val, epochs=3, lr=5e-3, seed=0, batch_size=8)
    aucs = chosen["val_aucs"]
    assert len(aucs) == 3 and chosen["val_auc"] == max(aucs)
    assert chosen["epoch"] == aucs.index(max(aucs)) + 1
    # the model holds the kept epoch's skill, whichever epoch that was
    now = roc_auc_score(y[32:].numpy(), _scores(model, "tumour", val))
    assert abs(now - chosen["val_auc"]) < 1e-6


def test_a_partial_tumour_run_keeps_the_other_rows_and_labels_the_protocols() -> None:
    from simulations.backbones_bench import merge_tumour_rows

    fm, rnd = "I3ResNet-152 2D, CT FM weights", "I3ResNet-152 2D, random"
    old = [{"model": "logistic regression on 32×32 pixels", "auc": 0.6},
           {"model": rnd, "auc": 0.75}, {"model": fm, "auc": 0.89}]
    new = [{"model": "logistic regression on 32×32 pixels", "auc": 0.61},
           {"model": fm, "auc": 0.91, "epoch": 2, "val_auc": 0.9}]
    # Execute
    rows = merge_tumour_rows(old, new, [fm], 80)
    full = merge_tumour_rows(old, new, None, 80)
    # Assert: the new pixel baseline; the random row kept; the old FM row beside the new one
    assert [r["auc"] for r in rows] == [0.61, 0.75, 0.89, 0.91]
    assert rows[1]["model"] == rnd and rows[1]["steps"] == 80
    assert rows[2]["model"] == f"{fm} (80 steps, earlier protocol)" and rows[3]["model"] == fm
    assert full == new


def test_a_run_stopped_in_a_later_part_keeps_the_finished_ones(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare: the sizes part returns known rows; the survey fails
    from simulations import backbones_bench as bench

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("stopped")

    monkeypatch.setattr(bench, "sizes_and_speed", lambda steps: [{"row": "known"}])
    monkeypatch.setattr(bench, "survey", fail)
    # Execute
    with pytest.raises(RuntimeError, match="stopped"):
        bench.main(["--parts", "sizes,survey", "--runs-dir", str(tmp_path), "--out",
                    str(tmp_path / "section.md")])
    # Assert: the sizes part is on disk, ready for --merge
    (saved,) = tmp_path.glob("backbones-*/results.json")
    res = json.loads(saved.read_text())
    assert res["sizes"] == [{"row": "known"}] and "survey" not in res


def test_rows_of_this_protocol_stay_for_the_models_not_rerun() -> None:
    from simulations.backbones_bench import merge_tumour_rows

    fm, rnd = "I3ResNet-152 2D, CT FM weights", "I3ResNet-152 2D, random"
    old = [{"model": "logistic regression on 32×32 pixels", "auc": 0.6},
           {"model": rnd, "auc": 0.84, "epoch": 1}, {"model": fm, "auc": 0.9, "epoch": 3}]
    new = [{"model": "logistic regression on 32×32 pixels", "auc": 0.6},
           {"model": fm, "auc": 0.95, "epoch": 2}]
    rows = merge_tumour_rows(old, new, [fm], None)
    assert [(r["model"], r["auc"]) for r in rows] == [
        ("logistic regression on 32×32 pixels", 0.6), (rnd, 0.84), (fm, 0.95)]


def test_runs_of_different_tumour_rows_join_only_on_the_same_split() -> None:
    # Prepare: two processes, each with some rows (per seed) of the same split and budget
    from simulations.backbones_bench import merge_results

    fm, rnd = "I3ResNet-152 2D, CT FM weights", "I3ResNet-152 2D, random"
    split = {"n_test": 987}
    a = {"sizes": [1], "tumour_split": split, "tumour_epochs": 3, "part_minutes": {"sizes": 2},
         "tumour": [{"model": "logistic regression on 32×32 pixels", "seed": 0, "auc": 0.6},
                    {"model": fm, "seed": 0, "auc": 0.9, "epoch": 3}]}
    b = {"survey": {"rows": []}, "tumour_split": split, "tumour_epochs": 3,
         "part_minutes": {"tumour": 9},
         "tumour": [{"model": "logistic regression on 32×32 pixels", "seed": 0, "auc": 0.6},
                    {"model": fm, "seed": 1, "auc": 0.95, "epoch": 2},
                    {"model": rnd, "seed": 0, "auc": 0.8, "epoch": 1}]}
    # Execute
    res = merge_results([a, b])
    # Assert: every part and every (model, seed) row once, in the table's order
    assert res["sizes"] == [1] and res["survey"] == {"rows": []}
    assert res["part_minutes"] == {"sizes": 2, "tumour": 9}
    assert [(r["model"], r["seed"]) for r in res["tumour"]] == [
        ("logistic regression on 32×32 pixels", 0), (rnd, 0), (fm, 0), (fm, 1)]
    # each process is listed with what it ran, so the section can say how it was made
    assert [(r["parts"], r["tumour_models"], r["minutes"]) for r in res["runs"]] == [
        (["sizes"], [], {"sizes": 2}), (["tumour"], [rnd, fm], {"tumour": 9})]
    assert merge_results([res])["runs"] == res["runs"]  # a joined run joins again unchanged
    with pytest.raises(ValueError, match="tumour_split differs"):
        merge_results([a, {**b, "tumour_split": {"n_test": 1029}}])
    with pytest.raises(ValueError, match="tumour_epochs differs"):
        merge_results([a, {**b, "tumour_epochs": None}])
