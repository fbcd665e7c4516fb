"""Red team, surface "bundle": a bundle's manifest may only name files inside the bundle.

Each case failed before the fix (see ``docs/security.md``, "Files and outputs"); outcome
``clear_error``: loading refuses, naming the bundle, the entry and where it points.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.unicon_core.inference._tiny import SPECS, tiny_model, trained_on
from unicon_core.inference.bundle import (
    FOUNDATION_FILE,
    MANIFEST,
    SKILLS_FILE,
    BundleError,
    load_bundle,
    save_bundle,
)
from unicon_core.inference.export import bundle_from_model

BUNDLE = "bundle"


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    model = tiny_model(SPECS[:1])
    return save_bundle(bundle_from_model(model, trained_on(model)), tmp_path / "b")


def _edit(bundle: Path, **backbone: object) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["backbone"].update(backbone)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def _move_out(bundle: Path, name: str) -> Path:
    """Move ``name`` next to the bundle, keeping its recorded hash under a new manifest key."""
    outside = bundle.parent / name
    shutil.move(bundle / name, outside)
    return outside


@pytest.mark.redteam(surface=BUNDLE, outcome="clear_error")
def test_foundation_file_climbing_out_of_the_bundle_is_refused(bundle_dir: Path) -> None:
    # Prepare: the foundation moved next to the bundle, the manifest pointing at it by '..'
    _move_out(bundle_dir, FOUNDATION_FILE)
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest["files"][f"../{FOUNDATION_FILE}"] = manifest["files"].pop(FOUNDATION_FILE)
    manifest["backbone"]["file"] = f"../{FOUNDATION_FILE}"
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest))
    # Execute / Assert
    with pytest.raises(BundleError, match=r"backbone.file '\.\./foundation.*outside the bundle"):
        load_bundle(bundle_dir)


@pytest.mark.redteam(surface=BUNDLE, outcome="clear_error")
def test_foundation_file_as_an_absolute_path_is_refused(bundle_dir: Path) -> None:
    outside = _move_out(bundle_dir, FOUNDATION_FILE)
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest["files"][str(outside)] = manifest["files"].pop(FOUNDATION_FILE)
    manifest["backbone"]["file"] = str(outside)
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"outside the bundle"):
        load_bundle(bundle_dir)


@pytest.mark.redteam(surface=BUNDLE, outcome="clear_error")
@pytest.mark.parametrize("name", [SKILLS_FILE, FOUNDATION_FILE])
def test_bundle_file_symlinked_out_of_the_bundle_is_refused(bundle_dir: Path, name: str) -> None:
    outside = _move_out(bundle_dir, name)
    (bundle_dir / name).symlink_to(outside)
    with pytest.raises(BundleError, match=rf"{name}.*outside the bundle"):
        load_bundle(bundle_dir)


@pytest.mark.redteam(surface=BUNDLE, outcome="clear_error")
def test_relative_external_foundation_location_is_refused(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``location`` (a foundation kept outside on purpose) must be absolute, not resolved
    against whatever folder `predict` runs in (here one holding a matching file)."""
    outside = _move_out(bundle_dir, FOUNDATION_FILE)
    _edit(bundle_dir, file=None, location=outside.name)
    monkeypatch.chdir(outside.parent)
    with pytest.raises(BundleError, match=r"location 'foundation.safetensors'.*absolute"):
        load_bundle(bundle_dir)
