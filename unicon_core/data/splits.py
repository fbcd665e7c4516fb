"""Group-level train/val/test splits: every member of a group (a patient, a near-duplicate
group, a slab of neighbouring slices) lands in the same split, so nothing leaks between them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from unicon_core.data.manifest import SPLITS

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"fractions: unknown split names {unknown}, use {list(SPLITS)}")
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"fractions must be >= 0 with a positive sum, got {dict(fractions)}")
    total = float(sum(fractions.values()))
    return {name: float(fractions[name]) / total for name in SPLITS if name in fractions}


def assign_splits(
    groups: Sequence[Hashable],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> list[str]:
    """Assign each item a split name so that all items of one group share a split.

    Groups are shuffled with ``seed`` (the order of ``groups`` does not matter, only which items
    share a group) and filled into splits in turn until each holds about its fraction of items.
    Every split with a positive fraction gets at least one group when there are enough groups.

    Parameters
    ----------
    groups
        One group key per item (e.g. ``patient_id``).
    fractions
        Split name -> share of items (normalised); defaults to 70/15/15 train/val/test.
    seed
        Seed of the shuffle; equal seeds give equal assignments.
    """
    fr = _check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    if not groups:
        return []
    sizes = Counter(groups)
    keys = sorted(sizes, key=lambda g: (type(g).__name__, str(g)))
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    names = [n for n, f in fr.items() if f > 0]
    bounds = np.cumsum([fr[n] for n in names]) * len(groups)
    assigned: dict[Hashable, str] = {}
    filled = 0
    for key in order:
        # the split whose share contains this group's midpoint
        mid = filled + sizes[key] / 2
        idx = min(int(np.searchsorted(bounds, mid, side="right")), len(names) - 1)
        assigned[key] = names[idx]
        filled += sizes[key]
    _fill_empty_splits(assigned, sizes, names)
    return [assigned[g] for g in groups]


def _fill_empty_splits(assigned: dict[Hashable, str], sizes: Counter, names: list[str]) -> None:
    """Move the smallest group of the fullest split into each empty split, while possible."""
    for name in names:
        counts = Counter()
        for key, split in assigned.items():
            counts[split] += sizes[key]
        if counts[name]:
            continue
        donor = max(names, key=lambda n: counts[n])
        donor_groups = [k for k, s in assigned.items() if s == donor]
        if len(donor_groups) < 2:
            continue
        smallest = min(donor_groups, key=lambda k: (sizes[k], str(k)))
        assigned[smallest] = name


def leaked_groups(groups: Sequence[Hashable], splits: Sequence[str]) -> list[Hashable]:
    """Groups whose items sit in more than one split (should be empty)."""
    seen: dict[Hashable, set[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        seen.setdefault(g, set()).add(s)
    return sorted((g for g, s in seen.items() if len(s) > 1), key=str)


def manifest_splits(
    split_cells: Sequence[str] | None,
    patient_ids: Sequence[str] | None,
    n_rows: int,
    seed: int = 0,
) -> list[str]:
    """The split of every manifest row: the ``split`` column when the manifest has one, else
    assigned here by patient (or by row when there is no ``patient_id``) with default fractions."""
    if split_cells is not None:
        return [str(s) for s in split_cells]
    groups: Sequence[Hashable] = (
        list(patient_ids) if patient_ids is not None else list(range(n_rows))
    )
    return assign_splits(groups, DEFAULT_FRACTIONS, seed=seed)


def stratified_splits(
    groups: Sequence[Hashable],
    strata: Sequence[Hashable] | None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> list[str]:
    """:func:`assign_splits` within each stratum (a label, an event flag), so every split holds
    about the same share of each; a group takes the stratum of its first item, so it stays
    whole (in one split) even when its items differ in stratum."""
    if strata is None:
        return assign_splits(groups, fractions, seed=seed)
    if len(strata) != len(groups):
        raise ValueError(f"strata: {len(strata)} values for {len(groups)} groups")
    stratum_of: dict[Hashable, Hashable] = {}
    for group, stratum in zip(groups, strata, strict=True):
        stratum_of.setdefault(group, stratum)
    out: list[str] = [""] * len(groups)
    for stratum in sorted(set(stratum_of.values()), key=str):
        index = [i for i, g in enumerate(groups) if stratum_of[g] == stratum]
        for i, split in zip(index, assign_splits([groups[i] for i in index], fractions, seed),
                            strict=True):
            out[i] = split
    return out
