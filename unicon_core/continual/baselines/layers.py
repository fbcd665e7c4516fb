"""Depth of a parameter in the model (stem 0, backbone blocks 1..L, final norm and head L+1)."""

from __future__ import annotations

import re

from unicon_core.model import UniconModel

_BLOCK = re.compile(r"\.blocks\.(\d+)\.")


def depth(name: str, num_layers: int) -> int:
    """Layer index of a parameter name: 0 stem, ``i+1`` backbone block ``i``, ``L+1`` top."""
    if name.startswith("stems."):
        return 0
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1  # backbone's final norm and the head


def num_layers(model: UniconModel) -> int:
    """Backbone blocks."""
    return model.cfg.num_layers
