"""Seeded augmentation across wrappers: ``set_epoch`` reaches every dataset that draws one.

Training datasets reseed their augmentation per ``(seed, epoch, index)`` and expose
``set_epoch``. A wrapper (a pooled union of sites, a channel view) must pass the epoch on, or
every pass over it repeats the first pass's augmentation of each item.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import ConcatDataset


def set_epoch(dataset: Any, epoch: int) -> None:
    """Tell ``dataset`` (and through it any wrapped dataset) which pass begins; a dataset
    without augmentation has no ``set_epoch`` and is left alone."""
    method = getattr(dataset, "set_epoch", None)
    if callable(method):
        method(epoch)


class EpochConcatDataset(ConcatDataset):
    """``ConcatDataset`` that passes ``set_epoch`` on to each of its parts."""

    def set_epoch(self, epoch: int) -> None:
        """Start pass ``epoch`` in every part."""
        for part in self.datasets:
            set_epoch(part, epoch)
