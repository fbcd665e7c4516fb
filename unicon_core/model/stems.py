"""Modality stems: turn an input into backbone tokens; each stem owns its positional embedding."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.networks.blocks import PatchEmbeddingBlock
from torch import nn

from unicon_core.config import Modality, TaskSpec


@dataclass(frozen=True)
class StemSpec:
    """What defines a stem; tasks whose specs give the same key share the stem."""

    key: str
    modality: str
    spatial_dims: int
    channels: int
    input_size: tuple[int, ...]
    patch_size: int
    feature_names: tuple[str, ...] = field(default_factory=tuple)
    #: rank of a low-rank patch projection (None: the full MONAI patch embedding)
    stem_rank: int | None = None

    @classmethod
    def from_task(cls, spec: TaskSpec) -> StemSpec:
        """The stem a task spec asks for."""
        return cls(
            key=spec.stem_key,
            modality=spec.modality.value,
            spatial_dims=spec.spatial_dims,
            channels=spec.channels,
            input_size=tuple(spec.input_size),
            patch_size=spec.patch_size,
            feature_names=tuple(spec.feature_names),
            stem_rank=spec.stem_rank,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in checkpoints); ``stem_rank`` only when set, so foundation
        files of full stems are unchanged."""
        out: dict[str, Any] = {
            "key": self.key,
            "modality": self.modality,
            "spatial_dims": self.spatial_dims,
            "channels": self.channels,
            "input_size": list(self.input_size),
            "patch_size": self.patch_size,
            "feature_names": list(self.feature_names),
        }
        if self.stem_rank is not None:
            out["stem_rank"] = self.stem_rank
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StemSpec:
        """Inverse of :meth:`to_dict` (older files without ``stem_rank``: a full stem)."""
        rank = data.get("stem_rank")
        return cls(
            key=str(data["key"]),
            modality=str(data["modality"]),
            spatial_dims=int(data["spatial_dims"]),
            channels=int(data["channels"]),
            input_size=tuple(int(s) for s in data["input_size"]),
            patch_size=int(data["patch_size"]),
            feature_names=tuple(str(f) for f in data.get("feature_names", [])),
            stem_rank=None if rank is None else int(rank),
        )

    @property
    def is_tabular(self) -> bool:
        """True for a clinical-features stem."""
        return self.modality == Modality.CLINICAL.value

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid of an image stem (patches per axis)."""
        return tuple(s // self.patch_size for s in self.input_size)


def check_image_input(spec: StemSpec, x: torch.Tensor) -> None:
    """``x`` must be ``(B, channels, *input_size)`` for the stem ``spec`` (clear error)."""
    expected = (spec.channels, *spec.input_size)
    if x.ndim != spec.spatial_dims + 2 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"stem {spec.key!r} expects input of shape (B, {', '.join(map(str, expected))}), "
            f"got {tuple(x.shape)}"
        )


class FactorisedPatchProjection(nn.Module):
    """Patch → ``hidden`` features through rank ``r``: Conv(C→r, kernel=stride=patch), then a
    Linear(r→hidden) on every patch. Output ``(B, hidden, *grid)`` like MONAI's patch conv."""

    def __init__(
        self, channels: int, rank: int, hidden_size: int, patch_size: int, spatial_dims: int
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        # no bias on the first factor: the Linear's bias already adds any constant
        self.down = conv(channels, rank, kernel_size=patch_size, stride=patch_size, bias=False)
        self.up = nn.Linear(rank, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` → ``(B, hidden, *grid)``."""
        return self.up(self.down(x).movedim(1, -1)).movedim(-1, 1)


class LowRankPatchEmbedding(nn.Module):
    """MONAI's ``PatchEmbeddingBlock`` (conv projection, learnable positional embedding) with
    the projection factorised through rank ``r``.

    The attribute names match MONAI's block (``patch_embeddings``, ``position_embeddings``,
    ``dropout``), so masked-patch pretraining and modality expansion treat both alike. Parameters:
    ``r * C * p**d`` + ``r * hidden + hidden`` + ``n_patches * hidden``, against
    ``C * p**d * hidden + hidden + n_patches * hidden`` for the full block.
    """

    def __init__(self, spec: StemSpec, hidden_size: int) -> None:
        super().__init__()
        if spec.stem_rank is None:
            raise ValueError(f"stem {spec.key!r} has no stem_rank; use the full patch embedding")
        self.patch_embeddings = FactorisedPatchProjection(
            spec.channels, spec.stem_rank, hidden_size, spec.patch_size, spec.spatial_dims
        )
        n_patches = math.prod(spec.grid)
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches, hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, mean=0.0, std=0.02, a=-2.0, b=2.0)
        self.dropout = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` → ``(B, N, hidden)``, as ``PatchEmbeddingBlock.forward``."""
        tokens = self.patch_embeddings(x).flatten(2).transpose(-1, -2)
        return self.dropout(tokens + self.position_embeddings)


def low_rank_stem_limit(channels: int, patch_size: int, spatial_dims: int, hidden: int) -> int:
    """The largest ``stem_rank`` whose projection is smaller than the full one, i.e. the
    largest r with ``r * (C * p**d + hidden) < C * p**d * hidden``."""
    patch = channels * patch_size**spatial_dims
    return (patch * hidden - 1) // (patch + hidden)


class ImageStem(nn.Module):
    """2D/3D image → patch tokens with a learnable positional embedding (MONAI patch embedding,
    or its low-rank form when the spec has a ``stem_rank``)."""

    def __init__(self, spec: StemSpec, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.spec = spec
        self.embed: nn.Module
        if spec.stem_rank is not None:
            self.embed = LowRankPatchEmbedding(spec, hidden_size)
            return
        self.embed = PatchEmbeddingBlock(
            in_channels=spec.channels,
            img_size=spec.input_size,
            patch_size=spec.patch_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            spatial_dims=spec.spatial_dims,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` → ``(B, N, D)``; checks the input shape first."""
        check_image_input(self.spec, x)
        return self.embed(x)


class TabularStem(nn.Module):
    """Clinical features → one token per feature (value × weight + feature embedding)."""

    def __init__(self, spec: StemSpec, hidden_size: int) -> None:
        super().__init__()
        self.spec = spec
        n = len(spec.feature_names)
        self.weight = nn.Parameter(torch.randn(n, hidden_size) / math.sqrt(hidden_size))
        self.feature_embedding = nn.Parameter(torch.randn(n, hidden_size) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` → ``(B, F, D)``."""
        n = len(self.spec.feature_names)
        if x.ndim != 2 or x.shape[1] != n:
            raise ValueError(
                f"stem {self.spec.key!r} expects (B, {n}) clinical features, got {tuple(x.shape)}"
            )
        return x.unsqueeze(-1) * self.weight + self.feature_embedding


def build_stem(spec: StemSpec, hidden_size: int, num_heads: int) -> nn.Module:
    """The stem module for a spec."""
    if spec.is_tabular:
        return TabularStem(spec, hidden_size)
    return ImageStem(spec, hidden_size, num_heads)


class ChannelStem(nn.Module):
    """Image backbones: check the input shape and map the task's channels to the backbone's.

    Without a mapping (the backbone takes the task's channel count) it has no parameters. With
    one (e.g. CT+PET into a 3-channel CT network) a 1×1 convolution starts as "copy channel 0
    into every backbone channel", so the pretrained path is intact and the other modality's
    weights start at zero and are learnt by the task.
    """

    def __init__(self, spec: StemSpec, backbone_channels: int | None) -> None:
        super().__init__()
        self.spec = spec
        self.proj: nn.Module | None = None
        if backbone_channels is not None:
            conv = nn.Conv3d if spec.spatial_dims == 3 else nn.Conv2d
            self.proj = conv(spec.channels, backbone_channels, kernel_size=1, bias=False)
            with torch.no_grad():
                self.proj.weight.zero_()
                self.proj.weight[:, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(self.spec, x)
        return x if self.proj is None else self.proj(x)
