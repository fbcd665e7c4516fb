"""The report's formatting on a hand-made suite (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from simulations.report import fmt, mean_matrix, mean_std, write_markdown

NAN = math.nan


def _result(matrix, bwt) -> dict:
    return {"order": ["a", "b"], "matrix": matrix, "avg": 0.5, "bwt": bwt, "forgetting": -bwt,
            "wall_s": 1.0, "logs": [{"bytes_down_per_site_round": 10,
                                     "bytes_up_per_site_round": 10}] * 2}


def test_mean_std_and_fmt() -> None:
    # Execute / Assert
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert all(math.isnan(v) for v in mean_std([NAN]))
    assert fmt([0.5]) == "0.500 ± 0.000"
    assert fmt([NAN]) == "n/a"
    assert fmt(NAN) == "n/a"


def test_markdown_reports_goals_and_synthetic(tmp_path: Path) -> None:
    # Prepare
    iso = [_result([[0.8, 0.8], [NAN, 0.6]], 0.0)] * 2
    naive = [_result([[0.8, 0.5], [NAN, 0.6]], -0.3)] * 2
    full = [{**_result([[0.8, 0.8], [NAN, 0.6]], 0.0),
             "logs": [{"bytes_down_per_site_round": 1000, "bytes_up_per_site_round": 1000}] * 2}]
    suite = {
        "order": ["a", "b"], "stages": ["s0", "s1"], "synthetic": ["b"],
        "continual": {"isolated": iso, "naive_sequential": naive, "centralised": iso,
                      "local_only": iso, "full_fedavg": full},
        "foundation": [], "modality": [{"ct_zero_shot": 0.1, "ct_only": 0.5,
                                        "ctpet_expanded": 0.6, "ctpet_scratch": 0.4}],
        "adaptation": [{"lora": {"value": 0.7, "bytes_per_site_round": 5}}],
        "bytes": [{"backbone": "tiny", "task": "a", "skill_bytes": 10, "full_bytes": 1000,
                   "ratio": 0.01, "skill_params": 1, "backbone_params": 2}],
        "overhead": {"flwr_s": 13.0, "plain_s": 10.0, "ratio": 1.3, "sites": 2, "rounds": 1,
                     "local_steps": 1, "startup_s": 4.0, "query_s": 2.0, "rounds_s": 6.0,
                     "shutdown_s": 1.0, "rounds_ratio": 0.6},
        "meta": {"command": "cmd", "date": "today", "wall_s": 60, "machine": "2 cores",
                 "seeds": [0, 1], "rounds": 1, "local_steps": 1, "batch_size": 2, "lr": 0.1,
                 "backbone": "tiny", "run_dir": "/r", "adaptation_task": "a",
                 "stages": [{"name": "s0", "sites": ["x"], "expand": {}},
                            {"name": "s1", "sites": ["y"], "expand": {"b": "a"}}]},
    }
    # Execute
    text = write_markdown(suite, tmp_path / "B.md", [Path("p.png")])
    # Assert
    assert "exactly 0 for every seed" in text
    assert "b (SYNTHETIC)" in text
    assert "1/100.0 | met" in text  # the skill/full ratio measured in the runs
    assert "ratio **1.30×**" in text
    assert "| training + evaluation rounds | 6.0 | 46% |" in text
    assert "rounds alone take 0.60× the plain loop" in text
    assert (tmp_path / "B.md").read_text() == text
    from simulations.run_benchmarks import write_quick_section

    quick = write_quick_section(suite, tmp_path / "quick.md")
    assert "Wall time **1.0 min**, goal <= 10 min: met" in quick
    suite["meta"]["wall_s"] = 601
    assert "**MISSED**" in write_quick_section(suite, tmp_path / "quick.md")
    assert mean_matrix(iso)[0][1] == pytest.approx(0.8)


def test_other_sections_are_appended_verbatim_or_marked_not_measured(tmp_path) -> None:
    from simulations.run_benchmarks import assemble

    results = tmp_path / "results"
    results.mkdir()
    (results / "robustness.md").write_text("## Robustness\n\nmedian 92.7\n")
    suite = tmp_path / "suite.md"
    suite.write_text("# Benchmarks\n\nsuite table\n")
    out = tmp_path / "BENCHMARKS.md"
    from simulations import run_benchmarks

    original = run_benchmarks.append_sections
    try:
        run_benchmarks.append_sections = lambda o: original(o, results)  # type: ignore[assignment]
        assemble(suite, out)
    finally:
        run_benchmarks.append_sections = original  # type: ignore[assignment]
    text = out.read_text()
    assert text.startswith("# Benchmarks") and "suite table" in text
    assert "## Robustness\n\nmedian 92.7" in text
    assert "not measured: run `python -m simulations.routing_accuracy" in text
    assert "not measured: run `python -m simulations.cold_start_bench`" in text


@pytest.mark.slow
def test_seeds_in_worker_processes_give_the_numbers_of_one_process(tmp_path: Path) -> None:
    # Prepare: the tiny two-stage config of the stage-run test, two seeds
    import torch

    from simulations.run_benchmarks import run_seeds
    from tests.server.fedtools import CLS_TASK
    from tests.unicon_core.continual.test_stage_run import TINY, TINY_OVERRIDES, _config
    from unicon_core.continual.stages import ContinualConfig

    base = _config(tmp_path / "sites")
    cfg = ContinualConfig(stages=base.stages, data_root=base.data_root, rounds=1,
                          local_steps=2, batch_size=8, lr=0.05, seeds=[0, 1],
                          adaptation_task=CLS_TASK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker
    try:
        # Execute
        # a few strategies (one local, one federated; one adaptation plan) keep this test
        # short: every strategy is run by the same code path
        names, plans = ("naive_sequential", "full_fedavg"), ("gradual_unfreezing",)
        serial = run_seeds(cfg, TINY, TINY_OVERRIDES, tmp_path / "one", False, 1, names, plans)
        parallel = run_seeds(cfg, TINY, TINY_OVERRIDES, tmp_path / "two", False, 2, names,
                             plans)
    finally:
        torch.set_num_threads(threads)

    # Assert: seed order kept and every strategy's matrix identical
    assert [r["seed"] for r in serial] == [r["seed"] for r in parallel] == [0, 1]
    for one, two in zip(serial, parallel, strict=True):
        assert sorted(one["continual"]) == sorted(two["continual"]) == sorted(names)
        assert list(one["adaptation"]) == list(two["adaptation"]) == list(plans)
        for plan in plans:  # the same numbers; only the wall time may differ
            assert ({k: v for k, v in one["adaptation"][plan].items() if k != "wall_s"}
                    == {k: v for k, v in two["adaptation"][plan].items() if k != "wall_s"})
        for name, result in one["continual"].items():
            assert json.dumps(result["matrix"]) == json.dumps(two["continual"][name]["matrix"])
        assert one["foundation"] is None and one["modality"] is None
    assert (tmp_path / "two" / "partial.json").is_file()
    with pytest.raises(ValueError, match="jobs"):
        run_seeds(cfg, TINY, TINY_OVERRIDES, tmp_path / "none", False, jobs=0)


def test_committed_reports_show_no_machine_paths(tmp_path) -> None:
    from simulations.report import REPO, shown_command, shown_path

    assert shown_path(REPO / "runs" / "x") == "runs/x"  # no machine path in committed files
    outside = tmp_path / "suite" / "BENCHMARKS.md"
    assert shown_path(outside) == ".../suite/BENCHMARKS.md"  # outside: no absolute path either
    assert shown_path("demo_data_copy") == "demo_data_copy"  # relative: as given
    command = shown_command(["python -m simulations.run_benchmarks", "--runs-dir",
                             str(REPO / "runs"), f"--out={outside}",
                             f"federation.data_root={tmp_path}", "--jobs", "2"])
    assert command == ("python -m simulations.run_benchmarks --runs-dir runs "
                       f"--out=.../suite/BENCHMARKS.md federation.data_root=.../"
                       f"{tmp_path.parent.name}/{tmp_path.name} --jobs 2")
    assert str(tmp_path) not in command and "/tmp" not in command


def test_before_after_table_says_identical_within_noise_or_moved() -> None:
    """The before/after table of #16 computes its verdicts from the numbers."""
    from simulations.report import before_after

    def runs(avgs: list[float]) -> list[dict[str, float]]:
        return [{"avg": a, "bwt": 0.0, "forgetting": 0.0} for a in avgs]

    before = {"meta": {"command": "x", "commit": "abc", "date": "d", "seeds": [0, 1]},
              "continual": {"a": runs([0.5, 0.6]), "b": runs([0.5, 0.6]),
                            "c": runs([0.50, 0.51])}}
    suite = {"continual": {"a": runs([0.5, 0.6]), "b": runs([0.52, 0.61]),
                           "c": runs([0.70, 0.71]), "d": runs([0.1, 0.2])}}
    text = "\n".join(before_after(before, suite))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert "identical per seed" in rows["a"]
    assert "within seed noise" in rows["b"]
    assert "moved beyond seed noise" in rows["c"] and "+0.200" in rows["c"]
    assert "no before value" in rows["d"]
    assert "Moved beyond seed noise: c" in text and "abc" in text


