"""Fixture factories shared by the unicon_core tests (tiny sites written under tmp_path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unicon_core.data.sites import pandas_cohort


@pytest.fixture
def make_cohort(tmp_path: Path) -> Callable[..., Path]:
    """Factory of pandas-exported clinical cohorts (see ``sites.pandas_cohort``) in tmp_path."""
    made = iter(range(1_000))

    def make(**kwargs: object) -> Path:
        return pandas_cohort(tmp_path / f"cohort{next(made)}", **kwargs)  # type: ignore[arg-type]

    return make
