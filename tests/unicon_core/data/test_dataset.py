"""Opening a site: validated, items keyed by BatchKey, collatable, tabular z-scored on train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unicon_core.data import META_KEY, SiteValidationError, open_site
from unicon_core.data.readers import read_image, write_nifti
from unicon_core.data.transforms import PreprocessConfig
from unicon_core.keys import BatchKey

from .sites import AFFINE, CTPET_SPEC, cls_site, ctpet_site, read_rows, surv_site


def test_ctpet_items_and_collate_with_meta(tmp_path: Path) -> None:
    site = open_site(ctpet_site(tmp_path / "s", n=6))
    assert site.name == "tiny" and site.synthetic and site.task_spec == CTPET_SPEC
    assert site.split_sizes() == {"train": 2, "val": 2, "test": 2}
    batch = next(iter(DataLoader(site.dataset("train", train=True, with_meta=True), batch_size=2)))
    assert batch[BatchKey.INPUT.value].shape == (2, 2, 8, 8, 8)
    assert batch[BatchKey.INPUT.value].dtype == torch.float32
    assert batch[BatchKey.MASK.value].shape == (2, 1, 8, 8, 8)
    assert batch[BatchKey.MASK.value].dtype == torch.int64
    assert batch[BatchKey.TIME.value].dtype == torch.float32
    assert batch[BatchKey.EVENT.value].tolist() == [0.0, 1.0]
    assert batch[BatchKey.ID.value] == ["tiny:1", "tiny:4"]
    torch.testing.assert_close(batch[META_KEY]["affine"][0], torch.as_tensor(AFFINE))
    assert batch[META_KEY]["spacing"][0].tolist() == [2.0, 2.0, 3.0]


def test_classification_items_resized_to_task_size(tmp_path: Path) -> None:
    site = open_site(cls_site(tmp_path / "s"))
    item = site.dataset("val")[0]
    assert set(item) == {"input", "label", "id"}
    assert item["input"].shape == (1, 16, 16)
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0


def test_tabular_features_use_train_statistics(tmp_path: Path) -> None:
    root = surv_site(tmp_path / "s")
    site = open_site(root)
    rows = read_rows(root)
    train = np.array([[float(r["age"]), float(r["size"])] for r in rows if r["split"] == "train"])
    val_rows = [r for r in rows if r["split"] == "val"]
    mean, std = train.mean(0), train.std(0)
    val = site.dataset("val")
    expected = (np.array([float(val_rows[0]["age"]), float(val_rows[0]["size"])]) - mean) / std
    np.testing.assert_allclose(val[0]["input"].numpy(), expected, rtol=1e-5)
    train_inputs = torch.stack([site.dataset("train")[i]["input"] for i in range(len(train))])
    assert torch.allclose(train_inputs.mean(0), torch.zeros(2), atol=1e-5)
    batch = next(iter(DataLoader(val, batch_size=3)))
    assert batch["input"].shape == (3, 2) and batch["time"].dtype == torch.float32


def test_augmented_items_are_reproducible(tmp_path: Path) -> None:
    site = open_site(cls_site(tmp_path / "s"))
    first, second = site.dataset("train", train=True), site.dataset("train", train=True)
    assert torch.equal(first[0]["input"], second[0]["input"])


def test_open_site_raises_with_all_problems(tmp_path: Path) -> None:
    root = ctpet_site(tmp_path / "s")
    (root / "img/p0_ct.nii.gz").unlink()
    (root / "masks/p2.nii.gz").unlink()
    with pytest.raises(SiteValidationError) as info:
        open_site(root)
    assert [p.row for p in info.value.problems] == [1, 3]


def test_unknown_split_name_raises(tmp_path: Path) -> None:
    site = open_site(cls_site(tmp_path / "s"))
    with pytest.raises(ValueError, match="split"):
        site.dataset("holdout")


def _store_flipped(site: Path) -> None:
    """Rewrite every NIfTI of a site with its first two axes reversed and the affine to match
    (the same world content, stored LPS-like as DICOM-derived files often are)."""
    for path in sorted(site.rglob("*.nii.gz")):
        image = read_image(path)
        n0, n1 = image.spatial_shape[:2]
        flip = np.array([[-1.0, 0, 0, n0 - 1], [0, -1.0, 0, n1 - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
        dtype = "uint8" if path.parent.name == "masks" else "float32"
        write_nifti(path, image.array[0, ::-1, ::-1], image.affine @ flip, dtype=dtype)


def test_site_stored_lps_gives_the_items_of_the_ras_site(tmp_path: Path) -> None:
    ras = open_site(ctpet_site(tmp_path / "ras"))
    lps_root = ctpet_site(tmp_path / "lps")
    _store_flipped(lps_root)
    lps = open_site(lps_root)
    assert lps.cache and all(not np.allclose(im.affine, AFFINE) for im in lps.cache.values())
    before = {k: im.array.copy() for k, im in lps.cache.items()}
    a, b = ras.dataset("train", with_meta=True)[0], lps.dataset("train", with_meta=True)[0]
    assert torch.equal(a["input"], b["input"]) and torch.equal(a["mask"], b["mask"])
    # meta: the file's own affine (input space) and the RAS grid the model saw
    assert not torch.allclose(b[META_KEY]["affine"], torch.as_tensor(AFFINE))
    torch.testing.assert_close(b[META_KEY]["geometry"]["affine"], torch.as_tensor(AFFINE))
    assert b[META_KEY]["geometry"]["shape"].tolist() == [8, 8, 8]
    for key, array in before.items():  # the validated cache is shared, never modified
        np.testing.assert_array_equal(lps.cache[key].array, array)


def test_site_spacing_is_applied_to_image_and_mask(tmp_path: Path) -> None:
    site = open_site(ctpet_site(tmp_path / "s"), preprocess=PreprocessConfig(spacing=(4, 4, 4)))
    item = site.dataset("test", with_meta=True)[0]
    # 8 voxels at 2, 2, 3 mm: extents 14, 14, 21 mm -> 4, 4, 6 voxels at 4 mm, then resized
    assert item[META_KEY]["geometry"]["shape"].tolist() == [4, 4, 6]
    assert item["input"].shape == (2, 8, 8, 8) and item["mask"].shape == (1, 8, 8, 8)
    assert set(item["mask"].unique().tolist()) <= {0, 1}


def test_evaluation_items_are_kept_and_equal_to_fresh_ones(tmp_path: Path) -> None:
    # Prepare: a site's test split read twice through its memo, and once without it
    site = open_site(ctpet_site(tmp_path, n=6), CTPET_SPEC)
    first = site.dataset("test")
    calls = []
    pipeline = first.transform
    first.transform = lambda data: calls.append(1) or pipeline(data)  # type: ignore[assignment]

    # Execute
    once = [first[i] for i in range(len(first))]
    again = [first[i] for i in range(len(first))]
    fresh = site.dataset("test")
    fresh.memo = None
    plain = [fresh[i] for i in range(len(fresh))]

    # Assert: the pipeline ran once per item; kept items equal freshly computed ones
    assert len(calls) == len(first) > 0
    for a, b, c in zip(once, again, plain, strict=True):
        assert a.keys() == b.keys() == c.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                torch.testing.assert_close(b[key], c[key])
            else:
                assert a[key] == b[key] == c[key]
    # training and meta datasets never share items
    assert site.dataset("train", train=True).memo is None
    assert site.dataset("test", with_meta=True).memo is None
