"""Readers keep geometry: NIfTI round trip keeps the affine; PNG gives channel-first rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unicon_core.data.readers import read_image, write_nifti


def test_nifti_round_trip_keeps_affine_and_values(tmp_path: Path) -> None:
    affine = np.array([[0, -1.5, 0, 10], [2.0, 0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    image = read_image(write_nifti(tmp_path / "v.nii.gz", vol, affine))
    assert image.array.shape == (1, 5, 6, 7)
    np.testing.assert_allclose(image.array[0], vol)
    np.testing.assert_allclose(image.affine, affine)
    np.testing.assert_allclose(image.spacing, [2.0, 1.5, 3.0])


def test_png_is_rows_first_and_channel_first(tmp_path: Path) -> None:
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray, gray // 2, gray // 3], -1)).save(tmp_path / "c.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "grey_as_rgb.png")
    assert read_image(tmp_path / "g.png").array.shape == (1, 20, 30)
    colour = read_image(tmp_path / "c.png")
    assert colour.array.shape == (3, 20, 30)
    np.testing.assert_array_equal(colour.array[1], (gray // 2).astype(np.float32))
    # three equal channels are one grey channel, losslessly (validate and predict alike)
    grey = read_image(tmp_path / "grey_as_rgb.png")
    np.testing.assert_array_equal(grey.array, gray[None].astype(np.float32))


def test_unsupported_suffix_names_dicom_route(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"")
    (tmp_path / "IM0001").write_bytes(b"\0" * 128 + b"DICM")  # DICOM without a suffix
    (tmp_path / "x.bmp").write_bytes(b"BM")
    for name in ("x.dcm", "IM0001"):
        with pytest.raises(ValueError, match=r"convert DICOM to NIfTI first, e\.g\. `dcm2niix"):
            read_image(tmp_path / name)
    with pytest.raises(ValueError, match="unsupported file type"):
        read_image(tmp_path / "x.bmp")
