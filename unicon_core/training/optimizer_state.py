"""A site's optimiser state as flat arrays, so it can be kept between federated rounds.

Each round a site builds a fresh optimiser for the skill it was sent. With Adam that restart
costs: the first steps after it move every coordinate by about ``lr`` whatever its gradient
(bias-corrected first moment over the square root of its own square), so 12 local steps a round
are mostly restart steps. Keeping the moments at the site (never sent: they are derived from the
site's gradients) lets a round continue where the site's last one stopped. Only per-parameter
tensors travel through these arrays; hyper-parameters always come from the current config.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

SEP = "/"


def export_state(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The optimiser's per-parameter state as ``{"<index>/<name>": array}`` (index: the
    parameter's position over all groups, as ``state_dict`` numbers them)."""
    out: dict[str, np.ndarray] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimiser state {index}{SEP}{name} is a {type(value).__name__},"
                                " not a tensor: it cannot be kept between rounds")
            out[f"{index}{SEP}{name}"] = value.detach().cpu().numpy().copy()
    return out


def import_state(optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]) -> str:
    """Load state from :func:`export_state` into ``optimizer`` (built for the same parameters);
    returns ``""`` when loaded, else why it was not (the optimiser then starts fresh)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        index_text, _, name = key.partition(SEP)
        if not index_text.isdigit() or not name:
            return f"key {key!r} is not '<index>{SEP}<name>'"
        index = int(index_text)
        if index >= len(params):
            return f"key {key!r}: the optimiser has {len(params)} parameters"
        tensor = torch.from_numpy(np.array(value, copy=True))
        if tensor.ndim and tuple(tensor.shape) != tuple(params[index].shape):
            return (f"key {key!r}: shape {tuple(tensor.shape)} != parameter "
                    f"{tuple(params[index].shape)} (another rank or skill)")
        state.setdefault(index, {})[name] = tensor
    current = optimizer.state_dict()
    try:
        optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as error:
        optimizer.load_state_dict(current)
        return f"torch refused it: {error}"
    return ""
