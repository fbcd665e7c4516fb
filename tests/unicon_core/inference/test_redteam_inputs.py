"""Red team, surface "predict-inputs": `predict` reads files with the rules `validate` uses.

Each case failed before the fix (see ``docs/security.md``, "Files and outputs"). Outcomes:
``clear_error`` (refused; the message names the file and what is wrong) and ``kept``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unicon_core.data.crafted import nifti_claiming, peak_bytes, png_bytes
from tests.unicon_core.inference._tiny import tiny_model, trained_on
from unicon_core.commands.inference import predict_command
from unicon_core.data.readers import write_nifti
from unicon_core.inference.bundle import load_bundle, save_bundle
from unicon_core.inference.export import bundle_from_model
from unicon_core.inference.inputs import InputError, collect_inputs, load_input
from unicon_core.inference.predict import Predictor
from unicon_core.inference.routing import RoutingError

INPUTS = "predict-inputs"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model()
    return save_bundle(
        bundle_from_model(model, trained_on(model)), tmp_path_factory.mktemp("bundle") / "b"
    )


def _load(path: Path):
    (ref,) = collect_inputs([path])
    return load_input(ref)


@pytest.mark.redteam(surface=INPUTS, outcome="clear_error")
def test_huge_nifti_header_is_refused_before_allocation(tmp_path: Path) -> None:
    path = nifti_claiming(tmp_path / "huge.nii.gz", (2048, 2048, 1024), body=b"\0" * 4096)
    result, peak = peak_bytes(lambda: _load(path))
    assert isinstance(result, InputError), result
    assert str(result).startswith(str(path)) and "over the limit" in str(result)
    assert peak < 16 * 2**20


@pytest.mark.redteam(surface=INPUTS, outcome="clear_error")
def test_values_beyond_float32_name_the_file_and_the_cause(tmp_path: Path) -> None:
    vol = np.zeros((6, 6, 6))
    vol[0, 0, 0] = -1e200
    path = write_nifti(tmp_path / "over.nii.gz", vol, dtype="float64")
    with pytest.raises(InputError, match=r"over\.nii\.gz: 1 voxel\(s\) .*float32"):
        _load(path)


@pytest.mark.redteam(surface=INPUTS, outcome="kept")
def test_16_bit_png_keeps_its_range_in_predict(tmp_path: Path) -> None:
    pixels = (np.arange(16 * 16).reshape(16, 16) * 250).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    assert _load(tmp_path / "g16.png").array.max() == float(pixels.max())


@pytest.mark.redteam(surface=INPUTS, outcome="clear_error")
def test_colour_image_for_greyscale_skills_says_how_to_convert(
    bundle_dir: Path, tmp_path: Path
) -> None:
    rgb = np.random.default_rng(5).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    predictor = Predictor(load_bundle(bundle_dir))
    with pytest.raises(RoutingError, match=r"colour\.png: .*3 channel.*convert it to greyscale"):
        predictor.predict(_load(tmp_path / "colour.png"))


@pytest.mark.redteam(surface=INPUTS, outcome="clear_error")
def test_predict_limits_follow_the_bundles_tasks(bundle_dir: Path, tmp_path: Path) -> None:
    """A 5000 x 5000 PNG is under PIL's bomb limit but far over what a 16 x 16 skill takes; the
    bundle's tasks set the limit, as a site's task does in `validate`."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "wide.png").write_bytes(png_bytes(5000, 5000))
    code = predict_command(bundle_dir, tmp_path / "out", [tmp_path / "in"], None, None)
    (error,) = json.loads((tmp_path / "out" / "summary.json").read_text())["errors"]
    assert code == 1
    assert "wide.png" in error["error"] and "over the limit" in error["error"]
