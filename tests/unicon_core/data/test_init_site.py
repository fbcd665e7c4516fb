"""``init_site``: plain folders and CSVs become valid site folders; what is inferred, what is
skipped (and why) and the split are checked on tiny files written here."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unicon_core.data.init_site import InitOptions, InitSiteError, init_site
from unicon_core.data.manifest import read_site_json
from unicon_core.data.readers import write_nifti
from unicon_core.data.validate import validate_site


def class_folders(root: Path, n: int = 10, rgb_every: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for label in ("no", "yes"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 255, (12 + i, 16)).astype(np.uint8)
            if rgb_every and i % rgb_every == 0:
                Image.fromarray(np.stack([a, a // 2, a // 4], -1)).save(root / label / f"{i}.png")
            else:
                Image.fromarray(a).save(root / label / f"{i}.png")
    return root


def rows(site: Path, name: str = "manifest.csv") -> list[dict[str, str]]:
    with (site / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, header: list[str], data: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(data)
    return path


def test_class_folders_rgb_and_skipped(tmp_path: Path) -> None:
    # Prepare
    src = class_folders(tmp_path / "src")
    (src / "yes" / "broken.png").write_bytes(b"not a png")
    (src / "yes" / "notes.txt").write_text("x")
    (src / "loose.png").write_bytes(b"")
    (src / "no" / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    # Execute
    report = init_site(src, tmp_path / "site_a", InitOptions(task_name="tumour"))
    # Assert
    site = tmp_path / "site_a"
    assert validate_site(site) == []
    meta = read_site_json(site)
    assert meta.site == "site_a" and meta.labels == ["no", "yes"]
    assert meta.task.preprocess["to_gray"] is True and meta.task.preprocess["pad_square"]
    assert meta.task.input_size == [64, 64] and meta.task.channels == 1
    skipped = {r["what"]: r["why"] for r in rows(site, "skipped.csv")}
    assert set(skipped) == {"yes/broken.png", "yes/notes.txt", "loose.png", "no/scan.dcm"}
    assert "dcm2niix" in skipped["no/scan.dcm"]
    assert "unreadable" in skipped["yes/broken.png"]
    assert len(report.rows) == 20 and "yes/broken.png" in report.text()
    assert {r["meta_source"] for r in report.rows} >= {"no/0.png", "yes/9.png"}


def test_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    src = class_folders(tmp_path / "src", n=20, rgb_every=0)
    a = init_site(src, tmp_path / "a", InitOptions(seed=3)).rows
    b = init_site(src, tmp_path / "b", InitOptions(seed=3)).rows
    c = init_site(src, tmp_path / "c", InitOptions(seed=4)).rows
    assert [r["split"] for r in a] == [r["split"] for r in b]
    assert [r["split"] for r in a] != [r["split"] for r in c]
    per = Counter((r["label"], r["split"]) for r in a)
    assert per[("0", "test")] == per[("1", "test")] == 3  # 15 % of 20 per class
    assert read_site_json(tmp_path / "a").task.preprocess["to_gray"] is False  # grey files


def test_evaluation_only_site(tmp_path: Path) -> None:
    src = class_folders(tmp_path / "src", n=4)
    init_site(src, tmp_path / "ext", InitOptions(role="evaluation"))
    assert {r["split"] for r in rows(tmp_path / "ext")} == {"test"}
    assert read_site_json(tmp_path / "ext").evaluation_only
    assert validate_site(tmp_path / "ext") == []


def test_images_and_masks_segmentation_3d(tmp_path: Path) -> None:
    src = tmp_path / "seg"
    for i in range(6):
        vol = np.random.default_rng(i).normal(size=(8, 8, 8)).astype(np.float32)
        mask = np.zeros((8, 8, 8), np.uint8)
        mask[2:5, 2:5, 2:5] = 1 + i % 2
        write_nifti(src / "images" / f"p{i}.nii.gz", vol)
        write_nifti(src / "masks" / f"p{i}.nii.gz", mask, dtype="uint8")
    write_nifti(src / "images" / "lonely.nii.gz", np.zeros((8, 8, 8), np.float32))
    report = init_site(src, tmp_path / "site", InitOptions(size=[8, 8, 8]))
    spec = report.metadata.task
    assert (spec.kind.value, spec.spatial_dims, spec.num_classes) == ("segmentation", 3, 3)
    assert report.skipped == [("images/lonely.nii.gz", "no mask named lonely.* in masks/")]
    assert validate_site(tmp_path / "site") == []


def test_clinical_survival_csv(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "cohort.csv",
        ["patient_id", "age", "smoker", "grade", "os_time", "dead"],
        [[f"p{i}", 40 + i, "yes" if i % 2 else "no", "G1" if i % 3 else f"G{i}",
          0 if i == 4 else 10 + i, i % 2] for i in range(30)]
        + [["p99", "", "no", "G1", 5, 1]],
    )
    report = init_site(path, tmp_path / "site", InitOptions())
    spec = report.metadata.task
    assert spec.kind.value == "survival" and spec.feature_names == ["age", "smoker"]
    skipped = dict(report.skipped)
    assert "not numeric" in skipped["column 'grade'"]
    assert "os_time '0'" in skipped["cohort.csv row 5"]
    assert skipped["cohort.csv row 31"] == "empty age"
    assert len(report.rows) == 29
    assert any("'smoker' coded 'no' -> 0" in line for line in report.inferred)
    assert validate_site(tmp_path / "site") == []


def test_clinical_labels_and_flags(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["x1", "x2", "outcome_txt"],
                     [[i, i * 2, "bad" if i % 2 else "good"] for i in range(20)])
    with pytest.raises(InitSiteError, match="no label column"):
        init_site(path, tmp_path / "s0", InitOptions())
    with pytest.raises(InitSiteError, match="no column 'nope'"):
        init_site(path, tmp_path / "s1", InitOptions(label_column="nope"))
    report = init_site(path, tmp_path / "s2",
                       InitOptions(label_column="outcome_txt", task_name="outcome"))
    assert report.metadata.labels == ["bad", "good"] and report.metadata.task.name == "outcome"
    assert validate_site(tmp_path / "s2") == []


def test_labels_csv_and_task_file(tmp_path: Path) -> None:
    src = class_folders(tmp_path / "imgs", n=6, rgb_every=0)
    files = sorted(src.rglob("*.png"))
    write_csv(src / "labels.csv", ["file", "diagnosis"],
              [[str(f.relative_to(src)), f.parent.name] for f in files] + [["gone.png", "no"]])
    task_file = tmp_path / "task.yaml"
    task_file.write_text("name: from_file\ninput_size: [32, 32]\n")
    report = init_site(src, tmp_path / "site", InitOptions(task_file=task_file))
    assert report.metadata.task.name == "from_file"
    assert report.metadata.task.input_size == [32, 32]
    assert report.skipped == [("labels.csv row 13", "file 'gone.png': no such file")]
    assert validate_site(tmp_path / "site") == []


def test_refuses_non_empty_out_and_unknown_layout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(InitSiteError, match="not empty"):
        init_site(class_folders(tmp_path / "src", n=2), out)
    (tmp_path / "flat").mkdir()
    with pytest.raises(InitSiteError, match="neither class subfolders"):
        init_site(tmp_path / "flat", tmp_path / "o2")


def test_feature_names_never_take_a_reserved_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", ["Split", "Mask %", "Age (y)", "label"],
                     [[i % 3, i % 5, 30 + i, i % 2] for i in range(20)])
    report = init_site(path, tmp_path / "s", InitOptions())
    assert report.metadata.task.feature_names == ["f_mask", "age_y"]
    assert any("'Mask %' -> 'f_mask'" in line for line in report.inferred)
    assert "reserved" in dict(report.skipped)["column 'Split'"]
    assert validate_site(tmp_path / "s") == []
