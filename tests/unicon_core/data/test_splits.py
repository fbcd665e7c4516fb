"""Group-level splits: no group in two splits, deterministic, fractions respected."""

from __future__ import annotations

from collections import Counter

import pytest

from unicon_core.data.splits import assign_splits, leaked_groups


def _groups(n_groups: int = 40) -> list[str]:
    # groups of 1..5 items, interleaved
    return [f"g{g}" for g in range(n_groups) for _ in range(1 + g % 5)]


def test_no_group_in_two_splits_and_fractions_roughly_kept() -> None:
    groups = _groups()
    splits = assign_splits(groups, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    assert leaked_groups(groups, splits) == []
    counts = Counter(splits)
    assert set(counts) == {"train", "val", "test"}
    assert abs(counts["train"] / len(groups) - 0.6) < 0.1


def test_deterministic_by_seed_and_independent_of_order() -> None:
    groups = _groups()
    first = assign_splits(groups, seed=5)
    assert first == assign_splits(groups, seed=5)
    assert first != assign_splits(groups, seed=6)
    reversed_splits = assign_splits(groups[::-1], seed=5)
    assert dict(zip(groups, first, strict=True)) == dict(
        zip(groups[::-1], reversed_splits, strict=True)
    )


def test_every_split_gets_a_group_when_possible() -> None:
    groups = ["a"] * 10 + ["b", "c"]
    assert set(assign_splits(groups, seed=0)) == {"train", "val", "test"}


def test_leaked_groups_detects_leakage() -> None:
    assert leaked_groups(["a", "a", "b"], ["train", "test", "val"]) == ["a"]


@pytest.mark.parametrize("fractions", [{"train": -1.0}, {"holdout": 1.0}, {"train": 0.0}])
def test_bad_fractions_raise(fractions: dict) -> None:
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(["a"], fractions)


def test_stratified_splits_keep_groups_and_balance_strata() -> None:
    from unicon_core.data.splits import stratified_splits

    # Prepare: 40 items, label 1 rare (8 items), patients of 2 items each
    groups = [f"p{i // 2}" for i in range(40)]
    strata = [1 if i < 8 else 0 for i in range(40)]
    # Execute
    splits = stratified_splits(groups, strata, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=2)
    # Assert: every split holds the rare label, and no patient spans two splits
    assert leaked_groups(groups, splits) == []
    rare = Counter(s for s, y in zip(splits, strata, strict=True) if y == 1)
    assert rare == {"train": 4, "val": 2, "test": 2}
    assert stratified_splits(groups, None, seed=2) == assign_splits(groups, seed=2)