def test_one_engine_section_compares_only_finished_seeds_and_replaces_itself(tmp_path) -> None:
    """The #16 section restricts the before run to the (method, seed) pairs the after run
    finished, says per seed whether values are identical, and replaces an earlier copy."""
    from simulations.report import insert_section, one_engine_section

    def run(seed: int, avg: float) -> dict[str, float]:
        return {"seed": seed, "avg": avg, "bwt": 0.0, "forgetting": 0.0}

    before = {"meta": {"command": "x", "commit": "abc"},
              "continual": {"isolated": [run(0, 0.5), run(1, 0.7), run(2, 0.9)]}}
    after = {"continual": {"isolated": [run(0, 0.5), run(1, 0.7)]}}
    text = one_engine_section(before, after, "seeds 0-1 only.")
    assert "| isolated | 0.600 ± 0.141 | 0.600 ± 0.141 | +0.000" in text  # seed 2 left out
    assert "identical per seed" in text and "| isolated | 1 | 0.700 | 0.700 | +0.0000 | yes |" \
        in text
    path = tmp_path / "B.md"
    path.write_text("# B\n\n## other\n\nx\n")
    insert_section(path, text)
    insert_section(path, text.replace("seeds 0-1 only.", "again."))
    out = path.read_text()
    assert out.count("## One engine (#16)") == 1 and "again." in out and "## other" in out


