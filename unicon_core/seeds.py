"""Derived seeds: one formula for every seed computed from the run's seed and a name.

A skill's initial weights (``task:<name>``), a stem's, and a site's local training in one round
(``<site>:<round>``) each get their own stable seed, so every site builds a task's skill
identically and a resumed run trains as the uninterrupted one would have.
"""

from __future__ import annotations

import zlib


def derived_seed(seed: int, name: str) -> int:
    """A stable seed in ``[0, 2**31)`` for ``name`` under the run's ``seed``."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def round_seed(seed: int, site: str, rnd: int) -> int:
    """Seed of one site's local training in round ``rnd`` (the same after a resume)."""
    return derived_seed(seed, f"{site}:{rnd}")
