"""Site-homogeneous batches of a pooled dataset: every batch from one site, sites in turn.

A diagnostic for federated training. A federated site's every step sees its own examples only,
whereas a centralised bound normally shuffles every site's examples into each batch. Training
the bound on batches drawn from one site at a time (``block`` batches per site before the
next) separates two causes of a federation/bound gap: how batches are made up, and
averaging models that were trained apart. ``block=1`` alternates sites batch by batch;
``block=local_steps`` runs a federated round's local steps of each site one after another,
without averaging.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler


class SiteBlockBatchSampler(Sampler[list[int]]):
    """Batches of indices into a concatenation of parts (one per site), each batch from one
    part only.

    Every cycle visits every part once, in a seeded random order, and takes ``block``
    consecutive batches from each. Each part is read in passes, a seeded permutation each; a
    batch that reaches the end of a pass goes on into the next pass, so every batch holds
    ``batch_size`` indices (a part smaller than a batch repeats indices within one). Parts are
    weighted equally, as a federated round's sites take the same local steps, not by size.
    One pass over the sampler is the whole cycles that cover as many batches as the parts'
    own ceil(size / batch_size) add up to; a second pass goes on from where the first ended.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, block: int, seed: int) -> None:
        if not sizes:
            raise ValueError("site-homogeneous batches need at least one site")
        empty = [i for i, n in enumerate(sizes) if int(n) < 1]
        if empty:
            raise ValueError(f"site-homogeneous batches: part(s) {empty} of sizes "
                             f"{list(sizes)} hold no examples to draw a batch from")
        if batch_size < 1 or block < 1:
            raise ValueError(f"batch_size ({batch_size}) and block ({block}) must be >= 1")
        self.sizes = [int(n) for n in sizes]
        self.batch_size = batch_size
        self.block = block
        self._offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self._generator = torch.Generator().manual_seed(seed)
        self._passes: list[list[int]] = [[] for _ in self.sizes]

    def __len__(self) -> int:
        per_pass = sum(math.ceil(n / self.batch_size) for n in self.sizes)
        cycle = len(self.sizes) * self.block
        return cycle * math.ceil(per_pass / cycle)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(len(self) // (len(self.sizes) * self.block)):
            order = torch.randperm(len(self.sizes), generator=self._generator).tolist()
            for part in order:
                for _ in range(self.block):
                    yield self._batch(part)

    def _batch(self, part: int) -> list[int]:
        """The next ``batch_size`` indices of ``part`` (global indices)."""
        out: list[int] = []
        while len(out) < self.batch_size:
            if not self._passes[part]:
                self._passes[part] = torch.randperm(
                    self.sizes[part], generator=self._generator).tolist()
            take = self.batch_size - len(out)
            out += self._passes[part][:take]
            del self._passes[part][:take]
        return [self._offsets[part] + i for i in out]


def site_blocks(dataset: Dataset, batch_size: int, block: int, seed: int
                ) -> SiteBlockBatchSampler:
    """:class:`SiteBlockBatchSampler` over a pooled ``dataset`` (a ``ConcatDataset`` of the
    sites' datasets, as :func:`~unicon_core.continual.sites.pooled_site` makes)."""
    if not isinstance(dataset, ConcatDataset):
        raise TypeError("site-homogeneous batches need a pooled dataset (a ConcatDataset of "
                        f"the sites' datasets), got {type(dataset).__name__}")
    return SiteBlockBatchSampler([len(d) for d in dataset.datasets],  # type: ignore[arg-type]
                                 batch_size, block, seed)
