"""Red team, surface "files": hostile image files a site (or a predict input) may hold.

Each case failed before the fix (see ``docs/security.md``, "Files and outputs"); the
``redteam`` marker records the surface and the outcome now, so a script can count cases:
``clear_error`` (refused; the message names the file and what is wrong), ``kept`` (read at full
fidelity, or the same way by ``validate`` and ``predict``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.unicon_core.data.crafted import nifti_claiming, peak_bytes, png_bytes, png_rgb16
from tests.unicon_core.data.sites import CLS_SPEC, CTPET_SPEC, cls_site, ctpet_site, read_rows
from unicon_core.data.readers import read_image, write_nifti
from unicon_core.data.validate import validate_site

FILES = "files"
#: Reading a refused file may allocate this much at most (the files claim GiBs).
SMALL = 16 * 2**20


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make decoding PIL pixel data fail the test: refusals must come from the header."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"pixel data of {self.size} was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ------------------------------------------------------------------------ sizes from headers
@pytest.mark.redteam(surface=FILES, outcome="clear_error")
@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_nifti_header_claiming_16_gib_is_refused_before_any_allocation(
    tmp_path: Path, name: str
) -> None:
    # Prepare: 4 KiB on disk, 2048 x 2048 x 1024 float32 (16 GiB) in the header
    path = nifti_claiming(tmp_path / name, (2048, 2048, 1024), body=b"\0" * 4096)
    # Execute
    result, peak = peak_bytes(lambda: read_image(path))
    # Assert
    assert isinstance(result, ValueError), result
    assert name in str(result) and "over the limit" in str(result)
    assert "2048, 2048, 1024" in str(result)
    assert peak < SMALL


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_validator_names_row_column_and_file_of_a_huge_header(tmp_path: Path) -> None:
    site = ctpet_site(tmp_path / "site")
    nifti_claiming(site / "img/p1_pet.nii.gz", (2048, 2048, 1024))
    (problem,) = validate_site(site, CTPET_SPEC)
    assert (problem.row, problem.column, problem.path) == (2, "pet", "img/p1_pet.nii.gz")
    assert "over the limit" in problem.message


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_site_limit_derives_from_the_task_input_size(tmp_path: Path) -> None:
    """A 5000 x 5000 PNG is under PIL's bomb limit, yet 100000x the pixels of a 16 x 16 task;
    the site's task sets the limit (validate and training read with the same rule)."""
    site = cls_site(tmp_path / "site")
    (site / "img/3.png").write_bytes(png_bytes(5000, 5000))
    (problem,) = validate_site(site)
    assert (problem.row, problem.column, problem.path) == (4, "image", "img/3.png")
    assert "over the limit" in problem.message and CLS_SPEC.name in problem.message


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_truncated_nii_is_refused_from_its_size_before_allocation(tmp_path: Path) -> None:
    # Prepare: the header promises 64 MiB of float32, the file holds 4 KiB
    path = nifti_claiming(tmp_path / "cut.nii", (256, 256, 256), body=b"\0" * 4096)
    # Execute
    result, peak = peak_bytes(lambda: read_image(path))
    # Assert
    assert isinstance(result, ValueError), result
    assert "cut.nii" in str(result) and "truncated" in str(result)
    assert peak < SMALL


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_gzip_bomb_in_a_nifti_extension_is_bounded(tmp_path: Path) -> None:
    # Prepare: a 40 MiB header extension of zeros, gzipped to ~40 KiB, before an 8^3 image
    body = np.zeros((8, 8, 8), np.float32).tobytes()
    path = nifti_claiming(tmp_path / "bomb.nii.gz", (8, 8, 8), body=body, extension=bytes(40 << 20))
    assert path.stat().st_size < 1 << 20
    # Execute
    result, peak = peak_bytes(lambda: read_image(path))
    # Assert: refused after reading the 352-byte header, not the 40 MiB
    assert isinstance(result, ValueError), result
    assert "bomb.nii.gz" in str(result) and "header" in str(result)
    assert peak < SMALL


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_png_in_pils_warning_zone_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10000 x 10000 is over PIL's MAX_IMAGE_PIXELS but under twice it: PIL only warns."""
    _no_decoding(monkeypatch)
    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(10000, 10000))
    with pytest.raises(ValueError, match=r"wide\.png: .*10000 x 10000.*over the limit"):
        read_image(path)


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_png_bomb_is_refused_even_with_pils_limit_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_decoding(monkeypatch)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as some libraries do
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(100_000, 100_000))
    with pytest.raises(ValueError, match=r"bomb\.png: .*over the limit"):
        read_image(path)


