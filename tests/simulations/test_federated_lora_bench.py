"""simulations/federated_lora_bench.py: the section's numbers come from the runs, the pure
helpers are right, and ``--quick`` runs the real federation end to end (slow)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from simulations import federated_lora_bench as bench
from simulations import report

OTHER = "## Some other section\n\nkept as it is\n"


def _fake_fed(setup: bench.Setup, job: bench.Job, run_dir: Path) -> dict[str, Any]:
    """Known values: rule index / 10 + seed / 100 (+0.3 for the mixed run, +0.02 with a server
    optimiser or FedProx, +0.004 on the pretrained foundation, +0.05 with kept optimiser
    state, +0.1 at one local step a round)."""
    value = 0.5 + bench.RULES.index(job.rule) / 10 + job.seed / 100
    value += 0.3 if job.kind == "mixed" else 0.0
    value += 0.02 if job.options else 0.0
    value += 0.004 if "backbone=demo" in setup.base else 0.0
    value += 0.05 if "train.keep_optimizer_state=true" in setup.base else 0.0
    value += 0.1 if setup.budget.local_steps == 1 else 0.0
    return {"metric": "c_index", "value": value, "per_site": {}, "per_site_n": {}, "n": 32,
            "wall_s": 1.0, "bytes_up": 1000.0 + job.seed, "bytes_down": 2000.0,
            "svd_truncation_error": 0.25 if job.rule == "svd" else None}


def _fake_central(setup: bench.Setup, job: bench.Job, run_dir: Path) -> dict[str, Any]:
    return {"metric": "c_index", "value": 0.8 + job.seed / 100, "per_site": {},
            "per_site_n": {}, "n": 32, "wall_s": 1.0, "pooled_value": 0.77,
            "max_change": 3e-12}


def _fake_local(setup: bench.Setup, job: bench.Job, run_dir: Path) -> dict[str, Any]:
    site = dict(job.options)[bench.LOCAL_SITE]
    assert site in [d.name for d in setup.sites[job.task]]
    return {**_fake_central(setup, job, run_dir), "value": 0.6 + job.seed / 100,
            "per_site": {site: 0.7}}


#: Every kind of run, faked: no test here trains unless it says so.
FAKES = (("fed", _fake_fed), ("mixed", _fake_fed), ("central", _fake_central),
         ("local", _fake_local))


def _fake_val(setup: bench.Setup, job: bench.Job, run_dir: Path, test_value: float,
              scratch: Path) -> dict[str, Any]:
    """Known validation scores of a federated run's final skill: 0.6, +0.1 without the round
    norm bound, +0.05 at eta = lr on seed 1; its checkpoint gives the cached test value."""
    opts = dict(job.options)
    value = 0.6 + (0.1 if opts.get(bench.NORM_FACTOR) == "null" else 0.0)
    value += 0.05 if job.seed == 1 and opts.get("server_eta") == setup.budget.lr else 0.0
    return {"value": value, "n": 16, "per_site": {}, "per_site_n": {}, "test_again": test_value}


def _use_fakes(monkeypatch: pytest.MonkeyPatch, wrap: Any = None) -> None:
    """Every kind of run (each fake through ``wrap`` where given) and the validation scores
    of a part's choice faked."""
    for kind, fake in FAKES:
        monkeypatch.setitem(bench.RUNNERS, kind, wrap(fake) if wrap else fake)
    monkeypatch.setattr(bench, "val_score", _fake_val)


def _fake_bytes(backbones: Any) -> list[dict[str, Any]]:
    codecs = {name: {"down": 1_000, "up": 500, "payload": 400, "raw_skill": 400}
              for name in bench.CODECS}
    codecs[bench.LOSSLESS] = {"down": 1_000, "up": 500, "payload": 430, "raw_skill": 400}
    codecs[bench.LOSSLESS_PACKED] = {"down": 1_000, "up": 500, "payload": 404, "raw_skill": 400}
    codecs["delta, int8 per row"] = {"down": 1_000, "up": 100, "payload": 90,
                                     "raw_skill": 400}
    return [{"backbone": "big", "task": "t", "backbone_params": 90_000_000,
             "skill_params": 100, "full_round": 1_000_000, "codecs": codecs}]


def _fake_scale(n: int, *args: Any, **kw: Any) -> dict[str, Any]:
    return {"sites": n, "query_s": 0.5, "round_s": 1.25 * n, "trained_per_round": [2, 2],
            "messages": {"query": n, "train": 4}, "to_unsampled": 7, "peak_rss_mib": 100.0 + n}


def test_section_shows_the_runs_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare: every run returns known values; the output file has another section
    _use_fakes(monkeypatch)
    monkeypatch.setattr(bench, "bytes_rows", _fake_bytes)
    monkeypatch.setattr(bench, "run_scale", _fake_scale)
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\n" + OTHER)

    # Execute
    res = bench.main(["--quick", "--seeds", "0", "1", "--work-dir", str(tmp_path / "w"),
                      "--out", str(out), "--foundation"])

    # Assert: the other section is kept, ours is appended with the runs' numbers
    text = out.read_text()
    assert OTHER.strip() in text and text.count(bench.HEADING) == 1
    section = text[text.index(bench.HEADING):]
    assert f"--seeds 0 1 --quick --foundation --out .../{tmp_path.name}/BENCH.md" in section
    assert "/tmp" not in section
    assert "these runs were made on 20" in section and "undated" not in section
    assert "Made before" not in section  # every run here was made with fresh augmentation
    # naive: fed 0.50/0.51, central 0.80/0.81 -> per seed 0.625, 0.630; svd 0.80/0.81 -> 1.0
    assert "| synth_surv (SYNTHETIC, c_index) | 32 | naive | 0.505 ± 0.007 | 0.805 ± 0.007 " \
           "| 0.625, 0.630 | 0.627 | **MISSED** |" in section
    assert "| svd | 0.805 ± 0.007 | 0.805 ± 0.007 | 1.000, 1.000 | 1.000 | met |" in section
    assert "0.250 to 0.250 over tasks and seeds" in section  # SVD truncation error
    assert "synth_surv 0.770 ± 0.000" in section  # pooled-test value of the centralised runs
    assert "3.0e-12" in section
    # bytes: lossless 430 / 400 = 1.075 > 1.05; int8 per row round 1,100 / 1e6 = 1/909
    assert "payload = 1.075 x raw skill bytes (goal <= 1.05: **MISSED**" in section
    assert "one array per dtype) = 1.010 x raw skill bytes (goal <= 1.05: met)" in section
    assert "delta, int8 per row: a round is 1/909 of the full model's (goal <= 1/200: met)" \
        in section
    assert "delta, int8 per tensor: a round is 1/667" in section
    # mixed ranks: uniform = the svd runs, mixed = +0.3, with the run's bytes
    assert "| uniform (task rank) | 0.805 ± 0.007 | 0.800, 0.810 | 1,000 | 2,000 | 0.250 |" \
        in section
    assert "| mixed (synth_surv_1 at rank 2) | 1.105 ± 0.007 |" in section
    # scaling rows as the runs measured them
    assert "| 3 | 0.5 (0.167) | 3.75 | 2, 2 | 3 / 4 / 0 | 7 | 103 |" in section
    assert "| 6 | 0.5 (0.083) | 7.50 | 2, 2 | 6 / 4 / 0 | 7 | 106 |" in section
    assert res["jobs"][bench.Job("central", "synth_surv", 1).key]["value"] == 0.81
    # server optimisers and FedProx: one row each, against plain FedAvg (the naive row)
    variants = section[section.index("### Server optimisers"):]
    assert "| synth_surv | FedAvg (the naive row above) | 0.505 ± 0.007 | 0.500, 0.510 | " \
           "0.627 | **MISSED** |" in variants
    for label in bench.VARIANTS:
        assert f"| synth_surv | {label} | 0.525 ± 0.007 | 0.520, 0.530 | 0.652 |" in variants
    # the rules again on the pretrained foundation, its runs told apart by their overrides
    fm = section[section.index("on the pretrained foundation"):]
    assert "`experiment=continual backbone=demo`" in fm
    assert "| naive | 0.509 ± 0.007 | 0.805 ± 0.007 | 0.630, 0.635 | 0.632 |" in fm
    assert not any(j.options for j in map(_job_of, res["foundation"]["jobs"]))
    # mixed ranks on the foundation: its own table, svd + 0.004 and mixed + 0.3 + 0.004
    fm_mixed = fm[fm.index("### Mixed ranks vs uniform rank (SVD rule) on the pretrained"):]
    assert "| uniform (task rank) | 0.809 ± 0.007 | 0.804, 0.814 |" in fm_mixed
    assert "| mixed (synth_surv_1 at rank 2) | 1.109 ± 0.007 |" in fm_mixed
    # and once more with kept optimiser state: its own setup, its own table (+0.05)
    kept = section[section.index("### The same on the foundation, sites keeping"):]
    assert "`experiment=continual backbone=demo train.keep_optimizer_state=true`" in kept
    assert "| naive | 0.559 ± 0.007 | 0.805 ± 0.007 | 0.693, 0.696 | 0.694 |" in kept
    assert not any(k.startswith("mixed") for k in res["foundation_kept"]["jobs"])
    # SCAFFOLD on top of the kept moments: its own rows under the kept table (+0.02)
    drift = kept[kept.index("### Against client drift on the foundation"):]
    assert "| synth_surv | FedAvg (the naive row above) | 0.559 ± 0.007 |" in drift
    for label in bench.FOUNDATION_KEPT_VARIANTS:
        assert f"| synth_surv | {label} | 0.579 ± 0.007 | 0.574, 0.584 | 0.719 | **MISSED** " \
            "| 1,000 / 2,000 |" in drift  # the runs' own bytes per site and round
    assert not any(k.endswith(("scaffold-true_seed0", "scaffold-true_seed1"))
                   for k in res["foundation"]["jobs"])
    # the kept-moments runs cut into rounds of at most 4 local steps (15 x 4 on the full
    # budget; the quick budget of 1 x 2 already is): naive, SCAFFOLD, FedAvgM (two momenta),
    # FedExP and smaller site batches only
    short = section[section.index("### Shorter rounds on the foundation, moments kept (1 x 2)"):
                    section.index("### One local step a round on the foundation")]
    assert "Budget (every rule and the centralised bound): 1 rounds x 2 local steps" in short
    assert "| naive | 0.559 ± 0.007 | 0.805 ± 0.007 |" in short and "| ffa |" not in short
    scaffold, fedavgm, half, fedexp, small = bench.FOUNDATION_SHORT_VARIANTS
    assert "#### SCAFFOLD, FedAvgM, FedExP and smaller site batches with 1 x 2" in short
    assert "batches of 2 with 4x the local steps (8 of 2 instead of 2 of 8" in short
    for label in (scaffold, fedavgm, half, fedexp, small):
        assert f"| synth_surv | {label} | 0.579 ± 0.007 |" in short
    assert bench.FOUNDATION_SHORT_VARIANTS[fedavgm] == (("server_opt", "fedavgm"),)
    assert bench.FOUNDATION_SHORT_VARIANTS[half] == (("server_opt", "fedavgm"),
                                                     ("server_momentum", 0.5))
    assert bench.FOUNDATION_SHORT_VARIANTS[fedexp] == (("server_opt", "fedexp"),)
    assert bench.FOUNDATION_SHORT_VARIANTS[small] == ((bench.SITE_BATCH, 2),)
    assert res["foundation_short"]["budget"]["rounds"] == 1
    # one local step a round (60 x 1 on the full budget, 2 x 1 quick; evaluated every 20th
    # round, no val pass): naive only (+0.1)
    one = section[section.index("### One local step a round on the foundation, moments kept "
                                "(2 x 1)"):section.index("on the 3D CT foundation, smaller")]
    assert "federation.val_split=null federation.evaluate_every=20" in one
    assert "Budget (every rule and the centralised bound): 2 rounds x 1 local steps" in one
    assert "| naive | 0.659 ± 0.007 | 0.805 ± 0.007 |" in one and "| ffa |" not in one
    assert "server lr" not in one
    # FedOpt's split under it: SGD at the 2 sites, FedAdam at eta = lr x sites (+0.02)
    [(fedopt, opts)] = bench.fedopt_variant(2, 0.002).items()
    assert ("server_eta", 0.004) in opts and ("site_sgd_lr", 1.0) in opts
    assert f"| synth_surv | {fedopt} | 0.679 ± 0.007 | 0.674, 0.684 |" in one
    # the 3D task's own table at 4 local steps of 2, and the summed deltas (server lr = sites)
    ct = section[section.index("on the 3D CT foundation, smaller steps (4 local steps of 2)"):]
    assert "Budget (every rule and the centralised bound): 1 rounds x 4 local steps of " \
        "batch 2" in ct
    assert "| naive | 0.509 ± 0.007 | 0.805 ± 0.007 |" in ct
    summed = ct[ct.index("#### Summing the site deltas on synth_surv"):]
    [(label, opts)] = bench.summed_variant(2).items()
    assert ("server_lr", 2) in opts and "server lr 2" in label
    assert f"| synth_surv | {label} | 0.529 ± 0.007 | 0.524, 0.534 |" in summed
    assert res["foundation_ct"]["budget"]["batch_size"] == 2


