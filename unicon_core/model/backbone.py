"""The shared transformer backbone (MONAI transformer blocks), frozen once it is a foundation."""

from __future__ import annotations

import torch
from monai.networks.blocks import TransformerBlock
from torch import nn

from unicon_core.config import BackboneConfig


class Backbone(nn.Module):
    """A stack of pre-norm transformer blocks over a token sequence ``(B, N, D)``.

    The attention ``qkv``/``out_proj`` and MLP ``linear1``/``linear2`` layers are the LoRA targets.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode tokens; returns the same shape."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)
