"""The built-in transformer family: MONAI transformer blocks over a token sequence.

Sizes are the top-level backbone fields (``configs/backbone/{tiny,small,base}.yaml``; ``base`` is
ViT-B sized, about 85M parameters). Stems turn each modality into tokens; LoRA adapts the
attention ``qkv``/``out_proj`` and MLP ``linear1``/``linear2`` projections by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks import TransformerBlock
from torch import nn

from unicon_core.config import BackboneConfig
from unicon_core.model.backbones.registry import (
    FoundationBackbone,
    adaptable_layers,
    register_backbone,
)

_DEFAULT_LINEARS = ("qkv", "out_proj", "linear1", "linear2")


@dataclass
class TransformerOptions:
    """The transformer reads its sizes from the top-level backbone fields; no options."""


class TransformerBackbone(FoundationBackbone):
    """A stack of pre-norm transformer blocks over a token sequence ``(B, N, D)``."""

    family = "transformer"
    input_kind = "tokens"

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.hidden_size = cfg.hidden_size
        self.blocks = nn.ModuleList(
            TransformerBlock(
                hidden_size=cfg.hidden_size,
                mlp_dim=cfg.mlp_dim,
                num_heads=cfg.num_heads,
                dropout_rate=cfg.dropout,
                qkv_bias=True,
            )
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.hidden_size)

    def default_lora_targets(self) -> list[str]:
        return [n for n in adaptable_layers(self) if n.rsplit(".", 1)[-1] in _DEFAULT_LINEARS]

    def feature_channels(self) -> list[int]:
        return [self.hidden_size]

    def block_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode tokens; returns the same shape."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


@register_backbone("transformer", TransformerOptions)
def build_transformer(cfg: BackboneConfig, options: TransformerOptions) -> TransformerBackbone:
    """A randomly initialised transformer (a foundation checkpoint is loaded by the model)."""
    return TransformerBackbone(cfg)