def test_a_cached_run_of_another_setup_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setitem(bench.RUNNERS, "fed", _fake_fed)
    monkeypatch.setitem(bench.RUNNERS, "central", _fake_central)
    setup = bench.Setup({"t": [Path("t0")]}, bench.Budget(), mixed_task="")
    job = bench.Job("fed", "t", 0)
    first = bench.run_jobs(setup, [job], tmp_path, 1)
    assert bench.run_jobs(setup, [job], tmp_path, 1) == first  # same setup: reused
    other = bench.Setup({"t": [Path("t0")]}, bench.Budget(rounds=9), mixed_task="")
    with pytest.raises(SystemExit, match=rf"{job.key}\.json: made with .*'rounds': 5.*"
                                         r"not this run's .*'rounds': 9"):
        bench.run_jobs(other, [job], tmp_path, 1)
    cached = tmp_path / "jobs" / f"{job.key}.json"
    cached.write_text(json.dumps({k: v for k, v in first[job.key].items() if k != "setup"}))
    with pytest.raises(SystemExit, match="an unrecorded setup"):
        bench.run_jobs(setup, [job], tmp_path, 1)


def _job_of(key: str) -> bench.Job:
    """The planned job behind a result key (keys are unique per job)."""
    return next(j for j in _all_jobs() if j.key == key)


def _all_jobs() -> list[bench.Job]:
    setup = bench.Setup({"synth_surv": [Path("synth_surv_0"), Path("synth_surv_1")]},
                        bench.Budget())
    return bench.plan_jobs(setup, [0, 1])


def test_a_diverged_run_is_a_miss_not_a_gap() -> None:
    nan = math.nan
    assert bench._goal([0.7, nan, 0.8], 0.9, [True, True, True]) == "**MISSED** (1 of 3 " \
        "seeds diverged)"
    assert bench._goal([0.7, nan, 0.8], 0.9, [True, False, True]).startswith("incomplete")
    assert bench._goal([0.99, 0.99], 1.0, [True, True]) == "met"
    assert bench._ms([0.5, nan, 0.7], [True, True, True]) == "0.600 ± 0.141 (without 1 " \
        "diverged)"
    assert bench._ms([0.5, nan], [True, False]) == "0.500 ± 0.000"


def test_shorter_rounds_keep_the_examples_per_site() -> None:
    full, quick = bench.Budget(), bench.Budget(rounds=1, local_steps=2)
    assert bench.same_examples(full, bench.FOUNDATION_SHORT_STEPS) == bench.Budget(15, 4)
    assert bench.same_examples(full, bench.FOUNDATION_ONE_STEPS) == bench.Budget(60, 1)
    assert bench.same_examples(quick, bench.FOUNDATION_SHORT_STEPS) == quick
    assert bench.same_examples(quick, bench.FOUNDATION_ONE_STEPS) == bench.Budget(2, 1)
    with pytest.raises(ValueError, match="60 local steps per site do not cut into rounds of 7"):
        bench.same_examples(full, 7)


def test_the_rules_table_names_a_diverged_seed() -> None:
    """A seed whose run ended without a metric reads "diverged" in the per-seed ratios, as in
    the variants table, not "n/a" (which means the run is missing)."""
    def job(value: float) -> dict[str, Any]:
        return {"value": value, "n": 10, "metric": "auc", "augmentation": bench.AUGMENTATION}

    jobs = {bench.Job("central", "t", s).key: job(0.8) for s in (0, 1)}
    jobs[bench.Job("fed", "t", 0, "naive").key] = job(0.8)
    jobs[bench.Job("fed", "t", 1, "naive").key] = job(math.nan)
    lines = bench._rules_lines("### x", {"jobs": jobs, "tasks": ["t"], "rules": ["naive"]},
                               [0, 1], asdict(bench.Budget()))

    row = next(line for line in lines if line.startswith("| t "))
    assert "| 1.000, diverged |" in row and "**MISSED** (1 of 2 seeds diverged)" in row


def test_the_external_site_has_its_own_table_beside_the_rules() -> None:
    """Each run's evaluation-only site is a second table under the rules table: its own n and
    fed / central per seed, rules and variants alike; a part without one has none."""
    def job(value: float, ext: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"value": value, "n": 10, "metric": "auc",
                               "augmentation": bench.AUGMENTATION}
        if ext is not None:
            out["external"] = {"ext": {"value": ext, "n": 274}}
        return out

    variant = (("scaffold", "true"),)
    jobs = {bench.Job("central", "t", s).key: job(0.8, 0.8 + s / 10) for s in (0, 1)}
    jobs |= {bench.Job("fed", "t", s, "naive").key: job(0.4, 0.8) for s in (0, 1)}
    jobs |= {bench.Job("fed", "t", s, "naive", options=variant).key: job(0.4, 0.9)
             for s in (0, 1)}
    part = {"jobs": jobs, "tasks": ["t"], "rules": ["naive"], "external": {"t": ["ext"]},
            "variants": {"SCAFFOLD": [list(o) for o in variant]}}
    lines = bench._rules_lines("### x", part, [0, 1], asdict(bench.Budget()))

    text = "\n".join(lines)
    assert "| t (real, auc) | 10 | naive | 0.400 ± 0.000 | 0.800 ± 0.000 | 0.500, 0.500 |" in text
    # external: central 0.8, 0.9; naive 0.8 -> 1.000, 0.889, of the means 0.8 / 0.85
    assert "| t | ext | 274 | naive | 0.800 ± 0.000 | 0.850 ± 0.071 | 1.000, 0.889 | 0.941 | " \
           "**MISSED** |" in text
    assert "| t | ext | 274 | SCAFFOLD | 0.900 ± 0.000 | 0.850 ± 0.071 | 1.125, 1.000 | " \
           "1.059 | met |" in text
    assert text.index("| t (real") < text.index(bench.EXTERNAL_INTRO) < text.index("| t | ext")
    plain = {**part, "external": {}}
    assert bench.EXTERNAL_INTRO not in "\n".join(
        bench._rules_lines("### x", plain, [0, 1], asdict(bench.Budget())))