def test_a_resumed_suite_runs_only_the_seeds_its_partial_json_lacks(tmp_path, monkeypatch) -> None:
    # Prepare: seeds 0 and 1 already saved by an interrupted run
    from types import SimpleNamespace

    from simulations import run_benchmarks

    (tmp_path / "partial.json").write_text(json.dumps([{"seed": 0, "x": 1, "m": [None, 0.5]},
                                                       {"seed": 1}]))
    ran: list[int] = []

    def fake_seed(cfg, backbone, overrides, run_dir, seed, with_foundation, *subset):
        ran.append(seed)
        return {"seed": seed, "x": 2}

    monkeypatch.setattr(run_benchmarks, "run_seed", fake_seed)
    # Execute
    out = run_benchmarks.run_seeds(SimpleNamespace(seeds=[0, 1, 2]), None, [], tmp_path,
                                   False, jobs=2)
    # Assert
    assert ran == [2]
    assert [r["seed"] for r in out] == [0, 1, 2] and out[0]["x"] == 1
    assert math.isnan(out[0]["m"][0])  # JSON null is an undefined metric again
    assert len(json.loads((tmp_path / "partial.json").read_text())) == 3


def _run_parts(total: float) -> dict[str, float]:
    """A measured run of ``total`` seconds, a quarter in each part."""
    return {"total_s": total, "startup_s": total / 4, "query_s": total / 4,
            "rounds_s": total / 4, "shutdown_s": total / 4}


