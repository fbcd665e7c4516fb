"""Bring your own hospital, end to end (issue #13): plain folders of PNG/JPEG files (some RGB)
-> ``init-site`` -> ``validate`` -> ``train --bundle`` -> ``federate`` (``flwr run``, two
training sites and one evaluation-only site, starting from the trained skill) -> ``export`` ->
``predict`` on the raw files, which must reproduce the federation's held-out metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from unicon_flower.cli import app

pytestmark = pytest.mark.slow
TASK = "scans"
RUNNER = CliRunner()


def write_hospital(root: Path, seed: int, n: int = 24) -> Path:
    """``root/<class>/*.png|jpg``: noise, tumours a bright square; every third file RGB JPEG
    (lossless PNG for the grey ones), sizes vary; plus a file init-site must skip."""
    rng = np.random.default_rng(seed)
    for label in ("healthy", "tumour"):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(20, 36, 2))
            a = rng.integers(0, 90, (h, w)).astype(np.uint8)
            if label == "tumour":
                a[h // 4 : h // 2, w // 4 : w // 2] = 240
            if i % 3 == 0:
                Image.fromarray(np.stack([a, a // 2, a // 3], -1)).save(folder / f"{i}.jpg")
            else:
                Image.fromarray(a).save(folder / f"{i}.png")
    (root / "notes.txt").write_text("not an image\n")
    return root


def invoke(*args: str) -> str:
    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"unicon {args[0]} exit {result.exit_code}:\n{result.output}"
    return result.output


def rows_of(site: Path) -> list[dict[str, str]]:
    with (site / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def predicted_auc(out: Path, site: Path, src: Path, split: str = "test") -> tuple[float, int]:
    """``predict`` on the raw source files of ``site``'s ``split`` rows; their AUC and n."""
    from sklearn.metrics import roc_auc_score

    rows = [r for r in rows_of(site) if r["split"] == split]
    files = [src / r["meta_source"] for r in rows]
    invoke("predict", "--bundle", out / "bundle", "--out", out / f"preds_{site.name}",
           "--task", TASK, "--device", "cpu", *files)
    summary = json.loads((out / f"preds_{site.name}" / "summary.json").read_text())
    by_input = {p["input"][0]: p["result"]["probabilities"][1] for p in summary["predictions"]}
    probs = [by_input[str(path)] for path in files]
    labels = [int(r["label"]) for r in rows]
    return float(roc_auc_score(labels, probs)), len(rows)


def test_byod_end_to_end(tmp_path: Path) -> None:
    # Prepare: two training hospitals and one external validation hospital, plain folders
    sources = {name: write_hospital(tmp_path / "raw" / name, seed)
               for seed, name in enumerate(("hosp_a", "hosp_b", "hosp_c"))}
    sites = {name: tmp_path / "sites" / name for name in sources}

    # Execute: init-site (inferred task, RGB -> grey declared), validate
    for name, src in sources.items():
        extra = ["--evaluation-only"] if name == "hosp_c" else []
        text = invoke("init-site", src, sites[name], "--task", TASK, "--size", "32",
                      "--size", "32", "--seed", "1", *extra)
        assert "notes.txt: not inside a class subfolder" in text
        assert "to_gray" in text
        invoke("validate", sites[name])
    meta = json.loads((sites["hosp_a"] / "site.json").read_text())
    assert meta["task"]["preprocess"]["to_gray"] is True
    assert meta["labels"] == ["healthy", "tumour"]
    assert {r["split"] for r in rows_of(sites["hosp_c"])} == {"test"}

    fast = ["backbone=tiny", "train.max_steps=4", "train.batch_size=8"]
    invoke("train", sites["hosp_a"], "--bundle", tmp_path / "skill_a", *fast)
    runs = tmp_path / "runs"
    dirs = ",".join(str(sites[n]) for n in ("hosp_a", "hosp_b", "hosp_c"))
    invoke("federate", f"federation.site_dirs=[{dirs}]", "federation.rounds=1",
           f"federation.runs_dir={runs}", f"federation.init_skill={tmp_path / 'skill_a'}",
           "federation.plots=false", "federation.wandb=disabled", "federation.node_wait_s=120",
           *fast)
    run_dir = (runs / "latest").resolve()
    results = json.loads((run_dir / "results.json").read_text())
    invoke("export", run_dir, tmp_path / "bundle")

    # Assert: the run is named after what it runs, nothing of the demo
    assert "demo" not in run_dir.name and "demo" not in json.dumps(results)
    assert "demo" not in (run_dir / "config.yaml").read_text()
    assert results["experiment"] == f"{TASK}_3sites"
    # the evaluation-only site never trained and is reported apart, with its n
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    for row in rounds:
        entry = row["sites"]["hosp_c"]
        assert "train" not in entry and entry.get("status") == "evaluation-only"
    external = results["external_validation"]["hosp_c"]
    assert external["n"] == len(rows_of(sites["hosp_c"]))
    assert "hosp_c" not in results["tasks"][TASK]["per_site"]
    # predict on the raw files reproduces the federation's held-out metric on the same rows
    for name in ("hosp_a", "hosp_b"):
        auc, n = predicted_auc(tmp_path, sites[name], sources[name])
        assert auc == pytest.approx(results["tasks"][TASK]["per_site"][name], abs=1e-6)
        assert results["tasks"][TASK]["per_site_n"][name] == n  # n and a 95 % CI per site
        low, high = results["tasks"][TASK]["per_site_ci95"][name] or (auc, auc)
        assert low <= auc <= high
    auc, n = predicted_auc(tmp_path, sites["hosp_c"], sources["hosp_c"])
    assert (auc, n) == (pytest.approx(external["value"], abs=1e-6), external["n"])
