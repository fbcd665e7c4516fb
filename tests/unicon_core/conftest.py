"""Fixture factories shared by the unicon_core tests (tiny sites written under tmp_path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.unicon_core.data.sites import pandas_cohort
from unicon_core.model import UniconModel


@pytest.fixture
def deterministic_cudnn() -> Iterator[None]:
    """cuDNN picks the same algorithm for the same call (bit-identity checks on a GPU); no
    effect on the CPU."""
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@pytest.fixture
def make_cohort(tmp_path: Path) -> Callable[..., Path]:
    """Factory of pandas-exported clinical cohorts (see ``sites.pandas_cohort``) in tmp_path."""
    made = iter(range(1_000))

    def make(**kwargs: object) -> Path:
        return pandas_cohort(tmp_path / f"cohort{next(made)}", **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def move_ct_skill() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Factory: move a CT task's skill off its initialisation; return CT and (loud) PET volumes.

    Expansion tests need a source skill that is not at its initial values (else "starts as the
    CT skill" would hold trivially) and a PET channel that would change the output if it leaked.
    """

    def move(model: UniconModel, task: str = "ct", size: int = 16) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
        gen = torch.Generator().manual_seed(1)
        model.load_skill_state_dict(task, {k: v + 0.05 * torch.randn(v.shape, generator=gen)
                                           for k, v in model.skill_state_dict(task).items()})
        ct = torch.randn(2, 1, size, size, size, generator=gen)
        pet = torch.randn(2, 1, size, size, size, generator=gen) * 10
        return ct, pet

    return move