def _wall_ov(**runs: Any) -> dict[str, Any]:
    """The wall-time measurement: a cold run of 40 s against 10 s in process, and ``runs``."""
    return {"flwr_s": 40.0, "plain_s": 10.0, "ratio": 4.0, "sites": 5, "rounds": 3,
            "local_steps": 12, "startup_s": 20.0, "query_s": 6.0, "rounds_s": 8.0,
            "shutdown_s": 6.0, "rounds_ratio": 0.8, "comparator": "in-process", **runs}


def test_wall_time_section_reports_cold_and_kept_superlink_runs() -> None:
    """Both ratios come from the measured seconds, each judged against the 1.3x goal."""
    from simulations.report import overhead_section

    ov = _wall_ov(kept_first=_run_parts(36.0), warm=_run_parts(12.0), warm_ratio=1.2,
                  engine=_run_parts(16.0), engine_ratio=1.6)

    text = "\n".join(overhead_section(ov, {"command": "c", "date": "d", "machine": "m"}))

    assert "ratio **4.00×**, goal ≤ 1.3×: **MISSED**" in text
    assert "warm run takes 12.0 s: ratio **1.20×**, goal ≤ 1.3×: met" in text
    assert "saves 17.0 s of start-up and 3.0 s of shut-down" in text
    assert "takes 16.0 s: ratio **1.60×**, goal ≤ 1.3×: **MISSED**" in text  # the engine
    assert "It saves 16.0 s of start-up and 2.0 s of shut-down" in text
    assert "kept for a whole suite (`unicon_flower.engine" not in text  # not measured
    assert ("| Flower start-up until the ServerApp runs | 20.0 | 9.0 | 3.0 | 4.0 | 50% | 25% "
            "| 25% | 25% |") in text
    assert overhead_section(None)[-2] == "not measured in this run."
    # the floor outside unicon's code against the 0.3 x 10 s the goal leaves
    ov["floor"], ov["cpus"] = {"python_s": 0.1, "ray_s": 2.0, "stack_s": 2.5}, 2
    text = "\n".join(overhead_section(ov))
    assert "that is 4.5 s, against the 3.0 s of overhead that ≤ 1.3× leaves" in text
    assert "out of reach at this run length" in text
    assert "the same floor holds for it" in text  # the engine run is in the section
    ov["floor"]["ray_s"] = 0.2
    assert "that is 2.7 s" in "\n".join(overhead_section(ov))
    assert "within reach." in "\n".join(overhead_section(ov))


def test_wall_time_section_reports_the_kept_engines_warm_run() -> None:
    from simulations.report import overhead_section

    ov = _wall_ov(engine=_run_parts(16.0), engine_ratio=1.6, engine_first=_run_parts(18.0),
                  engine_warm=_run_parts(12.8), engine_warm_ratio=1.28)

    text = "\n".join(overhead_section(ov))

    assert ("the first run starts Ray and the ClientApp actors, 18.0 s; the next reuses them, "
            "their imports done), the warm run takes 12.8 s: ratio **1.28×**, goal ≤ 1.3×: "
            "met. This is the ratio of the runs of a benchmark suite") in text
    assert "| query round (first ClientApp calls) | 6.0 | 4.0 | 3.2 | 15% | 25% | 25% |" in text
    ov["engine_warm_ratio"] = 1.31
    assert "ratio **1.31×**, goal ≤ 1.3×: **MISSED**" in "\n".join(overhead_section(ov))
    ov["floor"], ov["cpus"] = {"python_s": 0.1, "ray_s": 2.0, "stack_s": 2.5}, 2
    assert "pays Ray and the actors' imports once for a whole suite" in "\n".join(
        overhead_section(ov))


