"""Depth of a parameter in the model: 0 the stem (a token stem, or a CNN's first convolution),
1..L the backbone's blocks in order, L+1 the top (a transformer's final norm and the head)."""

from __future__ import annotations

from unicon_core.model import UniconModel


def depth(name: str, model: UniconModel) -> int:
    """Layer index of a parameter name of ``model`` (see the module docstring)."""
    if name.startswith("stems."):
        return 0
    if name.startswith("backbone."):
        for index, block in enumerate(model.core_backbone.block_names()):
            if f".{block}." in name:
                return index + 1
        # outside every block: a CNN's input convolution (bottom) or a transformer's final norm
        return 0 if not model.reads_tokens else num_layers(model) + 1
    return num_layers(model) + 1


def num_layers(model: UniconModel) -> int:
    """Backbone blocks."""
    return len(model.core_backbone.block_names())
