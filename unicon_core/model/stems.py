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
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in checkpoints)."""
        return {
            "key": self.key,
            "modality": self.modality,
            "spatial_dims": self.spatial_dims,
            "channels": self.channels,
            "input_size": list(self.input_size),
            "patch_size": self.patch_size,
            "feature_names": list(self.feature_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StemSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            key=str(data["key"]),
            modality=str(data["modality"]),
            spatial_dims=int(data["spatial_dims"]),
            channels=int(data["channels"]),
            input_size=tuple(int(s) for s in data["input_size"]),
            patch_size=int(data["patch_size"]),
            feature_names=tuple(str(f) for f in data.get("feature_names", [])),
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


class ImageStem(nn.Module):
    """2D/3D image → patch tokens with a learnable positional embedding (MONAI patch embedding)."""

    def __init__(self, spec: StemSpec, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.spec = spec
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