def test_crossing_rounds_solves_two_straight_lines() -> None:
    """flwr: 30 s fixed + 2 s a round; in process: 5 s + 3 s a round. 30 + 2r = 1.3 (5 + 3r)
    at r = 23.5 / 1.9; a flwr side that costs more per round never gets there."""
    from simulations.overhead import crossing_rounds

    def side(r: int, fixed: float, per: float) -> float:
        return fixed + per * r

    short = {"rounds": 3, "flwr_s": side(3, 30, 2), "plain_s": side(3, 5, 3)}
    long = {"rounds": 15, "flwr_s": side(15, 30, 2), "plain_s": side(15, 5, 3)}
    assert crossing_rounds(short, long, 1.3) == pytest.approx(23.5 / 1.9)
    assert crossing_rounds(short, {**long, "flwr_s": side(15, 30, 4)}, 1.3) is None
    # a flwr start-up within 1.3x of the in-process one: met at every length, not "never"
    cheap = {"rounds": 3, "flwr_s": side(3, 5, 2)}, {"rounds": 15, "flwr_s": side(15, 5, 2)}
    assert crossing_rounds({**short, **cheap[0]}, {**long, **cheap[1]}, 1.3) == 0.0
    with pytest.raises(ValueError, match="must have more"):
        crossing_rounds(long, short, 1.3)


def test_wall_time_section_reports_the_longer_run_and_its_crossing() -> None:
    from simulations.report import overhead_section

    ov = {"flwr_s": 36.0, "plain_s": 14.0, "ratio": 36 / 14, "sites": 5, "rounds": 3,
          "local_steps": 12, "comparator": "in-process", "startup_s": 20.0, "query_s": 4.0,
          "rounds_s": 8.0, "shutdown_s": 4.0, "rounds_ratio": 0.8,
          "long": {"rounds": 15, "flwr_s": 60.0, "plain_s": 50.0, "ratio": 1.2,
                   "engine_s": 80.0, "engine_ratio": 1.6},
          "engine": {"total_s": 32.0, "startup_s": 16.0, "query_s": 8.0, "rounds_s": 6.0,
                     "shutdown_s": 2.0}, "engine_ratio": 32 / 14}

    text = "\n".join(overhead_section(ov))

    assert "with 15 rounds instead of 3" in text
    assert "cold `flwr run` 60.0 s vs in process 50.0 s, ratio **1.20×**, goal ≤ 1.3×: met" \
        in text
    # flwr 30 + 2r, in process 5 + 3r: 1.3x at r = 23.5 / 1.9 = 12.4
    assert "≤ 1.3× from about 12 rounds of this federation on" in text
    assert "A round costs Flower less" in text  # its rounds took 0.8x the in-process ones
    # the engine: 24 + 4r against 5 + 3r costs more a round than 1.3x allows
    assert "The engine in process at 15 rounds: 80.0 s, ratio **1.60×**" in text
    assert "its ratio is not brought to the goal by longer runs" in text
    ov["rounds_ratio"] = 1.1
    assert "A round costs Flower less" not in "\n".join(overhead_section(ov))


def test_runtime_floor_times_each_snippet_in_a_fresh_process() -> None:
    from simulations.overhead import runtime_floor

    out = runtime_floor(snippets={"a": "pass", "b": "import time; time.sleep(0.3)"})
    assert set(out) == {"a", "b"} and out["b"] >= 0.3 and out["a"] > 0
    with pytest.raises(RuntimeError, match="timing bad"):
        runtime_floor(snippets={"bad": "raise SystemExit(3)"})


def test_a_new_section_goes_before_the_named_heading_or_at_the_end(tmp_path: Path) -> None:
    from simulations.report import insert_section

    path = tmp_path / "B.md"
    path.write_text("# B\n\n## one\n\na\n\n## three\n\nc\n")
    insert_section(path, "## two\n\nb\n", before="## three")
    insert_section(path, "## four\n\nd\n", before="## nowhere")
    insert_section(path, "## two\n\nB\n", before="## three")  # replaced where it stands
    assert path.read_text() == ("# B\n\n## one\n\na\n\n## two\n\nB\n\n## three\n\nc\n\n"
                                "## four\n\nd\n")
