"""Metric accumulators on hand-made predictions."""

from __future__ import annotations

import pytest
import torch

from unicon_core.keys import BatchKey
from unicon_core.metrics import SegmentationMetric


def _logits(mask: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose argmax is ``mask``."""
    return torch.stack([1.0 - mask.float(), mask.float()], dim=1)


@pytest.mark.parametrize("hd95", [True, False])
def test_segmentation_dice_is_the_same_with_or_without_hd95(hd95: bool) -> None:
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[0, 0, 2:6, 2:6] = 1  # 16 voxels
    pred = torch.zeros(1, 8, 8, dtype=torch.long)
    pred[0, 2:6, 2:4] = 1  # 8 voxels, all inside: Dice = 2*8 / (16 + 8)
    metric = SegmentationMetric(2, hd95=hd95)
    metric.update(_logits(pred), {BatchKey.MASK.value: target})
    out = metric.aggregate()
    assert out["dice"] == pytest.approx(2 * 8 / 24)
    assert ("hd95" in out) is hd95
    if hd95:
        assert out["hd95"] == pytest.approx(2.0)  # target's far column is 2 voxels from pred
