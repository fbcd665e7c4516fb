"""The backbone benchmark's pure helpers: its section lands in BENCHMARKS.md, AUC intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulations.backbones_bench import bootstrap_auc, insert_section


def test_section_is_appended_then_replaced(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n# Other benchmarks\n\n## routing\n\nr\n")
    insert_section(md, "## backbones\n\nfirst\n")
    assert md.read_text().endswith("## backbones\n\nfirst\n")
    md.write_text(md.read_text() + "\n## cold start\n\nc\n")
    insert_section(md, "## backbones\n\nsecond\n")
    text = md.read_text()
    assert "first" not in text and "second" in text
    assert text.index("## routing") < text.index("## backbones") < text.index("## cold start")


def test_bootstrap_auc_brackets_the_point_estimate() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    score = y + rng.normal(0, 1.0, size=200)
    auc, lo, hi = bootstrap_auc(y, score, reps=200)
    assert lo < auc < hi and 0.6 < auc < 0.9
    assert bootstrap_auc(y, y.astype(float), reps=50)[0] == 1.0
