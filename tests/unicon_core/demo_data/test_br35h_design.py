"""The BENCHMARKS.md section on the Br35H design is computed from the prepared sites."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from simulations.br35h_design import insert_section, load, render, width_auc


def test_section_reports_no_leak_and_every_split(demo_dir: Path, tmp_path: Path) -> None:
    frame = load(demo_dir)
    section = render(frame)
    assert "prepared-image hash 0; source groups 0" in section
    assert "also held by a training site: 0" in section
    assert section.count("| br35h_") == frame.groupby(["site", "split"]).ngroups
    assert "| original width alone, AUC |" in section
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# B\n\n## other\nkept\n")
    insert_section(bench, section)
    insert_section(bench, section)  # replaced, not repeated
    assert bench.read_text().count("## Br35H evaluation design") == 1
    assert "kept" in bench.read_text()


def test_width_auc_reads_the_direction_and_needs_both_labels() -> None:
    wide_is_tumour = pd.DataFrame({"label": [0, 0, 1, 1], "meta_orig_width": [10, 20, 30, 40]})
    assert width_auc(wide_is_tumour) == 1.0
    assert width_auc(wide_is_tumour.assign(label=[1, 1, 0, 0])) == 0.0
    assert math.isnan(width_auc(wide_is_tumour.assign(label=1)))
