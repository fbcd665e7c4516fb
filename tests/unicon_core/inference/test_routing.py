"""Routing: questions map to task kinds, inputs to the skills that fit them, and the learned
router (federated prototypes) tells apart skills that fit the same input shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.unicon_core.inference._tiny import (
    SPECS,
    blob_image,
    tiny_model,
    tissue_image,
    trained_on,
    write_nifti,
)
from unicon_core.config import TaskKind
from unicon_core.data.dataset import ImageSiteDataset
from unicon_core.inference.export import bundle_from_model
from unicon_core.inference.inputs import InputRef, LoadedInput
from unicon_core.inference.predict import Predictor
from unicon_core.inference.prototypes import (
    DESCRIPTOR_LENGTH,
    Prototype,
    aggregate_prototypes,
    nearest_prototype_scores,
    site_prototype,
)
from unicon_core.inference.routing import (
    RouteMethod,
    RoutingError,
    kind_from_question,
    route,
)

SPEC = {s.name: s for s in SPECS}


def image(array: np.ndarray, *names: str) -> LoadedInput:
    paths = [Path(n) for n in names] or [Path("img.nii.gz")]
    return LoadedInput(ref=InputRef(paths[0].name, paths), array=array, affine=np.eye(4))


def row(**cells: str) -> LoadedInput:
    ref = InputRef("r1", [Path("rows.csv")], row=dict(cells), row_number=1)
    return LoadedInput(ref=ref, row=dict(cells), columns=list(cells))


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("segment the lesion", TaskKind.SEGMENTATION),
        ("Please delineate the tumour", TaskKind.SEGMENTATION),
        ("classify this scan", TaskKind.CLASSIFICATION),
        ("Detect a tumour?", TaskKind.CLASSIFICATION),
        ("diagnosis please", TaskKind.CLASSIFICATION),
        ("what is the prognosis", TaskKind.SURVIVAL),
        ("survival?", TaskKind.SURVIVAL),
        ("risk of relapse", TaskKind.SURVIVAL),
    ],
)
def test_question_words_give_the_task_kind(question: str, kind: TaskKind) -> None:
    assert kind_from_question(question) is kind


@pytest.mark.parametrize("question", ["what is this", "segment and classify it"])
def test_question_naming_no_or_several_kinds_is_refused(question: str) -> None:
    with pytest.raises(ValueError, match="question"):
        kind_from_question(question)


def test_segment_on_a_ct_pet_pair_activates_the_ct_pet_segmentation_skill() -> None:
    pair = image(np.zeros((2, 9, 9, 9), np.float32), "p_ct.nii.gz", "p_pet.nii.gz")
    decision = route(SPEC, pair, question="segment the lesions")
    assert decision.task == "ctpet_seg"
    assert decision.method is RouteMethod.ONLY_CANDIDATE
    assert "segmentation" in decision.reason


def test_shape_channels_and_modality_narrow_the_candidates() -> None:
    assert route(SPEC, image(np.zeros((1, 9, 9, 9), np.float32))).task == "ct_seg"
    assert route(SPEC, row(age="1", size="2", grade="3", other="x")).task == "surv"
    assert route(SPEC, image(np.zeros((1, 20, 20), np.float32)), question="classify").task == (
        "blob_cls"
    )


@pytest.mark.parametrize(
    ("item", "task", "message"),
    [
        (image(np.zeros((1, 20, 20), np.float32), "scan.png"), "ct_seg", r"scan\.png.*3D"),
        (
            image(np.zeros((1, 8, 8, 8), np.float32), "ct.nii.gz"),
            "ctpet_seg",
            r"ct\.nii\.gz.*2-chan",
        ),
        (row(age="1"), "surv", r"rows\.csv row 1.*\['size', 'grade'\]"),
        (image(np.zeros((1, 8, 8, 8), np.float32), "v.nii.gz"), "nope", "no task 'nope'"),
    ],
)
def test_explicit_task_that_does_not_fit_names_the_file(
    item: LoadedInput, task: str, message: str
) -> None:
    with pytest.raises(RoutingError, match=message):
        route(SPEC, item, task=task)


def test_ambiguous_input_without_router_asks_for_a_task() -> None:
    with pytest.raises(RoutingError, match=r"blob_cls.*tissue_seg.*no learned router"):
        route(SPEC, image(np.zeros((1, 20, 20), np.float32), "a.png"))
    with pytest.raises(RoutingError, match="no skill in the bundle can take it"):
        route(SPEC, image(np.zeros((4, 20, 20), np.float32), "rgba.png"))


def _site_dataset(folder: Path, spec_name: str, arrays: list[np.ndarray]) -> ImageSiteDataset:
    """A site dataset over NIfTI files written from ``arrays`` (what a Flower client holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, array in enumerate(arrays):
        write_nifti(folder / f"{i}.nii.gz", array, np.diag([0.8, 0.8, 1.0, 1.0]))
        rows.append({"image": f"{i}.nii.gz"})
    spec = SPEC[spec_name]
    return ImageSiteDataset(
        folder, folder.name, rows, list(range(1, len(rows) + 1)), spec, transform=lambda d: d
    )


def test_aggregated_site_prototypes_equal_the_pooled_statistic(tmp_path: Path) -> None:
    # Prepare
    model = tiny_model([SPEC["blob_cls"]])
    rng = np.random.default_rng(0)
    images = [blob_image(rng) for _ in range(10)]
    # Execute
    v1, n1 = site_prototype(model, _site_dataset(tmp_path / "a", "blob_cls", images[:3]))
    v2, n2 = site_prototype(model, _site_dataset(tmp_path / "b", "blob_cls", images[3:]))
    pooled = aggregate_prototypes([("blob_cls", v1, n1), ("blob_cls", v2, n2)])["blob_cls"]
    whole, n = site_prototype(model, _site_dataset(tmp_path / "c", "blob_cls", images))
    # Assert
    assert (n1, n2, pooled.count) == (3, 7, n)
    assert len(whole) == 2 * DESCRIPTOR_LENGTH
    np.testing.assert_allclose(pooled.as_vector(), whole, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="empty"):
        site_prototype(model, _site_dataset(tmp_path / "d", "blob_cls", []))
    with pytest.raises(KeyError, match="unknown task 'tissue_seg'"):
        site_prototype(model, _site_dataset(tmp_path / "e", "tissue_seg", images[:1]))
    with pytest.raises(ValueError, match="differ in shape"):
        aggregate_prototypes([("t", np.zeros(4), 1), ("t", np.zeros(6), 1)])


def test_learned_router_picks_the_right_skill_on_held_out_inputs(tmp_path: Path) -> None:
    # Prepare: two 2D MRI skills of the same input shape; two sites per task send prototypes
    model = tiny_model([SPEC["blob_cls"], SPEC["tissue_seg"]])
    bundle = bundle_from_model(model, trained_on(model))
    predictor = Predictor(bundle)
    rng = np.random.default_rng(1)
    makers = {"blob_cls": blob_image, "tissue_seg": tissue_image}
    reports = []
    for task, make in makers.items():
        for site in ("a", "b"):
            data = _site_dataset(tmp_path / f"{task}_{site}", task, [make(rng) for _ in range(12)])
            reports.append((task, *site_prototype(model, data)))
    bundle.router = aggregate_prototypes(reports)
    # Execute
    hits = {
        task: [predictor.decide(image(make(rng)[None], "x.png")).task == task for _ in range(10)]
        for task, make in makers.items()
    }
    # Assert
    for task, ok in hits.items():
        assert np.mean(ok) >= 0.9, (task, ok)
    decision = predictor.decide(image(blob_image(rng)[None], "x.png"))
    assert decision.method is RouteMethod.LEARNED
    assert set(decision.scores) == {"blob_cls", "tissue_seg"}
    # the question still restricts the router to skills of the asked kind
    assert predictor.decide(image(blob_image(rng)[None]), question="segment").task == "tissue_seg"


def test_prototype_validates_its_vectors() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        Prototype(np.zeros(3), np.zeros(4), 1)
    with pytest.raises(ValueError, match="count"):
        Prototype(np.zeros(3), np.zeros(3), 0)
    with pytest.raises(ValueError, match="has length 3"):
        nearest_prototype_scores({"t": Prototype(np.zeros(3), np.ones(3), 2)}, np.zeros(4), ["t"])