def _eval_only_site(root: Path, like: Path) -> Path:
    """An evaluation-only copy of a quick site: every row a test row, ``role: evaluation``."""
    import shutil

    site = root / "synth_ext"
    shutil.copytree(like, site)
    meta = json.loads((site / "site.json").read_text())
    (site / "site.json").write_text(json.dumps({**meta, "site": site.name,
                                                "role": "evaluation"}))
    with (site / "manifest.csv").open() as fh:
        rows = [{**r, "split": "test"} for r in csv.DictReader(fh)]
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return site


def test_an_external_site_must_be_evaluation_only(tmp_path: Path) -> None:
    sites = bench.make_quick_sites(tmp_path / "q")
    task = bench.QUICK_TASK
    with pytest.raises(SystemExit, match=r"synth_surv_1.*does not say 'role: evaluation'"):
        bench.site_setup({task: sites[task][:1]}, bench.Budget(),
                         external={task: sites[task][1:]})
    ext = _eval_only_site(tmp_path, sites[task][1])
    setup = bench.site_setup({task: sites[task]}, bench.Budget(), external={task: [ext],
                                                                          "other": [ext]})
    assert setup.external == {task: [ext]}  # a task without runs takes no external site
    assert bench.setup_key(setup, task)["external"] == {task: ["synth_ext"]}
    assert "external" not in bench.setup_key(setup, "other")  # its runs never evaluate it
    assert "external" not in bench.setup_key(bench.site_setup(sites, bench.Budget()), task)


def test_runs_from_before_the_augmentation_fix_are_marked() -> None:
    fresh = {"value": 0.7, "augmentation": bench.AUGMENTATION}
    assert bench._augmentation_note({"a": fresh, "b": fresh}) == ""
    line = bench._augmentation_note({"a": fresh, "b": {"value": 0.6}, "c": {}})
    assert line.startswith(f"**Made before {bench.AUGMENTATION_FIX}**: 2 of the 3 runs")


def test_a_table_names_the_cpus_its_runs_were_made_on() -> None:
    import torch

    here = report.cpu_name()
    assert here.endswith(f", {torch.backends.cpu.get_cpu_capability()}")
    assert bench._cpu_note({"a": {"value": 0.7}}) == ""  # nothing recorded, nothing said
    line = bench._cpu_note({"a": {"cpu": "B, AVX2"}, "b": {"cpu": "A, AVX512"},
                            "c": {"cpu": "B, AVX2"}, "d": {}})
    assert line.startswith("Made on `A, AVX512`; `B, AVX2` (1 runs from before the CPU was")
    assert "torch threads" not in line.split(":")[0]  # no run recorded its thread count
    line = bench._cpu_note({"a": {"cpu": "A", "torch_threads": 1},
                            "b": {"cpu": "A", "torch_threads": 2}, "c": {"cpu": "A"}})
    assert line.startswith("Made on `A`, torch threads 1, 2 (1 runs from before the thread "
                           "count was recorded): ")


def test_a_summed_variant_needs_one_number_of_sites() -> None:
    assert bench._site_count({"a": [Path("1"), Path("2")], "b": [Path("3"), Path("4")]}) == 2
    with pytest.raises(ValueError, match="different numbers of sites"):
        bench._site_count({"a": [Path("1")], "b": [Path("3"), Path("4")]})


def test_plan_adds_each_variant_per_task_and_seed() -> None:
    setup = bench.Setup({"a": [Path("a1")], "b": [Path("b1")]}, bench.Budget(), mixed_task="")
    plain = bench.plan_jobs(setup, [0, 1, 2], variants={})
    full = bench.plan_jobs(setup, [0, 1, 2])
    extra = [j for j in full if j not in plain]
    assert len(extra) == 2 * len(bench.VARIANTS) * 3
    assert {j.options for j in extra} == set(bench.VARIANTS.values())
    assert len({j.key for j in full}) == len(full)  # every run has its own cache file
    assert all(j.rule == bench.VARIANT_RULE for j in extra)


def test_bytes_alone_replace_only_the_bytes_table(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    # Prepare: a section with a bytes table between two other tables
    monkeypatch.setattr(bench, "bytes_rows", _fake_bytes)
    out = tmp_path / "BENCH.md"
    before = (f"{bench.HEADING}\n\n### Rules\n\nrules table\n\n"
              "### Bytes per site and round per codec\n\nold bytes\n\n### Scaling\n\nscale\n\n"
              + OTHER)
    out.write_text(before)
    # Execute
    bench.main(["--quick", "--skip", "rules", "scale", "--work-dir", str(tmp_path / "w"),
                "--out", str(out)])
    # Assert: only the bytes table changed, and it says it was rerun alone
    text = out.read_text()
    assert "old bytes" not in text and "rules table" in text and "### Scaling\n\nscale" in text
    assert OTHER.strip() in text and text.count("### Bytes per site") == 1
    assert "This table alone was rerun by" in text and "1.010 x raw skill bytes" in text


def _section_then_bound_moves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                              ) -> tuple[Path, str]:
    """A whole --foundation section written from fake runs (the file and its text), then
    the centralised bound's fake moves to 0.9 for the next run."""
    _use_fakes(monkeypatch)
    monkeypatch.setattr(bench, "bytes_rows", _fake_bytes)
    monkeypatch.setattr(bench, "run_scale", _fake_scale)
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\n" + OTHER)
    bench.main(["--quick", "--seeds", "0", "--work-dir", str(tmp_path / "w"), "--out", str(out),
                "--foundation"])
    before = out.read_text()

    def moved(setup: bench.Setup, job: bench.Job, run_dir: Path) -> dict[str, Any]:
        return {**_fake_central(setup, job, run_dir), "value": 0.9}

    monkeypatch.setitem(bench.RUNNERS, "central", moved)
    return out, before


@pytest.mark.parametrize(("name", "heading"), [
    ("ct", "### synth_surv on the 3D CT foundation, smaller steps"),
    ("ctlong", "### synth_surv on the 3D CT foundation, 3x the rounds"),
    ("lr", "### synth_surv on the foundation at lr 0.001, moments restarted"),
    ("clslong", "### synth_surv on the foundation at lr 0.001, 2x the rounds"),
    ("clsx3", "### synth_surv on the foundation at lr 0.001, 3x the rounds"),
    ("clsdrop", "### synth_surv on the foundation at lr 0.001, without synth_surv_1"),
    ("fedopt", "### synth_surv on the foundation at lr 0.001, FedOpt's split (2 x 1)"),
    ("ctfedopt", "### synth_surv on the 3D CT foundation, FedOpt's split (4 x 1 of 2)"),
    ("ctfedoptlong", "### synth_surv on the 3D CT foundation, FedOpt's split on 3x the "
                     "rounds' examples (12 x 1 of 2)"),
    ("kept", "### The same on the foundation, sites keeping their optimiser state")])
def test_one_foundation_part_alone_replaces_only_its_table(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path, name: str,
                                                           heading: str) -> None:
    # Prepare: a whole section written from fake runs, then the centralised bound moves
    out, before = _section_then_bound_moves(monkeypatch, tmp_path)
    # Execute: the part alone, in a fresh work folder (the others' cache is gone)
    res = bench.main(["--quick", "--seeds", "0", "--work-dir", str(tmp_path / "fresh"),
                      "--out", str(out), "--part", name])
    # Assert: only its table (and its variants below it) changed, it says it was rerun
    # alone, and with what
    after = out.read_text()
    assert after.split(heading)[0] == before.split(heading)[0]  # every table before it
    part_before = before[before.index(heading):].split("\n### ")[0]
    part_after = after[after.index(heading):].split("\n### ")[0]
    assert "| 0.800 ± 0.000 |" in part_before and "| 0.900 ± 0.000 |" in part_after
    assert after.count("This table alone was rerun by") == 1
    assert f"--part {name}" in part_after and "--foundation" in part_after
    assert after.split(part_after)[1] == before.split(part_before)[1]  # the tables after it
    assert after.count(heading) == 1
    assert bench.PARTS[name] in res and "foundation" not in res and not res["jobs"]
    # the parts that train each site alone show it, and the longer one says it came later
    assert ("| synth_surv | synth_surv_0 alone |" in part_after) == (name in ("lr", "clsx3"))
    assert ("Each site alone (local-only) came later" in part_after) == (name == "clsx3")


def _moved_then_part_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, part: str
                           ) -> tuple[str, str, dict[str, Any]]:
    """A whole section from fake runs, then ``--part part`` alone in a fresh work folder after
    the bound moved to 0.9 and every mixed-ranks run to 0.123: the file's text before and
    after, and the part's results."""
    out, before = _section_then_bound_moves(monkeypatch, tmp_path)

    def mixed(setup: bench.Setup, job: bench.Job, run_dir: Path) -> dict[str, Any]:
        return {**_fake_fed(setup, job, run_dir), "value": 0.123}

    monkeypatch.setitem(bench.RUNNERS, "mixed", mixed)
    res = bench.main(["--quick", "--seeds", "0", "--work-dir", str(tmp_path / "fresh"),
                      "--out", str(out), "--part", part])
    return before, out.read_text(), res


