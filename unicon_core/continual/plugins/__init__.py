"""Foundation-refinement plugins (issue #15): hooks and loss terms, never a new engine.

``mds`` (MedSeqFT's Maximum Data Similarity selection), ``kd`` (K&G RFT-style distillation from
the previous foundation), ``retrieval`` (retrieval-guided, per-sample and per-level weighted
distillation), ``lwf`` (Learning without Forgetting), ``ewc`` (Elastic Weight Consolidation),
``realign`` (re-validate earlier skills after a stage, re-tune those that lost too much).
Off by default: ``continual.plugins: []``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unicon_core.continual.plugins.base import (
    ContinualPlugin,
    extra_loss_for,
    plugin_loss,
)
from unicon_core.continual.plugins.ewc import EWCPlugin
from unicon_core.continual.plugins.kd import KDPlugin
from unicon_core.continual.plugins.lwf import LwFPlugin
from unicon_core.continual.plugins.mds import MDSPlugin
from unicon_core.continual.plugins.realign import RealignPlugin
from unicon_core.continual.plugins.retrieval import RetrievalKDPlugin

PLUGINS: dict[str, Callable[..., ContinualPlugin]] = {
    "mds": MDSPlugin,
    "kd": KDPlugin,
    "retrieval": RetrievalKDPlugin,
    "lwf": LwFPlugin,
    "ewc": EWCPlugin,
    "realign": RealignPlugin,
}


def build_plugins(
    names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[ContinualPlugin]:
    """Plugins by name (``continual.plugins``), with keyword options per name."""
    unknown = [n for n in names if n not in PLUGINS]
    if unknown:
        raise ValueError(f"continual.plugins: unknown {unknown}; known: {sorted(PLUGINS)}")
    options = options or {}
    return [PLUGINS[n](**dict(options.get(n, {}))) for n in names]


__all__ = ["PLUGINS", "ContinualPlugin", "EWCPlugin", "KDPlugin", "LwFPlugin", "MDSPlugin",
           "RealignPlugin", "RetrievalKDPlugin", "build_plugins", "extra_loss_for", "plugin_loss"]
