"""The bound's batch-order diagnostic: its runs, its reading rule and its section."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from simulations import batch_order_bench as bo
from simulations import federated_lora_bench as fl


def test_the_shuffled_bound_and_the_federation_are_the_kept_tables_own_runs(
        tmp_path: Path) -> None:
    sites = fl.make_quick_sites(tmp_path / "q")
    setup = fl.site_setup(sites, fl.Budget(), mixed_task="")
    kept = {j.key for j in fl.plan_jobs(setup, [0, 1], {}, ("naive",))}
    planned = bo.plan(fl.QUICK_TASK, [0, 1], 12)
    assert {j.key for j in planned if not j.options} == kept  # reused, not rerun
    assert {j.key for j in planned if j.options} == {
        f"central_{fl.QUICK_TASK}_naive_site_block-{b}_seed{s}"
        for b in (1, 4, 12) for s in (0, 1)}
    # a round of 2 local steps has no middle block
    assert {dict(j.options)[fl.SITE_BLOCK] for j in bo.plan(fl.QUICK_TASK, [0], 2)
            if j.options} == {1, 2}


@pytest.mark.parametrize(("ordered", "share", "reads"), [
    (0.6, 1.0, "most of the gap"), (0.75, 0.5, "most of the gap"),
    (0.8, 1 / 3, "part of the gap"), (0.84, 0.2, "little of it"), (0.9, 0.0, "little of it"),
    (0.95, -1 / 6, "little of it")])
def test_the_share_of_the_gap_and_its_reading(ordered: float, share: float, reads: str) -> None:
    got = bo.share_removed(0.9, ordered, 0.6)
    assert got == pytest.approx(share)
    assert bo.reading(got).startswith(reads)


def test_no_share_where_the_federation_is_not_below_the_bound() -> None:
    assert math.isnan(bo.share_removed(0.8, 0.7, 0.85))
    assert math.isnan(bo.share_removed(0.8, math.nan, 0.6))
    assert bo.reading(math.nan).startswith("no reading")


def _run(value: float, per_site: dict[str, float], ext: float) -> dict[str, Any]:
    return {"value": value, "metric": "auc", "n": 30, "per_site": per_site,
            "per_site_n": {"s_a": 20, "s_b": 10}, "external": {"s_ext": {"value": ext, "n": 40}},
            "made": "2026-12-05 08:00 UTC", "cpu": "AMD EPYC, AVX512", "torch_threads": 1}


def _order_part(values: Sequence[float], fed: float, local_steps: int = 12) -> dict[str, Any]:
    """The batch-order runs of two seeds: each order at its value (+0.01 on seed 1)."""
    orders = bo.orders(local_steps)
    jobs = {}
    for opts, value in zip(orders.values(), values, strict=True):
        for seed in (0, 1):
            v = value + 0.01 * seed
            jobs[fl.Job("central", "t", seed, options=opts).key] = _run(
                v, {"s_a": v, "s_b": v - 0.2}, v - 0.1)
    for seed in (0, 1):
        jobs[fl.Job("fed", "t", seed).key] = _run(fed + 0.01 * seed, {"s_a": 0.7, "s_b": 0.3},
                                                  0.5)
    return {"jobs": jobs, "base": ["experiment=continual"],
            "budget": {"rounds": 5, "local_steps": local_steps, "batch_size": 8, "lr": 0.002},
            "orders": {k: [list(o) for o in v] for k, v in orders.items()}}


MATCHED_OPTS = (("site_sgd_lr", 1.0), (fl.ONE_STEP_BATCH, 3))


def _steps_part(bound: float, steps: float, fedopt: Sequence[float]) -> dict[str, Any]:
    """FedOpt's part of two seeds (two rows, the second chosen on seed 0, the first on 1)
    with the bound at FedOpt's step count."""
    rows = {"row A": (("server_eta", 0.003),), "row B": (("server_eta", 0.001),)}
    jobs = {}
    for seed in (0, 1):
        jobs[fl.Job("central", "t", seed).key] = _run(bound, {"s_a": bound, "s_b": bound}, 0.8)
        jobs[fl.Job("central", "t", seed, options=((fl.POOLED_BATCH, 24),)).key] = _run(
            steps, {"s_a": steps, "s_b": steps}, 0.7)
        for label, opts in rows.items():
            v = fedopt[seed] if label == ("row B" if seed == 0 else "row A") else 0.1
            jobs[fl.Job("fed", "t", seed, options=opts).key] = _run(v, {"s_a": v, "s_b": v}, v)
        m = bound * (0.99, 0.95)[seed]
        jobs[fl.Job("fed", "t", seed, options=MATCHED_OPTS).key] = _run(m, {"s_a": m, "s_b": m},
                                                                       0.8 * 0.97)
    return {"jobs": jobs, "base": ["b"], "pooled_batch": 24,
            "matched": {"batch": 3, "rounds": 160, "options": [list(o) for o in MATCHED_OPTS],
                        "val": [0.7, 0.5]},
            "budget": {"rounds": 60, "local_steps": 1, "batch_size": 8, "lr": 0.001},
            "variants": {k: [list(o) for o in v] for k, v in rows.items()},
            "chosen": {"t": [{"seed": 0, "chosen": "row B", "val": {"row A": 0.1, "row B": 0.6},
                              "val_n": 12},
                             {"seed": 1, "chosen": "row A", "val": {"row A": 0.55, "row B": 0.2},
                              "val_n": 12}]}}


