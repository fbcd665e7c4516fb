"""Site data layer: the site format, validation, readers, transforms, splits and datasets.

Names are imported lazily so ``import unicon_core.data`` stays cheap; the heavy libraries
(torch, MONAI, nibabel) load with the submodule that needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Column": "manifest",
    "Split": "manifest",
    "SiteMetadata": "manifest",
    "image_columns": "manifest",
    "required_columns": "manifest",
    "read_site_json": "manifest",
    "write_site_json": "manifest",
    "MANIFEST_NAME": "manifest",
    "SITE_JSON_NAME": "manifest",
    "Problem": "problems",
    "ProblemKind": "problems",
    "SiteValidationError": "problems",
    "group_problems": "problems",
    "summarize_problems": "problems",
    "validate_site": "validate",
    "ImageData": "readers",
    "read_image": "readers",
    "write_nifti": "readers",
    "PreprocessConfig": "transforms",
    "build_transforms": "transforms",
    "to_input_space": "transforms",
    "to_meta_tensor": "transforms",
    "assign_splits": "splits",
    "leaked_groups": "splits",
    "META_KEY": "dataset",
    "Site": "site",
    "open_site": "site",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
