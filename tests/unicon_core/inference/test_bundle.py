"""Bundles: a saved and re-loaded bundle reproduces the model's outputs bit for bit, in this
process and in a fresh one; damaged or mismatched bundles fail with errors naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.unicon_core.inference._tiny import SPECS, example_inputs, tiny_model, trained_on
from unicon_core.inference.bundle import (
    FOUNDATION_FILE,
    MANIFEST,
    SKILLS_FILE,
    BundleError,
    load_bundle,
    save_bundle,
)
from unicon_core.inference.export import bundle_from_model
from unicon_core.inference.prototypes import DESCRIPTOR_LENGTH, Prototype
from unicon_core.model.foundation import save_foundation

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    model = tiny_model()
    dim = DESCRIPTOR_LENGTH
    router = {"blob_cls": Prototype(np.zeros(dim), np.ones(dim), 7)}
    bundle = bundle_from_model(
        model,
        trained_on(model),
        router=router,
        feature_stats={"surv": (np.array([50.0, 20.0, 2.0]), np.array([10.0, 5.0, 1.0]))},
        source={"run_dir": "in-memory"},
    )
    path = save_bundle(bundle, tmp_path_factory.mktemp("b") / "bundle")
    return model, path


def _outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {task: model(x, task) for task, x in example_inputs().items()}


def test_loaded_bundle_reproduces_outputs_exactly(saved: tuple) -> None:
    # Prepare
    model, path = saved
    # Execute
    loaded = load_bundle(path)
    # Assert
    want, got = _outputs(model), _outputs(loaded.model)
    assert loaded.model.tasks == model.tasks
    assert loaded.model.foundation_hash == model.foundation_hash
    for task in want:
        assert torch.equal(want[task], got[task]), task
    assert loaded.tasks["ct_seg"].synthetic and not loaded.tasks["surv"].synthetic
    assert loaded.router["blob_cls"].count == 7
    np.testing.assert_array_equal(loaded.tasks["surv"].feature_std, [10.0, 5.0, 1.0])


def test_loaded_bundle_reproduces_outputs_in_a_fresh_process(saved: tuple, tmp_path: Path) -> None:
    # Prepare
    model, path = saved
    inputs = example_inputs()
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    script = (
        "import sys, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from unicon_core.inference.bundle import load_bundle\n"
        "torch.set_num_threads(1)\n"
        "b = load_bundle(sys.argv[1])\n"
        "xs = load_file(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    save_file({t: b.model(x, t).contiguous() for t, x in xs.items()}, sys.argv[3])\n"
    )
    # Execute
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(path),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "out.safetensors"),
        ],
        check=True,
        cwd=ROOT,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    # Assert
    got = load_file(str(tmp_path / "out.safetensors"))
    for task, want in _outputs(model).items():
        assert torch.equal(want, got[task]), task


def test_manifest_describes_tasks_backbone_and_preprocessing(saved: tuple) -> None:
    model, path = saved
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["backbone"]["hash"] == model.foundation_hash
    assert manifest["task_order"] == [s.name for s in SPECS]
    assert manifest["tasks"]["ct_seg"]["synthetic"] is True
    assert manifest["tasks"]["ct_seg"]["trained_on"][0]["site"] == "ct_seg_site"
    assert manifest["tasks"]["blob_cls"]["provenance"] == "real"
    assert manifest["preprocess"]["spatial"] == "resize"
    assert set(manifest["files"]) == {FOUNDATION_FILE, SKILLS_FILE, "router.safetensors"}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: (p / SKILLS_FILE).write_bytes((p / SKILLS_FILE).read_bytes()[:-8] + b"x" * 8),
            "skills.safetensors is corrupt",
        ),
        (lambda p: (p / FOUNDATION_FILE).unlink(), "missing foundation.safetensors"),
        (lambda p: (p / MANIFEST).write_text("{not json"), "not valid JSON"),
        (
            lambda p: (p / MANIFEST).write_text(
                json.dumps({"format": "unicon-bundle", "format_version": 99})
            ),
            "format_version 99",
        ),
        (lambda p: (p / MANIFEST).unlink(), "has no manifest.json"),
    ],
)
def test_damaged_bundle_is_refused_with_a_clear_error(
    saved: tuple, tmp_path: Path, damage, message: str
) -> None:
    # Prepare
    path = _copy(saved[1], tmp_path / "b")
    damage(path)
    # Execute / Assert
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_skill_that_does_not_fit_its_spec_is_named(saved: tuple, tmp_path: Path) -> None:
    # Prepare: a consistent file (hash updated) whose surv skill lost a tensor
    import hashlib

    path = _copy(saved[1], tmp_path / "b")
    skills = load_file(str(path / SKILLS_FILE))
    dropped = next(k for k in skills if k.startswith("surv.head"))
    del skills[dropped]
    save_file(skills, str(path / SKILLS_FILE))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][SKILLS_FILE] = hashlib.sha256((path / SKILLS_FILE).read_bytes()).hexdigest()
    (path / MANIFEST).write_text(json.dumps(manifest))
    # Execute / Assert
    with pytest.raises(BundleError, match=r"task 'surv'.*missing keys"):
        load_bundle(path)


def test_external_foundation_is_referenced_and_its_hash_checked(tmp_path: Path) -> None:
    # Prepare
    base = tiny_model(SPECS[:1])
    ckpt = tmp_path / "foundation.safetensors"
    save_foundation(base, ckpt)
    from dataclasses import replace

    from unicon_core.model import UniconModel

    model = UniconModel(replace(base.cfg, checkpoint=str(ckpt)), seed=0)
    model.add_task(SPECS[0])
    model.load_skill_state_dict("ct_seg", base.skill_state_dict("ct_seg"))
    path = save_bundle(
        bundle_from_model(model, trained_on(model)), tmp_path / "b", embed_foundation=False
    )
    assert not (path / FOUNDATION_FILE).exists()
    x = example_inputs()["ct_seg"]
    assert torch.equal(load_bundle(path).model(x, "ct_seg"), model.eval()(x, "ct_seg"))
    # Execute: replace the checkpoint by another backbone
    save_foundation(UniconModel(base.cfg, seed=5), ckpt)
    # Assert
    with pytest.raises(BundleError, match="trained on"):
        load_bundle(path)


def test_bundle_refuses_a_non_empty_target_and_missing_provenance(tmp_path: Path) -> None:
    model = tiny_model(SPECS[:1])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(BundleError, match="not an empty folder"):
        save_bundle(bundle_from_model(model, trained_on(model)), tmp_path / "full")
    with pytest.raises(ValueError, match=r"no site for tasks \['ct_seg'\]"):
        bundle_from_model(model, {})