CT_ROW = (("site_sgd_lr", 1.0), ("server_eta", 0.004))


def _ct_part(bound: float, row: float, matched: float) -> dict[str, Any]:
    """The 3D task's FedOpt part of two seeds: its bound, its one row, the matched row."""
    jobs = {}
    for seed in (0, 1):
        for job, v in ((fl.Job("central", "c", seed), bound),
                       (fl.Job("fed", "c", seed, options=CT_ROW), row),
                       (fl.Job("fed", "c", seed, options=MATCHED_OPTS), matched + 0.02 * seed)):
            jobs[job.key] = _run(v, {"s_a": v, "s_b": v}, v)
            jobs[job.key]["external"] = {}
    return {"task": "c", "jobs": jobs, "synthetic": True, "base": ["b"],
            "budget": {"rounds": 60, "local_steps": 1, "batch_size": 2, "lr": 0.002},
            "variants": {"the row": [list(o) for o in CT_ROW]},
            "matched": {"batch": 1, "rounds": 120, "options": [list(o) for o in MATCHED_OPTS]}}


def _res(order: dict[str, Any], steps: dict[str, Any], synthetic: bool = True,
         ct: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"task": "t", "seeds": [0, 1], "synthetic": synthetic, "metric": "auc", "n": 30,
            "order": order, "steps": steps, "ct": ct or _ct_part(0.8, 0.76, 0.79),
            "command": "python -m simulations.batch_order_bench", "date": "2026-12-05"}


