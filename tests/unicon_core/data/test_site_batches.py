"""Site-homogeneous batches: each batch from one part, parts in turn, seeded, every batch full."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset

from unicon_core.data.site_batches import SiteBlockBatchSampler, site_blocks
from unicon_core.training import make_loader

SIZES = [10, 17, 6]


def _part(index: int, sizes: list[int] = SIZES) -> int:
    """The part a global index falls in."""
    edge = 0
    for part, n in enumerate(sizes):
        edge += n
        if index < edge:
            return part
    raise AssertionError(f"index {index} beyond {sum(sizes)}")


@pytest.mark.parametrize("block", [1, 3])
def test_each_batch_is_one_part_and_each_cycle_visits_every_part_in_blocks(block: int) -> None:
    sampler = SiteBlockBatchSampler(SIZES, batch_size=4, block=block, seed=0)
    batches = list(sampler)
    parts = [{_part(i) for i in b} for b in batches]
    assert all(len(p) == 1 for p in parts) and all(len(b) == 4 for b in batches)
    runs = [p.pop() for p in parts]
    cycle = len(SIZES) * block
    assert len(batches) == len(sampler) and len(batches) % cycle == 0
    for start in range(0, len(runs), cycle):
        blocks = [runs[start + k * block:start + (k + 1) * block] for k in range(len(SIZES))]
        assert all(len(set(b)) == 1 for b in blocks)
        assert sorted(b[0] for b in blocks) == list(range(len(SIZES)))


def test_a_part_is_read_whole_before_any_item_repeats() -> None:
    sampler = SiteBlockBatchSampler(SIZES, batch_size=4, block=1, seed=3)
    drawn: dict[int, list[int]] = {p: [] for p in range(len(SIZES))}
    for batch in [*sampler, *sampler]:  # two passes: each part more than once round
        drawn[_part(batch[0])] += batch
    offsets = [0, 10, 27]
    for part, items in drawn.items():
        first = items[:SIZES[part]]
        assert len(items) > SIZES[part]
        assert sorted(first) == list(range(offsets[part], offsets[part] + SIZES[part])), part


def test_the_order_is_seeded_and_a_second_pass_goes_on() -> None:
    first = list(SiteBlockBatchSampler(SIZES, 4, 2, seed=5))
    assert first == list(SiteBlockBatchSampler(SIZES, 4, 2, seed=5))
    assert first != list(SiteBlockBatchSampler(SIZES, 4, 2, seed=6))
    sampler = SiteBlockBatchSampler(SIZES, 4, 2, seed=5)
    assert list(sampler) == first and list(sampler) != first


def test_length_covers_one_pass_of_every_part_in_whole_cycles() -> None:
    # ceil(10/4) + ceil(17/4) + ceil(6/4) = 3 + 5 + 2 = 10 batches; cycles of 3 -> 12
    assert len(SiteBlockBatchSampler(SIZES, 4, 1, 0)) == 12
    # cycles of 3 x 4 = 12 -> 12; of 3 x 5 = 15 -> 15
    assert len(SiteBlockBatchSampler(SIZES, 4, 4, 0)) == 12
    assert len(SiteBlockBatchSampler(SIZES, 4, 5, 0)) == 15


def test_bad_input_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="at least one site"):
        SiteBlockBatchSampler([], 4, 1, 0)
    with pytest.raises(ValueError, match=r"part\(s\) \[1\] of sizes \[3, 0\]"):
        SiteBlockBatchSampler([3, 0], 4, 1, 0)
    with pytest.raises(ValueError, match="block"):
        SiteBlockBatchSampler([3], 4, 0, 0)
    with pytest.raises(TypeError, match=r"pooled dataset.*TensorDataset"):
        site_blocks(TensorDataset(torch.zeros(3)), 4, 1, 0)


def test_the_loader_draws_the_samplers_batches_from_a_pooled_dataset() -> None:
    parts = [TensorDataset(torch.full((n,), float(p))) for p, n in enumerate(SIZES)]
    pooled = ConcatDataset(parts)
    loader = make_loader(pooled, 4, shuffle=True, seed=0,
                         batch_sampler=site_blocks(pooled, 4, 2, seed=1))
    batches = [b[0] for b in loader]
    assert len(batches) == len(loader) == 12
    assert all(len(set(b.tolist())) == 1 for b in batches)  # every value is its part's number
    with pytest.raises(ValueError, match="batches of 4, not 8"):
        make_loader(pooled, 8, shuffle=True, batch_sampler=site_blocks(pooled, 4, 1, 0))
