"""The GPU bench's code path on the CPU (tiny models) and its section's wording."""

from __future__ import annotations

import json
import math
from pathlib import Path

from simulations import gpu_bench


def _row(mode: str, ms: float, gib: float, option: str = "") -> dict:
    return {"backbone": "net", "input": "8×8", "batch": 4, "mode": mode, "option": option,
            "ms_per_step": ms, "peak_gib": gib, "trained_params": 10, "model_params": 100}


def _result(rows: list[dict]) -> dict:
    machine = {"device": "GPU X", "torch": "2", "cuda": "13", "commit": "abc", "date": "today"}
    return {"machine": machine, "device": "cuda", "weights": None, "quick": False, "steps": 20,
            "rows": rows}


def test_quick_run_on_the_cpu_then_render_into_benchmarks(tmp_path: Path) -> None:
    # Prepare: a BENCHMARKS file with another section that must survive
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## other\n\nkept\n")
    run = tmp_path / "gpu.json"
    # Execute
    assert gpu_bench.main(["--device", "cpu", "--quick", "--weights", "none", "--steps", "1",
                           "--json", str(run)]) == 0
    assert gpu_bench.main(["--render", str(run), "--out", str(out), "--note", "why"]) == 0
    # Assert: every case ran through train_task; LoRA trains less than full fine-tuning
    rows = json.loads(run.read_text())["rows"]
    assert len(rows) == len(gpu_bench.cases(None, quick=True)) == 7
    assert all(r["ms_per_step"] > 0 and math.isnan(r["peak_gib"]) for r in rows)
    full = {r["backbone"]: r["trained_params"] for r in rows if r["mode"] == "full"}
    assert all(r["trained_params"] < full[r["backbone"]] <= r["model_params"]
               for r in rows if r["mode"] == "lora")
    text = out.read_text()
    assert "## other\n\nkept" in text and text.count("## gpu") == 1
    assert "**Quick run:**" in text and "randomly initialised" in text and "Note: why" in text
    assert text.count("| I3ResNet-152 (tiny) |") == 5


def test_aim_is_met_only_where_lora_is_no_slower_and_smaller() -> None:
    rows = [_row("full", 100, 4.0), _row("lora", 90, 2.0), _row("lora", 101, 1.0, "slow"),
            _row("lora", 80, 5.0, "big")]
    (line,) = gpu_bench._ratio_lines(rows)
    assert "LoRA time 0.90×, memory 0.50× (aim met)" in line
    assert "LoRA (slow) time 1.01×, memory 0.25×;" in line
    assert line.endswith("LoRA (big) time 0.80×, memory 1.25×.")


def test_a_row_that_ran_out_of_memory_is_shown_not_dropped() -> None:
    oom = {"backbone": "net", "input": "8×8", "mode": "full", "option": "",
           "error": "out of memory: CUDA out of memory"}
    text = gpu_bench.render(_result([_row("lora", 90, 2.0), oom]))
    assert "| net | 8×8 | full | — | | out of memory: CUDA out of memory | |" in text
    assert "on GPU X (today, commit abc" in text
