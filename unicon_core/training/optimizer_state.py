"""A site's optimiser state as flat arrays, so it can be kept between federated rounds.

Each round a site builds a fresh optimiser for the skill it was sent. With Adam that restart
costs: the first steps after it move every coordinate by about ``lr`` whatever its gradient
(bias-corrected first moment over the square root of its own square), so 12 local steps a round
are mostly restart steps. Keeping the moments at the site (never sent: they are derived from the
site's gradients) lets a round continue where the site's last one stopped. Only per-parameter
tensors travel through these arrays, keyed by parameter name (a plan that trains other
parameters next round, e.g. gradual unfreezing, resumes exactly those it trained before);
hyper-parameters always come from the current config.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

SEP = "/"


def _params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The optimiser's parameters in ``state_dict`` order (over all groups)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def parameter_names(module: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` of every parameter of ``module``."""
    return {id(p): name for name, p in module.named_parameters()}


def _names(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> list[str]:
    """Each optimiser parameter's name; one outside the model is named by its position."""
    return [names.get(id(p), f"#{i}") for i, p in enumerate(_params(optimizer))]


def export_state(optimizer: torch.optim.Optimizer, names: Mapping[int, str]
                 ) -> dict[str, np.ndarray]:
    """The optimiser's per-parameter state as ``{"<parameter name>/<state name>": array}``
    (``names``: :func:`parameter_names` of the model the parameters belong to)."""
    named = _names(optimizer, names)
    out: dict[str, np.ndarray] = {}
    for index, state in optimizer.state_dict()["state"].items():
        name = named[index]
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimiser state {name}{SEP}{key} is a {type(value).__name__},"
                                " not a tensor: it cannot be kept between rounds")
            out[f"{name}{SEP}{key}"] = value.detach().cpu().numpy().copy()
    return out


def import_state(optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray],
                 names: Mapping[int, str]) -> str:
    """Load state from :func:`export_state` into ``optimizer``: each kept parameter's state
    goes to the parameter of the same name; parameters it does not name start fresh, kept
    ones this optimiser does not train are left out. Returns ``""`` when loaded, else why it
    was not (the optimiser then starts fresh)."""
    index_of = {name: i for i, name in enumerate(_names(optimizer, names))}
    params = _params(optimizer)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        name, _, field = key.rpartition(SEP)
        if not name or not field:
            return f"key {key!r} is not '<parameter>{SEP}<state>'"
        if name not in index_of:
            continue  # not trained this time (another plan stage)
        index = index_of[name]
        tensor = torch.from_numpy(np.array(value, copy=True))
        if tensor.ndim and tuple(tensor.shape) != tuple(params[index].shape):
            return (f"key {key!r}: shape {tuple(tensor.shape)} != parameter "
                    f"{tuple(params[index].shape)} (another rank or skill)")
        state.setdefault(index, {})[field] = tensor
    current = optimizer.state_dict()
    try:
        optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as error:
        optimizer.load_state_dict(current)
        return f"torch refused it: {error}"
    return ""
