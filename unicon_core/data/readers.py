"""Readers for the files a manifest names: NIfTI (nibabel), PNG/JPEG (PIL), CSV (pandas).

Every image reader returns an :class:`ImageData`: a channel-first float array plus the affine
and voxel spacing, so predictions can be written back in the input's space. DICOM is not read
(convert series to NIfTI first with ``dcm2niix``); :func:`looks_like_dicom` lets callers say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
#: What to do with DICOM, in every message that meets it.
DICOM_ADVICE = "DICOM is not read: convert DICOM to NIfTI first, e.g. `dcm2niix -z y -o OUT DIR`"


@dataclass
class ImageData:
    """A loaded image: ``array`` is ``(C, *spatial)`` float32, ``affine`` 4x4 voxel-to-world."""

    array: np.ndarray
    affine: np.ndarray
    path: str

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along each spatial axis (from the affine's column norms)."""
        dims = len(self.spatial_shape)
        return np.linalg.norm(self.affine[:3, :dims], axis=0)


def is_supported(path: Path | str) -> bool:
    """Whether :func:`read_image` can read this file (judged by its suffix)."""
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES + PIL_SUFFIXES)


def looks_like_dicom(path: Path | str) -> bool:
    """Whether ``path`` is a DICOM file (``.dcm`` suffix or the ``DICM`` preamble marker) or a
    folder holding one (a DICOM series)."""
    path = Path(path)
    if path.is_dir():
        return any(looks_like_dicom(p) for p in sorted(path.iterdir())[:20] if p.is_file())
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_nifti(path: Path | str) -> ImageData:
    """Read a NIfTI file fully (a truncated ``.nii.gz`` raises here, not later in training).

    A 2D or 3D image gets a channel axis of 1; a 4D image's last axis is taken as channels.
    """
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    elif data.ndim in (2, 3):
        data = data[None]
    else:
        raise ValueError(f"{path}: NIfTI with {data.ndim} dimensions is not supported")
    return ImageData(
        np.ascontiguousarray(data), np.asarray(img.affine, dtype=np.float64), str(path)
    )


def read_pil(path: Path | str) -> ImageData:
    """Read a PNG/JPEG as ``(C, H, W)`` (rows first): grayscale gives 1 channel, colour 3.

    The affine is the identity (one pixel = one unit, row axis first).
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK") else "L")
        arr = np.asarray(img, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return ImageData(np.ascontiguousarray(arr), np.eye(4), str(path))


def read_image(path: Path | str) -> ImageData:
    """Read any supported image; ``ValueError`` names an unsupported suffix."""
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(PIL_SUFFIXES):
        return read_pil(path)
    if looks_like_dicom(path):
        raise ValueError(f"{path}: {DICOM_ADVICE}")
    raise ValueError(
        f"{path}: unsupported file type (use one of {NIFTI_SUFFIXES + PIL_SUFFIXES}; "
        "convert DICOM to NIfTI first)"
    )


def write_nifti(
    path: Path | str, array: np.ndarray, affine: np.ndarray | None = None, dtype: str = "float32"
) -> Path:
    """Write a spatial array (no channel axis) as NIfTI with the given affine (identity if None)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), aff)
    img.header.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def read_manifest(path: Path | str) -> pd.DataFrame:
    """Read ``manifest.csv`` as strings (no type guessing), empty cells as ``""``."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)
