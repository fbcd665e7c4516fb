"""Seeded augmentation reaches through wrappers: a pooled union of sites and a channel view
pass ``set_epoch`` on, so each pass over them augments every item afresh."""

from __future__ import annotations

from pathlib import Path

import torch

from unicon_core.continual.expansion import ChannelView
from unicon_core.continual.sites import pooled_site
from unicon_core.data import open_site
from unicon_core.data.epochs import EpochConcatDataset, set_epoch

from .sites import cls_site


def _inputs(data: object) -> list[torch.Tensor]:
    return [data[i]["input"] for i in range(len(data))]  # type: ignore[index, arg-type]


def test_a_pooled_site_augments_each_pass_afresh(tmp_path: Path) -> None:
    # Prepare: two image sites of one task, pooled as the centralised bound pools them
    sites = [open_site(cls_site(tmp_path / name, n=8)) for name in ("a", "b")]
    pooled = pooled_site(sites).dataset("train", train=True)

    # Execute: the items of pass 0, then of passes 1 to 3
    first = _inputs(pooled)
    later = []
    for epoch in (1, 2, 3):
        set_epoch(pooled, epoch)
        later.append(_inputs(pooled))

    # Assert: every part was told the epoch; some item changed; pass 0 comes back exactly
    assert [part.epoch for part in pooled.datasets] == [3, 3]
    assert any(not torch.equal(a, b) for items in later for a, b in zip(first, items, strict=True))
    set_epoch(pooled, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, _inputs(pooled), strict=True))


def test_wrappers_pass_the_epoch_on_and_plain_datasets_are_left_alone() -> None:
    class Recording(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {"input": torch.zeros(2, 3)}

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    inner, plain = Recording(), torch.utils.data.TensorDataset(torch.zeros(2))
    set_epoch(EpochConcatDataset([ChannelView(inner, [0]), plain]), 4)
    set_epoch(plain, 5)  # no set_epoch: nothing happens, nothing fails
    assert inner.epochs == [4]