# ------------------------------------------------------------------------ site confinement
@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_symlink_to_a_file_outside_the_site_is_refused(tmp_path: Path) -> None:
    # Prepare: a valid PNG outside the site, linked from inside it
    site = cls_site(tmp_path / "site")
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    Image.fromarray(np.full((20, 24), 7, np.uint8)).save(secret)
    (site / "img/2.png").unlink()
    (site / "img/2.png").symlink_to(secret)
    # Execute
    (problem,) = validate_site(site)
    # Assert
    assert (problem.row, problem.column, problem.path) == (3, "image", "img/2.png")
    assert "outside the site folder" in problem.message and str(secret) in problem.message


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_symlinked_folder_leaving_the_site_is_refused(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "site")
    os.rename(site / "img", tmp_path / "other_img")
    (site / "img").symlink_to(tmp_path / "other_img", target_is_directory=True)
    problems = validate_site(site)
    assert [p.row for p in problems] == [1, 2, 3, 4, 5, 6]
    assert all("outside the site folder" in p.message for p in problems)


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_file_swapped_for_an_outside_symlink_after_validation_is_refused(tmp_path: Path) -> None:
    """Training reads files again when they are not cached: the rule holds there too."""
    from unicon_core.data.site import open_site

    site_dir = cls_site(tmp_path / "site")
    site = open_site(site_dir, cache_bytes=0)
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(outside)
    (site_dir / "img/0.png").unlink()
    (site_dir / "img/0.png").symlink_to(outside)
    with pytest.raises(ValueError, match=r"0\.png.*outside the site folder"):
        site.dataset("train")[0]


def test_symlink_inside_the_site_is_read(tmp_path: Path) -> None:
    """Not a red-team case: links that stay in the site are fine."""
    site = cls_site(tmp_path / "site")
    (site / "store").mkdir()
    os.rename(site / "img/2.png", site / "store/2.png")
    (site / "img/2.png").symlink_to(site / "store/2.png")
    assert validate_site(site) == []


# ------------------------------------------------------------------------ values kept
@pytest.mark.redteam(surface=FILES, outcome="kept")
def test_16_bit_png_keeps_its_full_range(tmp_path: Path) -> None:
    pixels = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    image = read_image(tmp_path / "g16.png")
    assert image.array.shape == (1, 20, 30)
    np.testing.assert_array_equal(image.array[0], pixels.astype(np.float32))


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_16_bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 65535, (4, 5, 3)).astype(np.uint16)
    path = png_rgb16(tmp_path / "rgb16.png", pixels)
    with pytest.raises(ValueError, match=r"rgb16\.png: 16-bit colour PNG.*convert"):
        read_image(path)


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_refused_not_dropped(tmp_path: Path, mode: str) -> None:
    bands = len(mode)
    pixels = np.random.default_rng(1).integers(0, 255, (6, 7, bands)).astype(np.uint8)
    pixels[0, 0, -1] = 10  # one see-through pixel
    Image.fromarray(pixels, mode=mode).save(tmp_path / "alpha.png")
    with pytest.raises(ValueError, match=r"alpha\.png: .*transparen"):
        read_image(tmp_path / "alpha.png")


def test_opaque_alpha_is_dropped_losslessly(tmp_path: Path) -> None:
    """Not a red-team case: an all-opaque alpha channel carries nothing."""
    pixels = np.random.default_rng(1).integers(0, 255, (6, 7, 2)).astype(np.uint8)
    pixels[..., 1] = 255
    Image.fromarray(pixels, mode="LA").save(tmp_path / "opaque.png")
    image = read_image(tmp_path / "opaque.png")
    np.testing.assert_array_equal(image.array[0], pixels[..., 0].astype(np.float32))


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_animated_png_is_refused_not_cut_to_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match=r"anim\.png: .*2 frames"):
        read_image(tmp_path / "anim.png")


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_values_beyond_float32_are_refused_not_made_infinite(tmp_path: Path) -> None:
    vol = np.zeros((4, 4, 4))
    vol[1, 2, 3] = 1e300
    path = write_nifti(tmp_path / "big.nii.gz", vol, dtype="float64")
    with pytest.raises(ValueError, match=r"big\.nii\.gz: 1 voxel\(s\) .*float32"):
        read_image(path)


@pytest.mark.redteam(surface=FILES, outcome="clear_error")
def test_scaling_that_overflows_float32_is_refused(tmp_path: Path) -> None:
    body = np.full((4, 4, 4), 30000, np.int16).tobytes()
    path = nifti_claiming(tmp_path / "scaled.nii", (4, 4, 4), np.int16, body=body, slope=1e36)
    with pytest.raises(ValueError, match=r"scaled\.nii: 64 voxel\(s\) .*float32.*scl_slope"):
        read_image(path)


def test_nan_in_the_file_is_still_counted_by_the_validator(tmp_path: Path) -> None:
    """Not a red-team case: NaN stored in the file keeps its own validator message."""
    site = ctpet_site(tmp_path / "site")
    vol = np.zeros((8, 8, 8), np.float32)
    vol[0, 0, :3] = np.nan
    write_nifti(site / "img/p0_ct.nii.gz", vol, np.diag([2.0, 2.0, 3.0, 1.0]))
    (problem,) = validate_site(site, CTPET_SPEC)
    assert problem.message == "3 NaN/Inf voxel(s)"


# ------------------------------------------------------------------------ validate == predict
@pytest.mark.redteam(surface=FILES, outcome="kept")
def test_grey_saved_as_rgb_is_one_channel_in_validate_and_predict(tmp_path: Path) -> None:
    from unicon_core.inference.inputs import collect_inputs, load_input

    site = cls_site(tmp_path / "site")
    grey = np.asarray(Image.open(site / "img/1.png"))
    Image.fromarray(np.stack([grey] * 3, -1)).save(site / "img/1.png")
    assert validate_site(site) == []
    (ref,) = collect_inputs([site / "img/1.png"])
    assert load_input(ref).array.shape == read_image(site / "img/1.png").array.shape == (1, 20, 24)
    assert read_rows(site)[1]["image"] == "img/1.png"
