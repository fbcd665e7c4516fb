"""Self-supervised pretraining of the backbone and image stems by masked-patch reconstruction.

SimMIM-style: a random subset of patch tokens is replaced by a learned mask token (before the
stem's positional embedding is added), the backbone encodes the sequence, and a linear decoder
reconstructs the masked patches' normalised pixels. Only the backbone and the stems are kept;
they become the frozen foundation, written by :func:`unicon_core.model.foundation.save_foundation`.

Callers pass only training images: :func:`pretraining_images` reads the ``train`` split of site
folders and never opens another split, so pretraining cannot see any site's test data.

:func:`federated_pretrain` builds the foundation without pooling images: each site runs the same
masked-patch training on its own train split from the shared weights, and the example-weighted
average of the sites' weights starts the next round (FedAvg of the full foundation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from unicon_core.config import check_device
from unicon_core.data.epochs import EpochConcatDataset, set_epoch
from unicon_core.device import autocast, resolve_device
from unicon_core.keys import BatchKey
from unicon_core.model import UniconModel
from unicon_core.model.stems import ImageStem, StemSpec


@dataclass
class PretrainConfig:
    """Masked-patch pretraining settings."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    mask_ratio: float = field(default=0.6, metadata={"help": "Fraction of patches masked."})
    seed: int = 0
    progress: bool = True
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:<i>."})

    def __post_init__(self) -> None:
        check_device("pretrain", self.device)
        if self.steps < 1:
            raise ValueError(f"pretrain.steps: must be >= 1, got {self.steps}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"pretrain.mask_ratio: must be in (0, 1), got {self.mask_ratio}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ValueError("pretrain.lr must be > 0 and pretrain.batch_size >= 1")


class MaskedPatchModel(nn.Module):
    """Stem + backbone + linear pixel decoder for one image stem."""

    def __init__(self, model: UniconModel, stem_key: str) -> None:
        super().__init__()
        stem = model.stems[stem_key]
        if not isinstance(stem, ImageStem):
            raise ValueError(f"stem {stem_key!r} is not an image stem; only images are pretrained")
        self.stem = stem
        self.backbone = model.core_backbone
        spec = stem.spec
        hidden = model.cfg.hidden_size
        self.spec = spec
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.decoder = nn.Linear(hidden, spec.channels * spec.patch_size**spec.spatial_dims)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` → ``(B, N, C * p^d)`` in the token order of the stem's conv."""
        p, dims = self.spec.patch_size, self.spec.spatial_dims
        for axis in range(2, 2 + dims):
            x = x.unfold(axis, p, p)
        # now (B, C, g1, .., gd, p, .., p)
        b, c = x.shape[:2]
        grid = x.shape[2 : 2 + dims]
        n = int(torch.tensor(grid).prod())
        x = x.reshape(b, c, n, -1).permute(0, 2, 1, 3)
        return x.reshape(b, n, -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruction loss on the masked patches; ``mask`` is ``(B, N)`` bool."""
        embed = self.stem.embed
        tokens = embed.patch_embeddings(x).flatten(2).transpose(1, 2)
        tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = embed.dropout(tokens + embed.position_embeddings)
        pred = self.decoder(self.backbone(tokens))
        target = self.patches(x)  # raw pixels, as in SimMIM (inputs are already normalised)
        per_patch = (pred - target).pow(2).mean(-1)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)


def pretrain(
    model: UniconModel,
    datasets: dict[str, Dataset],
    cfg: PretrainConfig,
    heads: nn.ModuleDict | None = None,
) -> list[float]:
    """Pretrain the backbone and the given image stems (``stem key → dataset of images``).

    The stems must already be registered as foundation stems (owner ``None``). Batches cycle over
    the stems in turn. Returns the loss per step. The backbone is frozen again afterwards.
    ``heads`` (stem key → :class:`MaskedPatchModel` of this model) keeps the mask tokens and
    pixel decoders across calls, as federated rounds need.
    """
    from tqdm.auto import tqdm

    if model.specs:
        raise ValueError("pretrain a foundation before any task is added")
    if not model.reads_tokens:
        raise ValueError(
            f"masked-patch pretraining is for the transformer backbone; backbone "
            f"{model.cfg.name!r} brings its own pretrained weights"
        )
    device = resolve_device(cfg.device)
    if heads is None:
        heads = reconstruction_heads(model, list(datasets), cfg.seed)
    else:
        heads = nn.ModuleDict({key: heads[key] for key in datasets})
    for key in datasets:
        if model.stem_owner.get(key, "") is not None:
            raise ValueError(f"stem {key!r} is not a foundation stem of this model")
    # the reconstruction modules hold the backbone and their stems: parameters() lists each once
    params = list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    heads.to(device)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        iterators = {
            key: _forever(ds, cfg.batch_size, cfg.seed + i)
            for i, (key, ds) in enumerate(datasets.items())
        }
        keys = list(datasets)
        heads.train()
        for step in tqdm(range(cfg.steps), desc="pretrain", disable=not cfg.progress):
            key = keys[step % len(keys)]
            x = next(iterators[key])
            n = heads[key].spec.grid
            n_tokens = int(torch.tensor(n).prod())
            mask = torch.rand(x.shape[0], n_tokens).argsort(1) < int(cfg.mask_ratio * n_tokens)
            with autocast(device):
                loss = heads[key](x.to(device), mask.to(device)).float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    model.freeze_all()
    model.eval()
    return losses


def reconstruction_heads(model: UniconModel, keys: Sequence[str], seed: int) -> nn.ModuleDict:
    """A :class:`MaskedPatchModel` per stem key, its decoder initialised from ``seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.ModuleDict({key: MaskedPatchModel(model, key) for key in keys})


def federated_pretrain(
    model: UniconModel,
    sites: dict[str, dict[str, Dataset]],
    cfg: PretrainConfig,
    rounds: int,
) -> list[float]:
    """FedAvg of masked-patch pretraining over sites (``site → stem key → its train images``).

    Each round every site starts from the shared foundation (backbone, stems, mask tokens, pixel
    decoders), trains ``cfg.steps`` steps on its own images only, and the sites' weights are
    averaged in float64, weighted by their image counts. Returns each site's mean loss per round
    (round-major, sites in name order). Only weights are combined; no image leaves its site's
    dataset, as in a federated run (this runs the sites in one process).
    """
    if rounds < 1 or not sites:
        raise ValueError(f"federated pretraining needs >= 1 round and >= 1 site, got {rounds}")
    keys = sorted({key for datasets in sites.values() for key in datasets})
    heads = reconstruction_heads(model, keys, cfg.seed)
    shared = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    losses: list[float] = []
    for rnd in range(rounds):
        total = 0
        acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in shared.items()}
        for index, (site, datasets) in enumerate(sorted(sites.items())):
            heads.load_state_dict(shared)
            local = replace(cfg, seed=cfg.seed * 10_007 + rnd * 101 + index, progress=False)
            steps = pretrain(model, datasets, local, heads=heads)
            losses.append(sum(steps) / len(steps))
            count = sum(len(ds) for ds in datasets.values())  # type: ignore[arg-type]
            if count < 1:
                raise ValueError(f"site {site!r} has no training images to pretrain on")
            for k, v in heads.state_dict().items():
                acc[k] += v.detach().cpu().double() * count
            total += count
        shared = {k: (acc[k] / total).to(v.dtype) for k, v in shared.items()}
    heads.load_state_dict(shared)
    model.freeze_all()
    model.eval()
    return losses


def _forever(dataset: Dataset, batch_size: int, seed: int) -> Iterable[torch.Tensor]:
    """Endless shuffled batches of the input images of a dataset."""
    from unicon_core.training import make_loader

    epoch = 0
    while True:
        set_epoch(dataset, epoch)  # each pass augments afresh
        for batch in make_loader(dataset, batch_size, shuffle=True, seed=seed + epoch):
            yield batch[BatchKey.INPUT.value] if isinstance(batch, dict) else batch
        epoch += 1


def pretraining_images(site_dirs: Sequence[Path]) -> dict[StemSpec, Dataset]:
    """Training-split images of image sites pooled, grouped by the stem their task needs."""
    return pooled(pretraining_images_by_site(site_dirs))


def pooled(by_site: dict[str, dict[StemSpec, Dataset]]) -> dict[StemSpec, Dataset]:
    """The sites' datasets concatenated per stem (the pooled, non-federated baseline)."""
    grouped: dict[StemSpec, list[Dataset]] = {}
    for datasets in by_site.values():
        for stem, ds in datasets.items():
            grouped.setdefault(stem, []).append(ds)
    return {stem: EpochConcatDataset(parts) for stem, parts in grouped.items()}


def pretraining_images_by_site(site_dirs: Sequence[Path]) -> dict[str, dict[StemSpec, Dataset]]:
    """Each image site's training-split images under the stem its task needs (folder →).

    Only ``split == "train"`` is opened; validation and test rows are never read. Clinical
    sites are skipped (features are not pretrained by reconstruction).
    """
    from unicon_core.data import open_site

    out: dict[str, dict[StemSpec, Dataset]] = {}
    for site_dir in site_dirs:
        site = open_site(site_dir)
        spec = site.task_spec
        if spec.spatial_dims == 0:
            continue
        # the modality's shared stem, even for a task that trains its own
        stem = StemSpec.from_task(replace(spec, own_stem=False))
        key = str(Path(site_dir).resolve())
        if key in out:
            raise ValueError(f"site folder {key} is given twice")
        out[key] = {stem: site.dataset("train", train=True)}
    return out
