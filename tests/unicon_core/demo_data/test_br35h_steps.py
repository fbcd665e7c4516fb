"""The optimiser-steps diagnostic: per-source summary, weighted AUC, a real tiny run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from simulations import br35h_steps as steps
from simulations import federated_lora_bench as fl


def _rows(scores: list[float], labels: list[int], sources: list[str]) -> dict[str, list]:
    return {"score": scores, "label": labels, "source": sources}


def test_by_source_groups_rows_largest_first() -> None:
    rows = _rows([1.0, 3.0, -2.0, 0.5, 0.0], [1, 1, 0, 0, 1], ["s1", "s1", "s2", "s2", "s3"])
    out = steps.by_source(rows)
    assert [e["source"] for e in out] == ["s1", "s2", "s3"]
    assert out[0] == {"source": "s1", "n": 2, "tumour": 1.0, "mean_score": 2.0}
    assert out[1]["mean_score"] == pytest.approx(-0.75) and out[1]["tumour"] == 0.0


def test_by_source_refuses_rows_of_unequal_length() -> None:
    with pytest.raises(ValueError):
        steps.by_source(_rows([1.0], [1, 0], ["s1", "s2"]))


def test_weighted_auc_weighs_sites_by_their_rows() -> None:
    perfect = _rows([0.0, 1.0, 2.0, 3.0], [0, 0, 1, 1], list("abcd"))
    reversed_ = _rows([1.0, 0.0], [0, 1], list("ab"))
    assert steps.auc(perfect) == 1.0 and steps.auc(reversed_) == 0.0
    assert steps.weighted_auc({"x": perfect, "y": reversed_}) == pytest.approx(4 / 6)
    assert math.isnan(steps.auc(_rows([0.0, 1.0], [1, 1], list("ab"))))


@pytest.mark.slow
def test_a_pooled_run_scores_every_test_row(demo_dir: Path, tmp_path: Path) -> None:
    # Execute: one pooled round of one step per site on the tiny backbone
    sites = [demo_dir / s for s in steps.SITES]
    base = ("experiment=continual", "backbone=tiny")
    state = steps.train("central", sites, fl.Budget(rounds=1, local_steps=1, batch_size=4), 0,
                        tmp_path / "run", steps_per_site=1, base=base)
    scores = steps.score_rows(state, sites, base)
    # Assert: every test row of every site is scored, with its label and source
    from unicon_core.data.site import open_site

    for d in sites:
        site = open_site(d)
        rows = scores[d.name]
        test = [site.rows[i] for i in site.split_rows("test")]
        assert rows["source"] == [r["patient_id"] for r in test]
        assert rows["label"] == [int(r["label"]) for r in test]
        assert np.isfinite(rows["score"]).all()
    with pytest.raises(ValueError, match="fed or central"):
        steps.train("pooled", sites, fl.Budget(), 0, tmp_path / "x", base=base)
