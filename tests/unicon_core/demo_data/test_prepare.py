"""The whole demo preparation: every site valid and marked real/synthetic; a rerun reuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from unicon_core.commands.data import prepare_demo_command, validate_command
from unicon_core.data import open_site
from unicon_core.demo_data.prepare import prepare_demo

EXPECTED = {
    "ct_a": ("ct_seg", True, [32, 32, 32], 1),
    "ct_b": ("ct_seg", True, [32, 32, 32], 1),
    "ctpet_a": ("ctpet_seg", True, [32, 32, 32], 2),
    "gbsg2_a": ("gbsg2_surv", False, [8], 1),
    "gbsg2_b": ("gbsg2_surv", False, [8], 1),
    "brain_axial": ("tissue_seg", False, [64, 64], 1),
    "brain_coronal": ("tissue_seg", False, [64, 64], 1),
    "br35h_a": ("tumour_cls", False, [64, 64], 1),
    "br35h_b": ("tumour_cls", False, [64, 64], 1),
    "br35h_c": ("tumour_cls", False, [64, 64], 1),
    "br35h_ext": ("tumour_cls", False, [64, 64], 1),
}


def test_prepare_demo_builds_valid_sites_and_reuses_them(demo_dir: Path) -> None:
    # Execute: demo_dir already holds Br35H; the rest is built here
    report = prepare_demo(demo_dir)
    # Assert
    assert set(report) - {"_seconds"} == set(EXPECTED)
    assert report["_seconds"] < 300
    for name, (task, synthetic, size, channels) in EXPECTED.items():
        site = open_site(demo_dir / name)
        assert (site.task_spec.name, site.synthetic) == (task, synthetic)
        assert site.task_spec.input_size == size and site.task_spec.channels == channels
        sizes = site.split_sizes()  # the external validation site holds test rows only
        assert all(sizes.values()) or (site.metadata.evaluation_only and sizes["test"])
        assert report[name]["built"] == (not name.startswith("br35h"))
    assert validate_command(demo_dir / "ct_a") == 0
    start = time.perf_counter()
    again = prepare_demo(demo_dir)
    assert not any(entry["built"] for k, entry in again.items() if k != "_seconds")
    assert time.perf_counter() - start < 10
    assert prepare_demo_command(demo_dir, force=False) == 0


def test_rerun_reuses_and_force_rebuilds(tmp_path: Path) -> None:
    first = prepare_demo(tmp_path, only=["gbsg2"])
    assert first["gbsg2_a"]["built"] and not first["gbsg2_a"]["synthetic"]
    assert first["gbsg2_a"]["rows"] + first["gbsg2_b"]["rows"] == 686
    assert not prepare_demo(tmp_path, only=["gbsg2"])["gbsg2_a"]["built"]
    assert prepare_demo(tmp_path, only=["gbsg2"], force=True)["gbsg2_b"]["built"]
    with pytest.raises(ValueError, match="unknown demo groups"):
        prepare_demo(tmp_path, only=["xray"])


def test_validate_command_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prepare_demo(tmp_path, only=["gbsg2"])
    site = tmp_path / "gbsg2_a"
    assert validate_command(site) == 0
    lines = (site / "manifest.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("time")] = "-1"
    lines[3] = ",".join(cells)
    (site / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert validate_command(site) == 1
    out = capsys.readouterr().out
    assert "  - time: 1 out-of-range value '-1' (row 3) — survival times must be > 0" in out
    assert validate_command(site, show_all=True) == 1
    assert "manifest.csv row 3 (time): non-positive survival time '-1'" in capsys.readouterr().out


def test_phantom_sites_from_an_older_generator_are_rebuilt(tmp_path: Path) -> None:
    import json

    from unicon_core.demo_data.phantoms import SOURCE

    first = prepare_demo(tmp_path, only=["phantoms"])
    assert all(first[n]["built"] for n in ("ct_a", "ct_b", "ctpet_a"))
    meta = tmp_path / "ct_b" / "site.json"
    data = json.loads(meta.read_text())
    assert data["source"] == SOURCE
    data["source"] = "unicon_core.demo_data.phantoms (seeded generator)"  # version 1
    meta.write_text(json.dumps(data))
    again = prepare_demo(tmp_path, only=["phantoms"])
    assert again["ct_b"]["built"] and not again["ct_a"]["built"] and not again["ctpet_a"]["built"]
    assert json.loads(meta.read_text())["source"] == SOURCE