def _rows(text: str) -> dict[str, str]:
    return {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| training")}


def test_the_section_shows_every_run_and_the_share_removed() -> None:
    # Prepare: shuffled bound 0.9, block 1 at 0.88, block 4 at 0.8, block 12 at 0.66,
    # federation 0.6; FedOpt's bound 0.8, at FedOpt's steps 0.7, FedOpt chosen 0.6 and 0.62
    res = _res(_order_part((0.9, 0.88, 0.8, 0.66), 0.6), _steps_part(0.8, 0.7, (0.6, 0.62)))
    # Execute
    text = bo.render(res)
    # Assert
    assert text.startswith(bo.HEADING) and "**SYNTHETIC**" in text
    assert text.index(bo.ORDER_HEADING) < text.index(bo.STEPS_HEADING)
    assert "`s_b` (n 10)" in text and "`s_ext` (n 40)" in text
    rows = _rows(text)
    assert "0.905 ± 0.007 | 0.900, 0.910" in rows[f"centralised, {bo.SHUFFLED}"]
    block1 = next(r for k, r in rows.items() if "(block 1)" in k)
    block12 = next(r for k, r in rows.items() if "(block 12" in k)
    assert "0.07: little of it" in block1  # (0.905 - 0.885) / (0.905 - 0.605)
    assert "0.80: most of the gap comes with how batches" in block12  # 0.24 / 0.3
    assert "0.33: part of the gap" in next(r for k, r in rows.items() if "(block 4" in k)
    assert "| 0.73 | 0.80: most" in block12  # 0.665 / 0.905, of the shuffled bound
    assert rows[bo.FEDERATED].endswith("| 0.67 | – |")
    assert "below the federation itself" not in text
    # the step-count table: FedOpt's chosen rows are each seed's chosen run
    assert "0.610 ± 0.014 | 0.600, 0.620" in rows[bo.FEDOPT_CHOSEN]
    steps = next(r for k, r in rows.items() if "one step of 24" in k)
    assert "0.53: most of the gap comes with FedOpt's fewer, larger steps" in steps  # 0.1/0.19
    assert "seed 0 'row B', seed 1 'row A'" in text
    matched = next(r for k, r in rows.items() if k.startswith("FedOpt's split at the bound"))
    assert "site batches of 3 (160 x 1)" in matched and matched.endswith("| 0.97 | – |")
    ct = text[text.index(bo.CT_HEADING.format(task="c")):]
    assert "**SYNTHETIC** CT phantoms" in ct and "site batches of 1 (120 x 1)" in ct
    assert "share of its lead" not in ct
    assert ("FedOpt's row against the bound: fed / central 0.950 (per seed 0.950, 0.950), goal "
            ">= 0.98: **MISSED**. The last row against the bound: fed / central 1.000 (per "
            "seed 0.988, 1.012), goal >= 0.98: met.") in ct
    assert ("fed / central 0.970 (per seed 0.990, 0.950), goal >= 0.98: **MISSED**; on "
            "`s_ext` 0.970. On the training sites' validation splits (n 12) it scores 0.700, "
            "0.500 against the chosen FedOpt row's 0.600, 0.550: validation would choose it "
            "over that row on 1 of 2 seeds.") in text


def _replicate_part(task: str, bound: float, matched: Sequence[float], synthetic: bool
                    ) -> dict[str, Any]:
    """A task's replication: the bound at ``bound`` and the matched row at ``matched`` on
    seeds 0 to 3 (the tables' 0 and 1, the new 2 and 3)."""
    jobs = {}
    for seed, m in zip((0, 1, 2, 3), matched, strict=True):
        for job, v in ((fl.Job("central", task, seed), bound),
                       (fl.Job("fed", task, seed, options=MATCHED_OPTS), m)):
            jobs[job.key] = _run(v, {"s_a": v, "s_b": v}, v)
            if synthetic:  # the 3D task has no evaluation-only site
                jobs[job.key]["external"] = {}
    return {"task": task, "seeds": [2, 3], "synthetic": synthetic, "jobs": jobs,
            "base": ["b"], "budget": {"rounds": 60, "local_steps": 1, "batch_size": 8,
                                      "lr": 0.001},
            "matched": {"batch": 3, "rounds": 160, "options": [list(o) for o in MATCHED_OPTS]}}


def test_the_replication_reads_the_new_seeds_alone() -> None:
    # Prepare: task t meets the goal on seeds 0 and 1 (1.0) but not on the new 2 and 3
    # (0.95, 0.93); task c misses on the tables' seeds (0.9) and meets on the new (0.99)
    res = _res(_order_part((0.9, 0.88, 0.8, 0.66), 0.6), _steps_part(0.8, 0.7, (0.6, 0.62)))
    res["replicate"] = [_replicate_part("t", 0.8, (0.8, 0.8, 0.76, 0.744), False),
                        _replicate_part("c", 0.8, (0.72, 0.72, 0.8, 0.784), True)]
    # Execute
    text = bo.render(res)
    # Assert
    rep = text[text.index(bo.REPLICATE_HEADING.format(seeds="2, 3")):]
    assert "(their seeds: 0, 1)" in rep
    t, c = rep.split("`c`: ")
    assert "`t`: real data" in t and "**SYNTHETIC** CT phantoms" in c
    assert ("The setting against the bound: fed / central 0.940 (per seed 0.950, 0.930), goal "
            ">= 0.98: **MISSED**; on `s_ext` 0.940. Over all 4 seeds (0, 1, 2, 3): fed / "
            "central 0.970.") in t
    assert ("fed / central 0.990 (per seed 1.000, 0.980), goal >= 0.98: met. Over all 4 seeds "
            "(0, 1, 2, 3): fed / central 0.945.") in c
    assert "0.760, 0.744" in t and "0.720" not in t  # the new seeds' runs only in its table
    assert bo.REPLICATE_HEADING[:20] not in bo.render(_res(
        _order_part((0.9, 0.88, 0.8, 0.66), 0.6), _steps_part(0.8, 0.7, (0.6, 0.62))))


def test_a_replication_refuses_the_tables_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bo.main(["--seeds", "0", "1", "--replicate-seeds", "1", "3"])
    assert "--replicate-seeds [1] are among --seeds" in capsys.readouterr().err


def test_the_matched_site_batch_gives_fedopts_server_about_the_bounds_steps() -> None:
    one = fl.same_examples(fl.Budget(lr=1e-3), 1)  # 60 x 1 of 8: 480 examples a site
    assert bo.matched_batch(one, 3) == 3 and fl.one_step_budget(one, 3).rounds == 160
    assert bo.matched_batch(one, 2) == 4 and bo.matched_batch(one, 8) == 1
    with pytest.raises(ValueError, match="480 examples per site do not cut into one-step "
                                         "rounds of 7"):
        fl.one_step_budget(one, 7)
    job = bo.matched_job("t", 0, fl.Setup({}, one), 3)
    assert dict(job.options) == {**dict(next(iter(fl.unbounded(fl.fedopt_lr_variant(
        0.001)).values()))), fl.ONE_STEP_BATCH: 3}


def test_the_hydra_presets_are_the_measured_setting() -> None:
    # strategy=fedadam_one_step train=one_step: what the matched row's runs were given
    from unicon_core.hydra_config import load_settings

    lr = 0.001
    job = bo.matched_job("t", 0, fl.Setup({}, fl.same_examples(fl.Budget(lr=lr), 1)), 3)
    lora = [(k, v) for k, v in job.options if k not in fl.BENCH_OPTIONS]
    bench = load_settings([*fl.lora_overrides(job.rule, {}, lora),
                           f"strategy.{fl.NORM_FACTOR}={dict(job.options)[fl.NORM_FACTOR]}"])
    preset = load_settings(["strategy=fedadam_one_step", "train=one_step", f"train.lr={lr}"])
    assert preset.strategy.for_task("t") == bench.strategy.for_task("t")
    assert preset.strategy.for_task("t").server_eta == lr  # eta follows train.lr
    assert preset.strategy.update_norm_factor is None is bench.strategy.update_norm_factor
    assert preset.train.max_steps == 1 and fl.job_budget(fl.Setup({}, fl.same_examples(
        fl.Budget(lr=lr), 1)), job).local_steps == 1


def test_a_run_takes_one_batch_option_at_a_time(tmp_path: Path) -> None:
    setup = fl.site_setup(fl.make_quick_sites(tmp_path / "q"), fl.Budget(), mixed_task="")
    with pytest.raises(ValueError, match="are not combined"):
        fl.run_fed(setup, fl.Job("fed", fl.QUICK_TASK, 0, options=(
            (fl.SITE_BATCH, 2), (fl.ONE_STEP_BATCH, 2))), tmp_path / "r")
    with pytest.raises(ValueError, match="are not combined"):
        fl.run_central(setup, fl.Job("central", fl.QUICK_TASK, 0, options=(
            (fl.SITE_BLOCK, 2), (fl.POOLED_BATCH, 16))), tmp_path / "c")


def test_an_order_below_the_federation_is_named() -> None:
    text = bo.render(_res(_order_part((0.9, 0.8, 0.5), 0.6, local_steps=2),
                          _steps_part(0.8, 0.79, (0.6, 0.6)), synthetic=False))
    rows = _rows(text)
    block2 = next(r for k, r in rows.items() if "(block 2" in k)
    assert "1.33: most of the gap" in block2 and "below the federation itself" in block2
    assert "0.05: little of it: the rest comes from federating" in next(
        r for k, r in rows.items() if "one step of 24" in k)
    head = text[:text.index(bo.ORDER_HEADING)]
    assert "real data" in head and "SYNTHETIC" not in head


@pytest.mark.slow
def test_quick_mode_runs_both_tables_and_puts_the_section_before_forgetting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the wiring, not the foundation: the tiny transformer keeps the 12 runs short
    monkeypatch.setattr(fl, "FOUNDATION_BASE", ("experiment=continual",))
    out = tmp_path / "B.md"
    out.write_text("# Benchmarks\n\n## Federated LoRA (#14)\n\nx\n\n## Forgetting regime (#15)\n"
                   "\ny\n")
    res = bo.main(["--quick", "--seeds", "0", "--replicate-seeds", "1", "--work-dir",
                   str(tmp_path / "w"), "--out", str(out)])
    text = out.read_text()
    assert text.index("## Federated LoRA (#14)\n") < text.index(bo.HEADING) < text.index(
        bo.BEFORE)
    runs = {**res["order"]["jobs"], **res["steps"]["jobs"]}
    assert len(res["order"]["jobs"]) == 4
    assert bo.CT_HEADING.format(task=fl.QUICK_TASK) in text
    ct_matched = [k for k in res["ct"]["jobs"] if k.endswith(
        f"{fl.ONE_STEP_BATCH}-1_seed0")]  # 2 sites' batches of 2: one volume each
    assert len(ct_matched) == 1 and math.isfinite(res["ct"]["jobs"][ct_matched[0]]["value"])
    assert fl.Job("central", fl.QUICK_TASK, 0, options=((fl.POOLED_BATCH, 16),)
                  ).key in res["steps"]["jobs"]  # 2 sites' batches of 8 as one
    for run in runs.values():
        assert math.isfinite(run["value"])
    for key in [*res["order"]["jobs"], fl.Job("central", fl.QUICK_TASK, 0).key]:
        assert f"{runs[key]['value']:.3f}" in text, key
    # the replication: both parts' bound and matched row on the new seed, the tables' reused
    assert bo.REPLICATE_HEADING.format(seeds="1") in text
    assert [len(part["jobs"]) for part in res["replicate"]] == [4, 4]
    assert res["replicate"][0]["jobs"][fl.Job("central", fl.QUICK_TASK, 0).key] == runs[
        fl.Job("central", fl.QUICK_TASK, 0).key]
    new = res["replicate"][1]["jobs"][fl.Job("central", fl.QUICK_TASK, 1).key]
    assert f"{new['value']:.3f}" in text.split(bo.REPLICATE_HEADING.format(seeds="1"))[1]
    bo.main(["--quick", "--seeds", "0", "--work-dir", str(tmp_path / "w"), "--out", str(out)])
    assert out.read_text().count(bo.HEADING) == 1  # a rerun replaces it


def test_a_relative_data_root_is_made_absolute(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    # the validation scoring's run configs refuse a relative site path: main resolves it
    seen: list[Path] = []

    def stop(*args: Any, **kw: Any) -> None:
        seen.append(kw.get("external", {}).get(bo.TASK, [Path("x")])[0])
        raise SystemExit("stopped")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fl, "site_setup", stop)
    with pytest.raises(SystemExit, match="stopped"):
        bo.main(["--data-root", "demo", "--work-dir", str(tmp_path / "w")])
    assert seen == [tmp_path / "demo" / "br35h_ext"]
