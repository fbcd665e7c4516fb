"""Using the grown model: bundles, routing inputs to the right skill, and prediction.

Names are imported lazily so ``import unicon_core.inference`` stays cheap; torch, MONAI and
nibabel load with the submodule that needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Bundle": "bundle",
    "BundleError": "bundle",
    "SiteRecord": "bundle",
    "TaskEntry": "bundle",
    "load_bundle": "bundle",
    "save_bundle": "bundle",
    "bundle_from_model": "export",
    "export_run": "export",
    "federated_summaries": "export",
    "InputError": "inputs",
    "collect_inputs": "inputs",
    "load_input": "inputs",
    "Predictor": "predict",
    "Prototype": "prototypes",
    "aggregate_prototypes": "prototypes",
    "feature_moments": "prototypes",
    "input_descriptor": "prototypes",
    "nearest_prototype_scores": "prototypes",
    "site_prototype": "prototypes",
    "RouteDecision": "routing",
    "RoutingError": "routing",
    "kind_from_question": "routing",
    "route": "routing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
