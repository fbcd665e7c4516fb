"""Task heads: classification, survival risk, and a light UNETR-like segmentation decoder."""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetResBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import nn

from unicon_core.config import TaskKind, TaskSpec


class ClassificationHead(nn.Module):
    """Mean-pooled tokens → class logits ``(B, C)`` (binary tasks use 2 logits)."""

    def __init__(self, hidden_size: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` (the raw input) is unused; heads share one signature."""
        return self.fc(self.norm(tokens.mean(dim=1)))


class SurvivalHead(nn.Module):
    """Mean-pooled tokens → one log-hazard (risk) score per sample, ``(B,)``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Risk score; higher means earlier expected event."""
        return self.fc(self.norm(tokens.mean(dim=1))).squeeze(-1)


class SegmentationHead(nn.Module):
    """Token grid → full-resolution logits ``(B, C, *S)``, UNETR-like but light.

    The token grid is upsampled ×2 per stage (transposed conv + residual conv block) until the
    input resolution; the last stage concatenates a full-resolution feature map computed from the
    raw input (UNETR's first skip connection), which restores fine boundaries.
    """

    def __init__(self, spec: TaskSpec, hidden_size: int) -> None:
        super().__init__()
        dims = spec.spatial_dims
        self.grid = tuple(s // spec.patch_size for s in spec.input_size)
        stages = int(math.log2(spec.patch_size))
        widths = [max(8, hidden_size // 2 ** (i + 1)) for i in range(max(stages, 1))]
        self.norm = nn.LayerNorm(hidden_size)
        ups: list[nn.Module] = []
        cin = hidden_size
        for width in widths[:-1]:
            ups.append(
                nn.Sequential(
                    get_conv_layer(
                        dims,
                        cin,
                        width,
                        kernel_size=2,
                        stride=2,
                        conv_only=True,
                        is_transposed=True,
                    ),
                    UnetResBlock(dims, width, width, kernel_size=3, stride=1, norm_name="instance"),
                )
            )
            cin = width
        self.ups = nn.ModuleList(ups)
        last = widths[-1]
        self.skip = UnetrBasicBlock(
            dims,
            spec.channels,
            last,
            kernel_size=3,
            stride=1,
            norm_name="instance",
            res_block=True,
        )
        if stages >= 1:
            self.final_up: nn.Module = UnetrUpBlock(
                dims,
                cin,
                last,
                kernel_size=3,
                upsample_kernel_size=2,
                norm_name="instance",
                res_block=True,
            )
        else:  # patch size 1: tokens are already at full resolution
            self.final_up = _ConcatBlock(dims, cin, last)
        self.out = UnetOutBlock(dims, last, spec.num_classes)

    def forward(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Decode; ``x`` is the stem's input (for the full-resolution skip)."""
        b, _, d = tokens.shape
        feat = self.norm(tokens).transpose(1, 2).reshape(b, d, *self.grid)
        for up in self.ups:
            feat = up(feat)
        return self.out(self.final_up(feat, self.skip(x)))


class _ConcatBlock(nn.Module):
    """Concatenate the token map with the input skip, then a residual conv (patch size 1)."""

    def __init__(self, dims: int, cin: int, width: int) -> None:
        super().__init__()
        self.block = UnetResBlock(
            dims, cin + width, width, kernel_size=3, stride=1, norm_name="instance"
        )

    def forward(self, feat: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([feat, skip], dim=1))


def build_head(spec: TaskSpec, hidden_size: int) -> nn.Module:
    """The head module for a task kind."""
    if spec.kind is TaskKind.CLASSIFICATION:
        return ClassificationHead(hidden_size, spec.num_classes)
    if spec.kind is TaskKind.SURVIVAL:
        return SurvivalHead(hidden_size)
    if spec.decoder == "fpn":
        return TokenMapDecoder(spec, hidden_size)
    return SegmentationHead(spec, hidden_size)


# ---------------------------------------------------------------------- image backbones
class PooledHead(nn.Module):
    """Global-average-pooled last feature map → logits ``(B, C)`` or a risk score ``(B,)``."""

    def __init__(self, channels: int, outputs: int, squeeze: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc = nn.Linear(channels, outputs)
        self.squeeze = squeeze

    def forward(self, feats: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        pooled = feats[-1].flatten(2).mean(dim=2)
        out = self.fc(self.norm(pooled.float()))
        return out.squeeze(-1) if self.squeeze else out


class FeatureDecoder(nn.Module):
    """A light FPN decoder over multi-scale maps (any backbone) → full-resolution logits.

    Each map is projected to ``width`` channels (1×1 conv), merged top-down, refined by one
    residual block, upsampled to the input size and fused with a full-resolution skip from the
    raw input. Its size depends on the feature channels only through the 1×1 projections, so
    it stays small on a large backbone.
    """

    def __init__(self, spec: TaskSpec, channels: list[int], width: int = 32) -> None:
        super().__init__()
        dims = spec.spatial_dims
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.mode = "trilinear" if dims == 3 else "bilinear"
        self.laterals = nn.ModuleList(conv(c, width, kernel_size=1) for c in channels)
        self.refine = UnetResBlock(dims, width, width, kernel_size=3, stride=1,
                                   norm_name="instance")
        self.skip = UnetrBasicBlock(dims, spec.channels, width // 2, kernel_size=3, stride=1,
                                    norm_name="instance", res_block=True)
        self.fuse = UnetResBlock(dims, width + width // 2, width, kernel_size=3, stride=1,
                                 norm_name="instance")
        self.out = UnetOutBlock(dims, width, spec.num_classes)

    def forward(self, feats: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        merged = self.laterals[-1](feats[-1])
        for lateral, feat in zip(reversed(self.laterals[:-1]), reversed(feats[:-1]), strict=True):
            up = nn.functional.interpolate(merged, size=feat.shape[2:], mode=self.mode)
            merged = lateral(feat) + up
        merged = self.refine(merged)
        merged = nn.functional.interpolate(merged, size=x.shape[2:], mode=self.mode)
        return self.out(self.fuse(torch.cat([merged, self.skip(x).to(merged.dtype)], dim=1)))


class TokenMapDecoder(nn.Module):
    """The FPN decoder on a token backbone: tokens placed on their patch grid, one scale."""

    def __init__(self, spec: TaskSpec, hidden_size: int) -> None:
        super().__init__()
        self.grid = tuple(s // spec.patch_size for s in spec.input_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.decoder = FeatureDecoder(spec, [hidden_size])

    def forward(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        feat = self.norm(tokens).transpose(1, 2).reshape(b, d, *self.grid)
        return self.decoder([feat], x)


def build_feature_head(spec: TaskSpec, channels: list[int]) -> nn.Module:
    """The head of a task on an image backbone's feature maps."""
    if spec.kind is TaskKind.CLASSIFICATION:
        return PooledHead(channels[-1], spec.num_classes)
    if spec.kind is TaskKind.SURVIVAL:
        return PooledHead(channels[-1], 1, squeeze=True)
    return FeatureDecoder(spec, channels)
