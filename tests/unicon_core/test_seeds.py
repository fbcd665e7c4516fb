"""Derived seeds: the one formula behind skill initialisation and per-round training seeds."""

from __future__ import annotations

import zlib

from unicon_core.seeds import derived_seed, round_seed


def test_derived_seed_is_the_documented_formula_and_in_range() -> None:
    # Assert: (seed * 1_000_003 + crc32(name)) mod 2**31, as runs before issue #16 computed it
    assert derived_seed(0, "task:a") == zlib.crc32(b"task:a") % 2**31
    assert derived_seed(7, "x") == (7 * 1_000_003 + zlib.crc32(b"x")) % 2**31
    assert all(0 <= derived_seed(s, "n") < 2**31 for s in (0, 1, 2**40, -5))


def test_round_seed_differs_per_site_and_round_and_is_stable() -> None:
    seeds = {round_seed(0, site, rnd) for site in ("a", "b") for rnd in (1, 2, 3)}
    assert len(seeds) == 6
    assert round_seed(3, "a", 2) == derived_seed(3, "a:2") == round_seed(3, "a", 2)