def test_the_rules_part_alone_replaces_the_foundation_rules_and_mixed_tables(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare and execute: a whole section from fake runs, then the part alone after the
    # bound and the mixed runs moved
    before, after, res = _moved_then_part_alone(monkeypatch, tmp_path, "rules")
    # Assert: the foundation's rules and mixed-ranks tables changed, each says it was rerun
    # alone; every table before and after them (the tiny backbone's mixed ranks too) did not
    rules = "### Federated / centralised per LoRA rule on the pretrained foundation\n"
    mixed_head = "### Mixed ranks vs uniform rank (SVD rule) on the pretrained foundation\n"
    kept = "### The same on the foundation, sites keeping their optimiser state\n"
    assert before.count(rules) == before.count(mixed_head) == 1
    assert after.split(rules)[0] == before.split(rules)[0]
    assert after.split(kept)[1] == before.split(kept)[1]
    new = after[after.index(rules):after.index(kept)]
    old = before[before.index(rules):before.index(kept)]
    assert "| 0.800 ± 0.000 |" in old and "| 0.900 ± 0.000 |" in new
    assert "| mixed (" in new and "| 0.123 ± 0.000 | 0.123 |" in new and "0.123" not in old
    assert new.count("This table alone was rerun by") == 2
    assert after.count("This table alone was rerun by") == 2
    assert new.index(mixed_head) > new.index(rules) and "--part rules" in new
    assert "foundation" in res and not res["jobs"]


def test_the_tiny_part_alone_replaces_the_tiny_backbones_tables(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare and execute: a whole section from fake runs, then the part alone after the
    # bound and the mixed runs moved
    before, after, res = _moved_then_part_alone(monkeypatch, tmp_path, "tiny")
    # Assert: the tiny backbone's rules, server optimisers and mixed-ranks tables changed,
    # each says it was rerun alone (without --foundation); every other table did not
    rules, fm = bench.RULES_HEADING + "\n", "### Federated / centralised per LoRA rule on the "
    mixed_head = "### Mixed ranks vs uniform rank (SVD rule)\n"
    assert before.count(rules) == before.count(mixed_head) == 1
    assert after.split(rules)[0] == before.split(rules)[0]
    new, old = (text[text.index(rules):text.index(fm)] for text in (after, before))
    assert "| 0.800 ± 0.000 |" in old and "| 0.900 ± 0.000 |" in new
    assert "### Server optimisers and FedProx\n\nThis table alone was rerun by" in new
    assert new.count("This table alone was rerun by") == 2 and "--part tiny" in new
    assert "--foundation" not in new
    assert (after[after.index(fm):after.index(mixed_head)]
            == before[before.index(fm):before.index(mixed_head)])
    mixed_new, mixed_old = (text[text.index(mixed_head):].split("\n### ")[0]
                            for text in (after, before))
    assert "| mixed (" in mixed_new and "| 0.123 ± 0.000 | 0.123 |" in mixed_new
    assert "This table alone was rerun by" in mixed_new and "0.123" not in mixed_old
    assert after.split(mixed_new)[1] == before.split(mixed_old)[1]
    assert after.count("This table alone was rerun by") == 3
    assert res["jobs"] and not any(key in res for key in bench.PARTS.values())


def test_parts_whose_tables_the_file_lacks_go_before_the_bytes_table_in_order(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare: a whole section from fake runs, less the last three parts' tables (a file
    # written before those parts existed)
    assert list(bench.PARTS)[-3:] == ["fedopt", "ctfedopt", "ctfedoptlong"]
    out, before = _section_then_bound_moves(monkeypatch, tmp_path)
    first = "### synth_surv on the foundation at lr 0.001, FedOpt's split (2 x 1)"
    head = "### synth_surv on the 3D CT foundation, FedOpt's split (4 x 1 of 2)"
    last = ("### synth_surv on the 3D CT foundation, FedOpt's split on 3x the rounds' "
            "examples (12 x 1 of 2)")
    start = before.index(first)
    end = before.index(bench.BYTES_HEADING)
    assert start < before.index(head) < before.index(last) < end
    older = before[:start] + before[end:]
    out.write_text(older)
    # Execute: the parts alone, in PARTS order; those before the last must say their table
    # is new
    rerun = ["--quick", "--seeds", "0", "--work-dir", str(tmp_path / "fresh"), "--out",
             str(out), "--part"]
    for name in ("fedopt", "ctfedopt"):
        with pytest.raises(ValueError, match=r"no subsection .* FedOpt's split"):
            bench.main([*rerun, name])
        assert out.read_text() == older
    bench.main([*rerun, "fedopt", "--new-table"])
    bench.main([*rerun, "ctfedopt", "--new-table"])
    bench.main([*rerun, "ctfedoptlong"])
    # Assert: the tables are back where the whole section has them, with the new runs'
    # values, and nothing else changed
    after = out.read_text()
    assert after.count(head) == after.count(first) == after.count(last) == 1
    assert after.index("### synth_surv on the foundation at lr 0.001, without synth_surv_1") \
        < after.index(first) < after.index(head) < after.index(last) \
        < after.index(bench.BYTES_HEADING)
    tables = after[after.index(first):after.index(bench.BYTES_HEADING)]
    assert tables.count("| 0.900 ± 0.000 |") >= 3
    assert tables.count("This table alone was rerun by") == 3
    assert "2 rounds x 1 local steps of batch 8 per site, lr 0.001" in tables
    assert "4 rounds x 1 local steps of batch 2 per site, lr 0.002" in tables
    assert "12 rounds x 1 local steps of batch 2 per site, lr 0.002" in tables
    assert after.replace(tables, "") == older


def _spied_part(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
                ) -> tuple[dict[str, Any], list[tuple[bench.Job, bench.Setup]],
                           dict[str, list[Path]]]:
    """Foundation part ``name`` on the quick sites (full budget, seeds 0 and 1), every run
    faked: its results, each run's job and setup, and the sites."""
    runs: list[tuple[bench.Job, bench.Setup]] = []

    def spy(fake: Any) -> Any:
        def run(setup: bench.Setup, job: bench.Job, run_dir: Path) -> dict[str, Any]:
            runs.append((job, setup))
            return fake(setup, job, run_dir)
        return run

    _use_fakes(monkeypatch, spy)
    sites = bench.make_quick_sites(tmp_path / "sites")
    part = bench.foundation_runs(sites, tmp_path, bench.Budget(), [0, 1], tmp_path / "w",
                                 1)[bench.PARTS[name]]()
    return part, runs, sites


@pytest.mark.parametrize(("name", "budget", "rules"), [
    ("lr", replace(bench.Budget(), lr=bench.FOUNDATION_LR), ("naive", "fedsa")),
    ("clslong", replace(bench.Budget(), lr=bench.FOUNDATION_LR,
                        rounds=bench.Budget().rounds * bench.FOUNDATION_CLS_LONG_ROUNDS_X),
     ("naive",)),
    ("clsx3", replace(bench.Budget(), lr=bench.FOUNDATION_LR,
                      rounds=bench.Budget().rounds * bench.FOUNDATION_CLS_LONGER_ROUNDS_X),
     ("naive",)),
    ("clsdrop", replace(bench.Budget(), lr=bench.FOUNDATION_LR), ("naive",))])
def test_the_lr_parts_run_both_sides_at_their_budget_and_nothing_else_changes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str,
        budget: bench.Budget, rules: tuple[str, ...]) -> None:
    # Prepare and execute: the part on fake runs, the setup of every run recorded
    part, runs, sites = _spied_part(monkeypatch, tmp_path, name)
    seen = [(job.kind, setup.budget, setup.base, job.rule) for job, setup in runs]
    trained = {tuple(d.name for d in setup.sites[job.task]) for job, setup in runs}
    # Assert: the federation and its bound alike at the part's budget, the rest as the rules
    # table
    # the lr table and its 3x table also train each site alone (2 quick sites x 2 seeds)
    local = 4 if name in ("lr", "clsx3") else 0
    assert sorted(k for k, *_ in seen) == (["central"] * 2 + ["fed"] * 2 * len(rules)
                                           + ["local"] * local)
    assert {b for _, b, _, _ in seen} == {budget}
    assert bench.Budget().lr != bench.FOUNDATION_LR
    assert {base for *_, base, _ in seen} == {bench.FOUNDATION_BASE}
    assert sorted(r for k, *_, r in seen if k == "fed") == sorted(rules * 2)
    assert part["left_out"] == {} and part["budget"] == asdict(budget)
    # every site on both sides, but for the part that leaves one out (quick: the last)
    names = tuple(d.name for d in sites[bench.QUICK_TASK])
    assert trained == {names[:-1] if name == "clsdrop" else names}
    assert part.get("dropped", {}) == ({bench.QUICK_TASK: names[-1]} if name == "clsdrop"
                                       else {})
    alone = sorted(bench.local_job(bench.QUICK_TASK, site, seed).key
                   for site in names for seed in (0, 1))
    assert sorted(k for k in part["jobs"] if k.startswith("local_")) == (alone if local else [])


@pytest.mark.parametrize(("name", "budget"), [
    ("fedopt", replace(bench.Budget(), lr=bench.FOUNDATION_LR)),
    ("ctfedopt", replace(bench.Budget(), **bench.FOUNDATION_CT_BUDGET)),
    ("ctfedoptlong", bench.ct_long_budget(bench.Budget()))])
def test_the_fedopt_parts_run_only_fedopt_and_the_bound_on_the_one_step_cut(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, budget: bench.Budget
) -> None:
    # Prepare and execute: the part on fake runs, every run's setup and options recorded
    part, runs, _ = _spied_part(monkeypatch, tmp_path, name)
    seen = [(job.kind, setup.budget, setup.base, job.options) for job, setup in runs]
    # Assert: the bound and FedOpt only (no rule of its own), both on the one-step cut of the
    # part's budget (the lr table's 5 x 12 -> 60 x 1; the 3D table's 5 x 4 of 2 -> 20 x 1,
    # its 3x-rounds table's 15 x 4 of 2 -> 60 x 1), moments kept for the bound, the server's
    # eta = lr x sites (2 quick sites)
    budget = bench.same_examples(budget, 1)
    assert (budget.rounds, budget.local_steps) == ((20, 1) if name == "ctfedopt" else (60, 1))
    assert {b for _, b, _, _ in seen} == {budget}
    assert {base for _, _, base, _ in seen} == {
        bench.FOUNDATION_BASE + bench.FOUNDATION_KEPT + bench.FOUNDATION_ONE_BASE}
    # the tumour_cls part also at eta = lr, and both etas without the round norm bound (added
    # after its first runs)
    fedopt = {"site_sgd_lr": 1.0, "server_opt": "fedadam", "tau": 1e-8, "beta_2": 0.999}
    wanted = [{**fedopt, "server_eta": 2 * budget.lr}]
    if name == "fedopt":
        wanted += [{**fedopt, "server_eta": budget.lr},
                   {**fedopt, "server_eta": 2 * budget.lr, "update_norm_factor": "null"},
                   {**fedopt, "server_eta": budget.lr, "update_norm_factor": "null"}]
    assert sorted(k for k, *_ in seen) == ["central"] * 2 + ["fed"] * 2 * len(wanted)
    options = [dict(o) for o in dict.fromkeys(o for k, *_, o in seen if k == "fed")]
    assert options == wanted
    assert part["rules"] == [] and [dict(o) for o in part["variants"].values()] == options
    intro = bench.PART_TEXTS[bench.PARTS[name]](part, asdict(bench.Budget()))[1]
    assert ("The row at eta = lr" in intro) == ("without the round norm bound" in intro) \
        == ("The row without the bound at eta = lr" in intro) == (name == "fedopt")


def test_the_fedopt_row_is_chosen_per_seed_on_validation_and_reported_on_test(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare and execute: the tumour_cls FedOpt part on fake runs and fake validation scores
    part, _, _ = _spied_part(monkeypatch, tmp_path, "fedopt")
    labels = list(part["variants"])
    # Assert: seed 0 ties rows 3 and 4 (both without the bound, 0.7) -> the first; seed 1
    # lifts eta = lr (rows 2 and 4) by 0.05 -> row 4, its own test value
    [picks] = part["chosen"].values()
    assert [p["chosen"] for p in picks] == [labels[2], labels[3]]
    assert picks[1]["val"] == pytest.approx(dict(zip(labels, [0.6, 0.65, 0.7, 0.75],
                                                     strict=True)))
    assert [p["value"] for p in picks] == pytest.approx([0.674, 0.684])
    assert part["test_again_max"] == 0.0
    # the table under the part's own: every row's score, the chosen row, both sides' test
    # values; fed 0.674/0.684 against the bound's 0.80/0.81 -> 0.8435 of the means
    text = "\n".join(bench._part_subsections(part, bench.PARTS["fedopt"], [0, 1],
                                             asdict(bench.Budget()))[0])
    chosen = text[text.index("#### The row chosen on validation (4 rows above)"):]
    assert "(n 16: each site's own held-out sources" in chosen
    assert "| synth_surv | 0 | 0.600, 0.600, 0.700, 0.700 | 3 | 0.674 | 0.800 | 0.843 |" \
        in chosen
    assert "| synth_surv | 1 | 0.600, 0.650, 0.700, 0.750 | 4 | 0.684 | 0.810 | 0.844 |" \
        in chosen
    assert f"4 = {labels[3]}" in chosen
    assert "a rank metric (AUC, c-index) counts pairs" in chosen  # c-index runs
    dice = {k: {**v, "metric": "dice"} for k, v in part["jobs"].items()}
    assert "sums floats in another order" in "\n".join(
        bench._chosen_lines({**part, "jobs": dice}, [0, 1]))
    assert "synth_surv: the chosen rows 0.679 ± 0.007 against the bound's 0.805 ± 0.007, " \
        "fed / central of the means 0.843, goal >= 0.98: **MISSED**" in chosen
    # parts without the choice have no such table
    assert not bench._chosen_lines({**part, "chosen": {}}, [0, 1])


def test_a_row_without_a_validation_score_is_never_chosen() -> None:
    rows = {"a": (("server_eta", 1),), "b": (("server_eta", 2),)}
    keys = {label: bench.Job("fed", "t", 0, options=o).key for label, o in rows.items()}
    jobs = {k: {"value": 0.5 + i / 10, "external": {}} for i, k in enumerate(keys.values())}
    scores = {keys["a"]: {"value": None, "n": 9}, keys["b"]: {"value": 0.1, "n": 9}}
    [pick] = bench.chosen_on_val(jobs, scores, "t", [0], rows)
    assert pick["chosen"] == "b" and pick["value"] == 0.6 and math.isnan(pick["val"]["a"])
    with pytest.raises(RuntimeError, match="t seed 0: no row scored on val"):
        bench.chosen_on_val(jobs, {k: {"value": math.nan} for k in keys.values()}, "t", [0],
                            rows)


def test_a_checkpoint_that_is_not_the_runs_final_skill_is_not_scored(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The choice scores each run's checkpoint: one of another round, or one that does not give
    the cached run's test value again (a later run wrote into the folder), fails naming it."""
    import numpy as np

    import unicon_flower.runner as runner
    from unicon_core.federation.aggregation import prefix_task
    from unicon_core.federation.checkpoint import Checkpoint, save_checkpoint

    # Prepare: a run folder whose checkpoint holds the task's skill at a given round; each
    # evaluation round scores 0.7 on test and 0.6 on val, and records the skill it was given
    setup = bench.site_setup(bench.make_quick_sites(tmp_path / "q"), bench.Budget(rounds=3))
    job = bench.Job("fed", bench.QUICK_TASK, 0)
    skill = {"lora_A": np.ones((2, 3), np.float32)}
    given: list[tuple[str | None, Any]] = []

    def fake(sites: Any, run_dir: Path, settings: Any, **kw: Any) -> Any:
        given.append((settings.eval_split, kw["initial"]))
        run_dir.mkdir(parents=True)
        (run_dir / "rounds.jsonl").write_text("{}")  # the run's records, made by every round
        value = 0.7 if settings.eval_split == "test" else 0.6
        entry = {"metric": "auc", "value": value, "n": 5, "per_site": {}, "per_site_n": {}}
        return SimpleNamespace(results={"tasks": {job.task: entry}})

    monkeypatch.setattr(runner, "run_in_process", fake)

    def score(at_round: int, cached: float) -> dict[str, Any]:
        save_checkpoint(tmp_path / "run", Checkpoint(
            round=at_round, arrays=prefix_task(job.task, skill), foundation_hash="h",
            config={}))
        return bench.val_score(setup, job, tmp_path / "run", cached, tmp_path / "scratch")

    # Execute and assert: the run's last round and its test value -> the val score
    assert score(3, 0.7) == {"value": 0.6, "n": 5, "per_site": {}, "per_site_n": {},
                             "test_again": 0.7}
    assert [split for split, _ in given] == ["test", "val"]
    assert given[-1][1][job.task]["lora_A"].tolist() == skill["lora_A"].tolist()
    with pytest.raises(RuntimeError, match="checkpoint is of round 2, not the run's last"):
        score(2, 0.7)
    assert score(3, 0.7 + bench.TEST_AGAIN_TOL / 2)["test_again"] == 0.7  # near-tied pairs
    with pytest.raises(RuntimeError, match=r"scores 0\.7 on the test "
                                           r"splits, not the cached run's 0\.75"):
        score(3, 0.75)
    # the scoring runs' folders are gone, after a score and after a failed check alike
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_cached_validation_score_of_a_rerun_job_is_made_again(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare: a score cached for a run whose test value was 0.7, counted where it is made
    setup = bench.Setup({"t": [Path("t0")]}, bench.Budget(), mixed_task="")
    job, made = bench.Job("fed", "t", 0), []

    def fake(setup: bench.Setup, job: bench.Job, run_dir: Path, test_value: float,
             scratch: Path) -> dict[str, Any]:
        made.append(test_value)
        return {"value": 0.6, "n": 5, "per_site": {}, "per_site_n": {}, "test_again": test_value}

    monkeypatch.setattr(bench, "val_score", fake)
    bench.val_scores(setup, {job.key: {"value": 0.7}}, [job], tmp_path)
    # Execute and assert: the same run reuses it; a rerun job (another test value) is scored
    # again, and its new score is what the next call reads
    bench.val_scores(setup, {job.key: {"value": 0.7}}, [job], tmp_path)
    assert made == [0.7]
    got = bench.val_scores(setup, {job.key: {"value": 0.9}}, [job], tmp_path)
    assert made == [0.7, 0.9] and got[job.key]["test_again"] == 0.9


def test_a_run_without_the_round_norm_bound_turns_the_strategy_option_off(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The bench's norm option is a strategy override, not a ``strategy.lora`` one; a run
    without it leaves the strategy's default bound alone."""
    import unicon_flower.runner as runner

    given: list[tuple[str, ...]] = []

    def fake(sites: Any, run_dir: Path, settings: Any, **kw: Any) -> Any:
        given.append(tuple(settings.extra))
        raise RuntimeError("stop")

    monkeypatch.setattr(runner, "run_in_process", fake)
    setup = bench.site_setup(bench.make_quick_sites(tmp_path / "q"), bench.Budget())
    for opts in [(), *bench.unbounded(bench.fedopt_variant(2, 0.001)).values()]:
        with pytest.raises(RuntimeError, match="stop"):
            bench.run_fed(setup, bench.Job("fed", bench.QUICK_TASK, 0, options=opts), tmp_path)
    plain, off = given
    assert "strategy.update_norm_factor=null" in off
    assert not [o for o in plain + off if "lora.update_norm_factor" in o]
    assert not [o for o in plain if "update_norm_factor" in o]


def test_the_foundation_rules_table_lists_each_training_site_as_every_foundation_table() -> None:
    def job(value: float, a: float) -> dict[str, Any]:
        return {"value": value, "n": 30, "metric": "auc", "per_site": {"a": a, "b": value},
                "per_site_n": {"a": 20, "b": 10}}

    jobs = {bench.Job("central", "t", s).key: job(0.8, 0.7) for s in (0, 1)}
    jobs |= {bench.Job("fed", "t", s).key: job(0.5, 0.6) for s in (0, 1)}
    part = {"jobs": jobs, "tasks": ["t"], "rules": ["naive"], "sites": {"t": ["a", "b"]},
            "base": ["experiment=continual"], "budget": asdict(bench.Budget())}
    rules, mixed = bench._part_subsections(part, bench.PARTS["rules"], [0, 1],
                                           asdict(bench.Budget()))
    text = "\n".join(rules)
    assert mixed == []  # no mixed-ranks runs in this part: no such table
    assert text.startswith("### Federated / centralised per LoRA rule on the pretrained")
    assert text.index("| t (real, auc) | 30 | naive |") < text.index(bench.PER_SITE_INTRO)
    assert "| t | a | 20 | naive | 0.600 ± 0.000 | 0.700 ± 0.000 |" in text
    assert "| t | b | 10 | naive | 0.500 ± 0.000 | 0.800 ± 0.000 |" in text


def test_a_part_without_rules_puts_its_variants_in_the_main_and_per_site_tables() -> None:
    """No naive row to compare a variants table with: the variants are the main table's
    federated rows (and the per-site table's), each once on the evaluation-only site."""
    opts = (("server_opt", "fedadam"),)

    def job(value: float, a: float, ext: float) -> dict[str, Any]:
        return {"value": value, "n": 30, "metric": "auc", "per_site": {"a": a, "b": value},
                "per_site_n": {"a": 20, "b": 10}, "external": {"e": {"value": ext, "n": 99}}}

    jobs = {bench.Job("central", "t", s).key: job(0.8, 0.8, 0.9) for s in (0, 1)}
    jobs |= {bench.Job("fed", "t", s, options=opts).key: job(0.4 + s / 10, 0.6, 0.45)
             for s in (0, 1)}
    part = {"jobs": jobs, "tasks": ["t"], "rules": [], "external": {"t": ["e"]},
            "sites": {"t": ["a", "b"]}, "variants": {"FedX": [list(o) for o in opts]},
            "budget": asdict(bench.Budget())}
    text = "\n".join(bench._part_lines(part, [0, 1], "### x", "intro", "#### variants", "v"))
    assert "| t (real, auc) | 30 | FedX | 0.450 ± 0.071 | 0.800 ± 0.000 | 0.500, 0.625 | " \
           "0.562 | **MISSED** |" in text
    assert "| t | a | 20 | FedX | 0.600 ± 0.000 | 0.800 ± 0.000 |" in text
    assert text.count("| t | e | 99 | FedX | 0.450 ± 0.000 |") == 1
    assert "#### variants" not in text and "naive" not in text
    # with a rule, the variants keep their own table under it, as before
    ruled = {**part, "rules": ["naive"],
             "jobs": {**jobs, **{bench.Job("fed", "t", s).key: job(0.5, 0.5, 0.5)
                                 for s in (0, 1)}}}
    text = "\n".join(bench._part_lines(ruled, [0, 1], "### x", "intro", "#### variants", "v"))
    assert "#### variants" in text and "| t (real, auc) | 30 | FedX |" not in text


def test_the_local_only_table_sets_each_site_alone_beside_both_sides() -> None:
    """Each site trained alone: its own test split, every site's, the evaluation-only site;
    the federation and the bound of the same part beside it; none where no site ran alone."""
    def job(value: float, per_site: dict[str, float], ext: float) -> dict[str, Any]:
        return {"value": value, "n": 30, "metric": "auc", "per_site": per_site,
                "per_site_n": {"a": 20, "b": 10}, "external": {"e": {"value": ext, "n": 99}}}

    jobs = {bench.Job("central", "t", s).key: job(0.8, {"a": 0.8, "b": 0.8}, 0.9)
            for s in (0, 1)}
    jobs |= {bench.Job("fed", "t", s).key: job(0.5, {"a": 0.6, "b": 0.3}, 0.6) for s in (0, 1)}
    jobs |= {bench.local_job("t", "b", s).key: job(0.7 + s / 10, {"a": 0.6, "b": 0.9}, 0.8)
             for s in (0, 1)}
    part = {"jobs": jobs, "tasks": ["t"], "rules": ["naive"], "external": {"t": ["e"]},
            "sites": {"t": ["a", "b"]}}
    text = "\n".join(bench._rules_lines("### x", part, [0, 1], asdict(bench.Budget()),
                                        per_site=True))

    assert "| task | trained on | own test split | every training site's test split (n 30) " \
           "| e (n 99) |" in text
    assert "| t | b alone | 0.900 ± 0.000 | 0.750 ± 0.071 | 0.800 ± 0.000 |" in text
    assert "| t | a alone |" not in text  # a never ran alone
    assert "| t | all, federated (naive) | – | 0.500 ± 0.000 | 0.600 ± 0.000 |" in text
    assert "| t | all pooled, centralised | – | 0.800 ± 0.000 | 0.900 ± 0.000 |" in text
    assert text.index(bench.PER_SITE_INTRO) < text.index(bench.LOCAL_INTRO) < \
        text.index("| t | b alone")
    # a local run that ended without a metric is named, not left out of the mean silently
    gone = {**jobs, bench.local_job("t", "b", 1).key: job(math.nan, {"b": math.nan}, math.nan)}
    assert "| t | b alone | 0.900 ± 0.000 (without 1 diverged) | 0.700 ± 0.000 (without 1 " \
           "diverged) | 0.800 ± 0.000 (without 1 diverged) |" in "\n".join(bench._rules_lines(
               "### x", {**part, "jobs": gone}, [0, 1], asdict(bench.Budget()), per_site=True))
    alone = {k: v for k, v in jobs.items() if not k.startswith("local_")}
    assert bench.LOCAL_INTRO not in "\n".join(bench._rules_lines(
        "### x", {**part, "jobs": alone}, [0, 1], asdict(bench.Budget()), per_site=True))


def test_the_largest_evaluation_change_counts_the_site_alone_runs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A site-alone run is evaluated as the bound is (one round at lr 1e-12): the budget line's
    largest change covers its evaluation round too, and says so only where such runs exist."""
    def moved(setup: bench.Setup, job: bench.Job, run_dir: Path) -> dict[str, Any]:
        return {**_fake_local(setup, job, run_dir), "max_change": 5e-9}

    _use_fakes(monkeypatch)
    monkeypatch.setitem(bench.RUNNERS, "local", moved)
    sites = bench.make_quick_sites(tmp_path / "sites")
    runs = bench.foundation_runs(sites, tmp_path, bench.Budget(), [0], tmp_path / "w", 1)
    lr, longer = runs[bench.PARTS["lr"]](), runs[bench.PARTS["clslong"]]()
    assert lr["max_change"] == 5e-9 and longer["max_change"] == 3e-12
    line = "\n".join(bench._rules_lines("### x", lr, [0], lr["budget"]))
    assert "largest change of any skill value, in this and the site-alone runs' evaluation " \
           "rounds: 5.0e-09)" in line
    assert "largest change of any skill value: 3.0e-12)" in "\n".join(
        bench._rules_lines("### x", longer, [0], longer["budget"]))


def test_a_local_run_trains_one_named_site(tmp_path: Path) -> None:
    sites = bench.make_quick_sites(tmp_path / "q")
    setup = bench.site_setup(sites, bench.Budget())
    with pytest.raises(ValueError, match=r"no site 'nowhere' in task 'synth_surv'"):
        bench.run_local(setup, bench.local_job(bench.QUICK_TASK, "nowhere", 0), tmp_path)
    plan = bench.plan_jobs(setup, [0], {}, ("naive",), local=True)
    assert [j.key for j in plan if j.kind == "local"] == [
        "local_synth_surv_naive_site-synth_surv_0_seed0",
        "local_synth_surv_naive_site-synth_surv_1_seed0"]
    assert not [j for j in bench.plan_jobs(setup, [0], {}, ("naive",)) if j.kind == "local"]


@pytest.mark.slow
def test_a_local_run_trains_alone_and_is_evaluated_everywhere(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare: two quick sites, a real one-round run; record what the pooled node trains on
    sites = bench.make_quick_sites(tmp_path / "q")
    setup = bench.site_setup(sites, bench.Budget(rounds=1, local_steps=2))
    trained: list[list[str]] = []
    real = bench.pooled_run

    def spy(setup: bench.Setup, members: Any, *args: Any, **kw: Any) -> Any:
        trained.append([d.name for d in members])
        return real(setup, members, *args, **kw)

    monkeypatch.setattr(bench, "pooled_run", spy)
    # Execute
    out = bench.run_local(setup, bench.local_job(bench.QUICK_TASK, "synth_surv_1", 0),
                          tmp_path / "run")
    # Assert: only that site trained, every site's test split evaluated, nothing moved there
    assert trained == [["synth_surv_1"]]
    assert sorted(out["per_site"]) == ["synth_surv_0", "synth_surv_1"]
    assert all(math.isfinite(v) for v in out["per_site"].values())
    assert math.isfinite(out["value"]) and out["max_change"] < 1e-6


def test_leaving_a_site_out_names_what_is_wrong(tmp_path: Path) -> None:
    sites = bench.make_quick_sites(tmp_path / "q")
    task = bench.QUICK_TASK
    kept = bench.without_site(sites, task, f"{task}_0")
    assert [d.name for d in kept[task]] == [f"{task}_1"]
    assert [d.name for d in sites[task]] == [f"{task}_0", f"{task}_1"]  # not changed
    with pytest.raises(ValueError, match=r"no site 'br35h_b' in task 'synth_surv'"):
        bench.without_site(sites, task, "br35h_b")
    with pytest.raises(ValueError, match=r"no site 'x' in task 'tumour_cls'"):
        bench.without_site(sites, "tumour_cls", "x")
    with pytest.raises(ValueError, match=r"leaves task 'synth_surv' no site"):
        bench.without_site(kept, task, f"{task}_1")


def test_the_per_site_table_shows_where_a_gap_sits() -> None:
    """Each training site's fed and central values on its own test split, per rule; none for
    a task with one site or runs without per-site values."""
    def job(per_site: dict[str, float]) -> dict[str, Any]:
        return {"value": 0.5, "n": 30, "metric": "auc", "per_site": per_site,
                "per_site_n": {"a": 20, "b": 10}}

    jobs = {bench.Job("central", "t", s).key: job({"a": 0.8, "b": 0.8 + s / 10})
            for s in (0, 1)}
    jobs |= {bench.Job("fed", "t", s, "naive").key: job({"a": 0.8, "b": 0.4}) for s in (0, 1)}
    part = {"jobs": jobs, "tasks": ["t"], "rules": ["naive", "fedsa"]}
    lines = bench._rules_lines("### x", part, [0, 1], asdict(bench.Budget()), per_site=True)

    text = "\n".join(lines)
    assert "| t | a | 20 | naive | 0.800 ± 0.000 | 0.800 ± 0.000 | 1.000, 1.000 | 1.000 |" in text
    # b: central 0.8, 0.9 -> 0.5, 0.444; of the means 0.4 / 0.85
    assert "| t | b | 10 | naive | 0.400 ± 0.000 | 0.850 ± 0.071 | 0.500, 0.444 | 0.471 |" in text
    assert "| t | b | 10 | fedsa | n/a | 0.850 ± 0.071 | n/a, n/a | n/a |" in text  # not run
    assert text.index("| t (real") < text.index(bench.PER_SITE_INTRO) < text.index("| t | a ")
    assert bench.PER_SITE_INTRO not in "\n".join(
        bench._rules_lines("### x", part, [0, 1], asdict(bench.Budget())))
    one = {"jobs": {k: {**v, "per_site": {"a": 0.8}} for k, v in jobs.items()}, "tasks": ["t"],
           "rules": ["naive"]}
    assert bench.PER_SITE_INTRO not in "\n".join(
        bench._rules_lines("### x", one, [0, 1], asdict(bench.Budget()), per_site=True))


def test_a_part_needs_its_table_in_the_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _use_fakes(monkeypatch)
    out = tmp_path / "BENCH.md"
    # a bytes table is there, but only the last part may go in before it
    out.write_text(f"# Benchmarks\n\n{bench.BYTES_HEADING}\n\nbytes\n\n" + OTHER)
    with pytest.raises(ValueError, match="no subsection '### synth_surv on the 3D CT"):
        bench.main(["--quick", "--seeds", "0", "--work-dir", str(tmp_path / "w"),
                    "--out", str(out), "--part", "ct"])


def test_a_segmentation_bound_that_segments_nothing_is_named() -> None:
    """A Dice bound of 0 on a seed: its ratio is n/a and a line says the bound did not learn
    there; none where every seed's bound learnt, and none for a metric with chance at 0.5."""
    def part(metric: str, values: Sequence[float]) -> dict[str, Any]:
        jobs = {bench.Job("central", "t", s).key: {"value": v, "metric": metric, "n": 9}
                for s, v in enumerate(values)}
        jobs |= {bench.Job("fed", "t", s).key: {"value": 0.0, "metric": metric, "n": 9}
                 for s in range(len(values))}
        return {"jobs": jobs, "tasks": ["t"], "rules": ["naive"]}

    text = "\n".join(bench._rules_lines("### x", part("dice", [0.0, 0.7]), [0, 1],
                                        asdict(bench.Budget())))
    assert "Centralised bound at Dice 0.000 on t seed 0:" in text and "| n/a, 0.000 |" in text
    for metric, values in (("dice", [0.6, 0.7]), ("auc", [0.0, 0.7])):
        assert "segments nothing" not in "\n".join(bench._rules_lines(
            "### x", part(metric, values), [0, 1], asdict(bench.Budget())))


def test_rejected_updates_are_counted_from_the_rounds_and_rendered(tmp_path: Path) -> None:
    """The run's own round records say how many of a task's train replies the server
    rejected (another task's and evaluation-only replies are not counted); a cached run made
    before that is counted from its ``rounds.jsonl``; the table names the counts per row and
    seed ("?" unknown), and says nothing where none was rejected."""
    def site(task: str, status: str, train: bool = True) -> dict[str, Any]:
        return {"task": task, "status": status, **({"train": {"steps": 1.0}} if train else {})}

    rounds = [{"round": 1, "sites": {"a": site("t", "trained"), "b": site("t", "rejected"),
                                     "c": site("u", "rejected"),
                                     "x": site("t", "evaluation-only", False)}},
              {"round": 2, "sites": {"a": site("t", "rejected"), "b": site("t", "trained")}}]
    assert bench.rejected_updates(rounds, "t") == [2, 4]
    assert bench.rejected_updates(rounds, "u") == [1, 1]
    fed, central = bench.Job("fed", "t", 0), bench.Job("central", "t", 0)
    (tmp_path / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rounds) + "\n")
    assert bench._with_rejections({}, fed, tmp_path, 2) == {"rejected_updates": [2, 4]}
    assert bench._with_rejections({}, central, tmp_path, 2) == {}
    assert bench._with_rejections({}, fed, tmp_path / "gone", 2) == {}
    kept = {"rejected_updates": [0, 4]}
    assert bench._with_rejections(dict(kept), fed, tmp_path, 2) == kept
    # a folder another, unfinished run of the job wrote into (rounds 1, 2, 1) or a run
    # stopped early: unknown, not a count of the cached run
    assert bench._with_rejections({}, fed, tmp_path, 3) == {}
    with (tmp_path / "rounds.jsonl").open("a") as out:
        out.write(json.dumps(rounds[0]) + "\n")
    assert bench._with_rejections({}, fed, tmp_path, 3) == {}

    def part(counts: Sequence[list[int] | None]) -> dict[str, Any]:
        jobs = {bench.Job("central", "t", s).key: {"value": 0.8, "metric": "auc", "n": 9}
                for s in range(len(counts))}
        jobs |= {bench.Job("fed", "t", s).key: {"value": 0.7, "metric": "auc", "n": 9,
                                                **({"rejected_updates": c} if c else {})}
                 for s, c in enumerate(counts)}
        return {"jobs": jobs, "tasks": ["t"], "rules": ["naive"]}

    def text(counts: Sequence[list[int] | None]) -> str:
        return "\n".join(bench._rules_lines("### x", part(counts), [0, 1],
                                            asdict(bench.Budget())))

    assert "Updates of t the server rejected" in text([[3, 90], None])
    assert "naive: 3 of 90, ?." in text([[3, 90], None])
    assert "the server rejected" not in text([[0, 90], None])


def test_a_job_running_elsewhere_in_the_work_folder_is_not_run_again(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """While one process trains a job, a second one asked for the same job in the same work
    folder stops with a clear error instead of writing into the same run folder; once the
    first lets go, the job runs."""
    import fcntl

    ran: list[str] = []

    def fake(setup: Any, job: bench.Job, run_dir: Path) -> dict[str, Any]:
        ran.append(job.key)
        return {"value": 0.5}

    monkeypatch.setitem(bench.RUNNERS, "fed", fake)
    job = bench.Job("fed", "t", 0)
    (tmp_path / "runs").mkdir()
    with open(tmp_path / "runs" / f"{job.key}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit, match="another process is running this job"):
            bench._run_job(None, job, tmp_path)  # type: ignore[arg-type]
        assert ran == []
    assert bench._run_job(None, job, tmp_path)[1]["value"] == 0.5  # type: ignore[arg-type]
    assert ran == [job.key]


def test_a_row_that_did_not_run_is_not_called_a_miss() -> None:
    assert bench._goal([math.nan, math.nan], math.nan) == "not run"
    assert bench._goal([0.99, math.nan], 0.99) == "incomplete (1 of 2 seeds)"
    assert bench._goal([0.5, 0.5], 0.5) == "**MISSED**"
    assert bench._goal([0.99], 0.99) == "met"


def test_ratio_stats_per_seed_and_of_means() -> None:
    per, of_means = bench.ratio_stats([0.9, 0.6], [1.0, 0.8])
    assert per == pytest.approx([0.9, 0.75])
    assert of_means == pytest.approx(0.75 / 0.9)
    per, of_means = bench.ratio_stats([math.nan], [0.5])
    assert math.isnan(per[0]) and math.isnan(of_means)


def test_lora_overrides_name_rule_and_ranks() -> None:
    assert bench.lora_overrides("ffa") == ["+strategy.lora.delta=true",
                                           "+strategy.lora.lora_rule=ffa"]
    assert bench.lora_overrides("svd", {"a": 2})[-1] == "+strategy.lora.site_ranks={a:2}"
    assert bench.lora_overrides("naive", None, (("server_opt", "fedadam"), ("prox_mu", 0.01))) \
        [-2:] == ["+strategy.lora.server_opt=fedadam", "+strategy.lora.prox_mu=0.01"]


def test_scale_sites_deal_rows_with_repeats(tmp_path: Path) -> None:
    # Prepare: 13 rows for 3 sites of 10 rows (so rows repeat)
    from unicon_core.data.site import open_site

    sites = bench.make_quick_sites(tmp_path / "src", n_sites=1)[bench.QUICK_TASK]
    rows, site_json = bench.read_rows(sites)
    rows = rows[:13]

    # Execute
    dirs = bench.make_scale_sites(tmp_path / "scale", 3, rows, site_json, seed=1)

    # Assert: 6/2/2 splits, ids unique per site, every source row used, sites open cleanly
    assert [d.name for d in dirs] == ["s0000", "s0001", "s0002"]
    seen = set()
    for d in dirs:
        with (d / "manifest.csv").open() as fh:
            got = list(csv.DictReader(fh))
        assert [r["split"] for r in got] == list(bench.SCALE_SPLITS)
        assert len({r["id"] for r in got}) == bench.SCALE_ROWS
        seen |= {r["x0"] for r in got}
        assert json.loads((d / "site.json").read_text())["site"] == d.name
        assert open_site(d).task_spec.name == bench.QUICK_TASK
    assert seen == {r["x0"] for r in rows}


def test_codec_bytes_on_real_messages() -> None:
    # Prepare: the tiny backbone with a tabular task
    from unicon_core.config import BackboneConfig, TaskSpec
    from unicon_core.model import UniconModel

    model = UniconModel(BackboneConfig(), seed=0)
    spec = TaskSpec.from_dict({"name": "t", "kind": "survival", "modality": "clinical",
                               "spatial_dims": 0, "input_size": [4],
                               "feature_names": ["a", "b", "c", "d"]})
    model.add_task(spec)

    # Execute
    got = {name: bench.codec_bytes(model, "t", opts) for name, opts in bench.CODECS.items()}

    # Assert: a lossless delta costs what the skill costs; each codec shrinks the upload
    today, lossless = got[bench.TODAY], got[bench.LOSSLESS]
    assert lossless["payload"] == today["payload"] >= today["raw_skill"]
    assert lossless["down"] >= today["down"]  # the codec instruction keys
    assert got["delta, fp16"]["payload"] < lossless["payload"]
    # int8 is not always below fp16 here: each tiny tensor adds a framed scale tensor
    assert got["delta, int8 per tensor"]["payload"] < lossless["payload"]
    assert got["delta, lossless, FFA (A stays home)"]["payload"] < lossless["payload"]
    assert got["delta, top-k 10%"]["payload"] < lossless["payload"]
    # packing: one framed array instead of one per tensor (and per int8 scale)
    packed = got[bench.LOSSLESS_PACKED]
    assert today["raw_skill"] < packed["payload"] < lossless["payload"]
    assert packed["payload"] - today["raw_skill"] < (lossless["payload"] - today["raw_skill"]) / 2
    assert got["delta, int8 per tensor, packed"]["payload"] < got["delta, int8 per tensor"][
        "payload"]
    for name in set(got) & {"delta int8 + downlink int8, per row"}:  # the downlink's change
        assert got[name]["down"] != lossless["down"] and got[name]["up"] == got[
            "delta, int8 per row"]["up"]


@pytest.mark.slow
def test_quick_mode_runs_the_real_federation(tmp_path: Path) -> None:
    # Execute: --quick on its own SYNTHETIC sites, every run real
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n")
    res = bench.main(["--quick", "--seeds", "0", "--work-dir", str(tmp_path / "w"),
                      "--out", str(out)])

    # Assert: every run finished with a finite metric, and the section shows them
    section = out.read_text()
    assert bench.HEADING in section and "SYNTHETIC" in section
    for key, run in res["jobs"].items():
        assert math.isfinite(run["value"]), key
        assert f"{run['value']:.3f}" in section, key
    assert [r["sites"] for r in res["scale"]] == [3, 6]
    assert all(r["to_unsampled"] == 0 and r["trained_per_round"] == [2, 2]
               for r in res["scale"])
    assert res["bytes"][0]["codecs"][bench.LOSSLESS]["payload"] > 0


@pytest.mark.slow
def test_a_run_that_excludes_its_external_site_fails(tmp_path: Path) -> None:
    """A tabular evaluation-only site has no train rows to standardise by, so the site leaves
    the run at its query: the job fails naming it, rather than report the run without it."""
    sites = bench.make_quick_sites(tmp_path / "q")
    task = bench.QUICK_TASK
    ext = _eval_only_site(tmp_path, sites[task][1])
    setup = bench.site_setup(sites, bench.Budget(rounds=1, local_steps=1, batch_size=8),
                             external={task: [ext]})
    with pytest.raises(RuntimeError, match=r"\['synth_ext'\] not evaluated; the run excluded "
                                           r".*feature statistics need at least one train row"):
        bench.run_fed(setup, bench.Job("fed", task, 0), tmp_path / "fed")

def test_a_round_whose_replies_the_server_threw_away_fails_the_job() -> None:
    trained = {"round": 1, "tasks": {"t": {"sites_aggregated": 2}}}
    thrown = {"round": 2, "tasks": {"t": {"sites_aggregated": 0,
                                          "aggregation_error": "bad factor shape"}}}
    bench.check_aggregated([trained, {"round": 2, "tasks": {}}], "t", "job")  # no error
    with pytest.raises(RuntimeError, match=r"job: .*task t.*round 2: bad factor shape"):
        bench.check_aggregated([trained, thrown], "t", "job")


def test_a_seed_whose_bound_did_not_learn_is_named() -> None:
    lines = bench._weak_seed_lines({"t": [0.9, 0.45, math.nan]}, [0, 1, 2], " on ext")
    assert len(lines) == 2 and lines[0] == ""
    assert "below 0.6 (0.5 = chance) on ext on t seed 1 (0.450)" in lines[1]
    assert "seed 0" not in lines[1] and "seed 2" not in lines[1]
    assert bench._weak_seed_lines({"t": [0.9, 0.8]}, [0, 1], "") == []


def test_a_diverged_run_leaves_the_bytes_column() -> None:
    """Once a run diverged its sites send only refusals, so its bytes are not averaged with
    the others' and a row whose seeds all diverged has no bytes."""
    nan = math.nan
    runs = [{"value": 0.7, "bytes_up": 100, "bytes_down": 200},
            {"value": nan, "bytes_up": 10, "bytes_down": 200}]
    assert bench._traffic(runs, [0.7, nan], [True, True]) == \
        "100 / 200 (diverged runs left out)"
    assert bench._traffic(runs[1:], [nan], [True]) == "n/a (diverged)"
    assert bench._traffic([{}], [nan], [False]) == "n/a"
    assert bench._traffic(runs[:1], [0.7], [True]) == "100 / 200"


def test_smaller_site_batches_keep_the_examples_and_stay_out_of_the_strategy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``site_batch`` changes the federated run's batch and local steps (as many examples a
    round), not ``strategy.lora``; the budget it is cut from must divide."""
    import unicon_flower.runner as runner

    seen: list[Any] = []

    def fake_run(sites: Any, run_dir: Path, settings: Any) -> Any:
        seen.append(settings)
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "run_in_process", fake_run)
    setup = bench.Setup({"t": [tmp_path / "a"]}, bench.Budget(rounds=15, local_steps=4))
    job = bench.Job("fed", "t", 0, "naive", options=((bench.SITE_BATCH, 2),
                                                      ("server_opt", "fedavgm")))
    with pytest.raises(RuntimeError, match="stop here"):
        bench.run_fed(setup, job, tmp_path / "run")
    [settings] = seen
    assert (settings.rounds, settings.local_steps, settings.batch_size) == (15, 16, 2)
    assert "+strategy.lora.server_opt=fedavgm" in settings.extra
    assert not any(bench.SITE_BATCH in o for o in settings.extra)
    assert bench.site_batch_budget(bench.Budget(), 8) == bench.Budget()
    with pytest.raises(ValueError, match="96 examples per site and round do not cut into "
                                         "batches of 5"):
        bench.site_batch_budget(bench.Budget(), 5)
