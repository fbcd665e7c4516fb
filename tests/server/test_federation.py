"""Whole federated runs over an in-process grid: real ServerApp logic, real ClientApp.

Every message of a run crosses a protobuf round trip and is recorded, so these tests inspect
all of it: only the skill tensors of a site's own task ever leave the site.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from server.federation import SiteQueryError
from tests.server.fedtools import (
    CLS_TASK,
    SURV_TASK,
    THREE_SITES,
    break_label,
    make_sites,
    run_in_process,
    task_spec,
    tiny_overrides,
)
from unicon_core import console
from unicon_core.config import BackboneConfig
from unicon_core.federation.aggregation import slice_task
from unicon_core.federation.checkpoint import load_checkpoint
from unicon_core.federation.exclusions import MAX_REASON_CHARS
from unicon_core.federation.outputs import read_jsonl
from unicon_core.federation.protocol import NUM_EXAMPLES, SummaryKey
from unicon_core.inference.summaries import (
    MAX_SUMMARY_LENGTH,
    MIN_SUMMARY_COUNT,
    pool_summaries,
    read_summaries,
    site_summary,
)
from unicon_core.model import UniconModel
from unicon_core.privacy import PrivacyLedger, epsilon_of, sample_rate, steps_per_round

TASK_OF_SITE = {name: task for name, task, _ in THREE_SITES}


def _skill_keys(task: str) -> set[str]:
    """The task's skill keys, from a model built independently of the run."""
    model = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
    model.add_task(task_spec(task))
    return model.skill_keys(task)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("fed")
    # twice the usual sizes: router statistics need >= ROUTER_MIN_COUNT (20) train examples
    dirs = make_sites(root / "sites", [(name, task, 2 * n) for name, task, n in THREE_SITES])
    grid = run_in_process(tiny_overrides(dirs, root / "run", 2), 3)
    return root / "run", grid


def test_every_message_carries_only_the_sites_task_skill(finished_run: tuple) -> None:
    # Prepare
    _, grid = finished_run
    site_of_node = {}
    keys = {CLS_TASK: _skill_keys(CLS_TASK), SURV_TASK: _skill_keys(SURV_TASK)}
    assert keys[CLS_TASK].isdisjoint({"adapter", "head"}) and keys[CLS_TASK]

    # Execute / Assert: look at every exchange of the run
    kinds = {}
    for ex in grid.exchanges:
        kind = ex.instruction.metadata.message_type
        kinds[kind] = kinds.get(kind, 0) + 1
        assert not ex.reply.has_error(), ex.reply.error.reason
        content = ex.reply.content
        site = content["info"]["site"]
        site_of_node.setdefault(ex.node_id, site)
        assert site_of_node[ex.node_id] == site
        task = TASK_OF_SITE[site]
        assert content["info"]["task"] == task
        # down: only the site's own task's skill
        if kind != "query":
            assert set(ex.instruction.content["skill"].keys()) == keys[task]
        # up: arrays only in train replies, exactly the task's skill keys, float tensors
        arrays = {k: a for rec in content.array_records.values() for k, a in rec.items()}
        if kind == "train":
            assert set(content.array_records) == {"skill"}
            assert set(arrays) == keys[task]
            assert all(a.dtype == "float32" for a in arrays.values())
        elif kind == "query":  # router statistics: 1-D moments over the train split only
            assert set(content.array_records) <= {"summary"}
            assert set(arrays) <= {k.value for k in SummaryKey}
            assert all(len(a.shape) == 1 and a.shape[0] <= MAX_SUMMARY_LENGTH
                       for a in arrays.values())
            assert content["metrics"][NUM_EXAMPLES] >= MIN_SUMMARY_COUNT
        else:
            assert arrays == {}
        # metrics and configs: scalars only (no per-patient lists, no bytes)
        for record in content.metric_records.values():
            assert all(isinstance(v, (int, float)) for v in record.values())
        for record in content.config_records.values():
            assert all(isinstance(v, (str, int, float, bool)) for v in record.values())
    assert kinds == {"query": 3, "train": 6, "evaluate": 6}


def test_router_summaries_are_pooled_exactly_from_the_sites_train_splits(
    finished_run: tuple,
) -> None:
    from unicon_core.data import open_site

    # Prepare: what each site would compute locally, pooled by hand
    run_dir, _ = finished_run
    reports = []
    for name, task, _ in THREE_SITES:
        site = open_site(run_dir.parent / "sites" / name)
        model = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
        model.add_task(site.task_spec)
        arrays, count = site_summary(site, model)
        reports.append((task, arrays, count))
    expected, expected_stats = pool_summaries(reports)
    # Execute
    loaded = read_summaries(run_dir)
    # Assert
    assert loaded is not None
    prototypes, stats, raw = loaded
    assert set(prototypes) == {CLS_TASK, SURV_TASK}
    for task, proto in expected.items():
        np.testing.assert_allclose(prototypes[task].mean, proto.mean, rtol=1e-12)
        assert prototypes[task].count == proto.count
    np.testing.assert_allclose(stats[SURV_TASK][0], expected_stats[SURV_TASK][0], rtol=1e-12)
    assert raw["sites"][CLS_TASK] == ["site_a", "site_b"]


def test_run_folder_holds_results_checkpoint_logs_and_plots(finished_run: tuple) -> None:
    run_dir, _ = finished_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rounds"] == 2
    assert results["synthetic"] == [CLS_TASK, SURV_TASK]
    assert set(results["tasks"]) == {CLS_TASK, SURV_TASK}
    assert set(results["tasks"][CLS_TASK]["per_site"]) == {"site_a", "site_b"}
    assert results["tasks"][SURV_TASK]["metric"] == "c_index"
    comm = results["communication"]
    assert 0 < comm["bytes_up_per_site_round"] < comm["full_model_bytes"]
    assert comm["bytes_down_per_site_round"] > 0
    rows = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["sites"][s]["bytes_up"] > 0 for r in rows for s in TASK_OF_SITE)
    assert rows[0]["sites"]["site_b"]["train"]["num-examples"] == 24  # 3 steps x 8, not batches
    assert load_checkpoint(run_dir).round == 2
    timing = results["timing"]
    assert timing["rounds_run"] == 2 and timing["query_s"] > 0 and timing["rounds_s"] > 0
    assert abs(timing["started"] - rows[0]["time"]) < timing["query_s"] + timing["rounds_s"]
    backbone = results["backbone"]  # which foundation, how big, whether pretrained, its hash
    assert backbone["name"] == "transformer" and backbone["pretrained"] is False
    assert backbone["params"] > 0 and len(backbone["hash"]) == 64
    assert results["device"]["train.device"] == "auto"
    assert set(results["device"]["sites"]) == {"site_a", "site_b", "site_c"}
    assert {p.name for p in (run_dir / "plots").iterdir()} == {"metrics.png", "bytes.png"}
    assert (run_dir / "config.yaml").is_file() and (run_dir.parent / "latest").exists()
    tasks = json.loads((run_dir / "tasks.json").read_text())
    assert tasks[CLS_TASK]["sites"] == ["site_a", "site_b"] and "spec" in tasks[SURV_TASK]


def test_single_site_task_still_trains(finished_run: tuple) -> None:
    run_dir, _ = finished_run
    final = load_checkpoint(run_dir).arrays
    model = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
    model.add_task(task_spec(SURV_TASK))
    initial = {k: v.numpy() for k, v in model.skill_state_dict(SURV_TASK).items()}
    trained = slice_task(final, SURV_TASK)
    assert any(not np.array_equal(trained[k], initial[k]) for k in initial)


def test_resume_ends_with_the_same_skills(tmp_path: Path) -> None:
    # Prepare
    dirs = make_sites(tmp_path / "sites", THREE_SITES)

    # Execute: 3 rounds straight; 2 rounds, then resume to 3 in the same folder
    run_in_process(tiny_overrides(dirs, tmp_path / "straight", 3), 3)
    run_in_process(tiny_overrides(dirs, tmp_path / "resumed", 2), 3)
    run_in_process(tiny_overrides(dirs, tmp_path / "resumed", 3, "resume=true"), 3)

    # Assert
    straight = load_checkpoint(tmp_path / "straight")
    resumed = load_checkpoint(tmp_path / "resumed")
    assert straight.round == resumed.round == 3
    assert straight.arrays.keys() == resumed.arrays.keys()
    for key, value in straight.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[key], value, err_msg=key)
    assert [r["round"] for r in read_jsonl(tmp_path / "resumed" / "rounds.jsonl")] == [1, 2, 3]


def test_dp_accounts_epsilon_and_stops_sites_at_their_budget(tmp_path: Path) -> None:
    # Prepare: a budget that site_a (12 train rows -> 2 steps at q=1/2) meets in one round
    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    noise, batch, max_steps = 1.0, 8, 3
    round_a = [(noise, sample_rate(12, batch), steps_per_round(12, batch, 1, max_steps))]
    budget = epsilon_of(round_a, 1e-5) * 1.01
    overrides = tiny_overrides(dirs, tmp_path / "run", 3, "privacy=dp",
                               f"privacy.noise_multiplier={noise}",
                               f"privacy.epsilon_budget={budget}")

    # Execute
    grid = run_in_process(overrides, 3)

    # Assert: site_a trained once, then said it stops; nobody exceeds the budget
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    assert rows[0]["sites"]["site_a"]["status"] == "trained"
    assert rows[1]["sites"]["site_a"]["status"] == "budget-exhausted"
    assert "budget" in rows[1]["sites"]["site_a"]["reason"]
    assert "site_a" in results["stopped"]
    train_to_a = [ex for ex in grid.exchanges if ex.instruction.metadata.message_type == "train"
                  and ex.reply.content["info"]["site"] == "site_a"]
    assert len(train_to_a) == 2  # round 1 trained, round 2 refused, round 3 not asked
    for site, privacy in results["privacy"].items():
        assert privacy["epsilon"] <= budget
        assert privacy["delta"] == 1e-5
        ledger = PrivacyLedger.load(tmp_path / "run" / "sites" / site, 1e-5)
        assert ledger.epsilon == pytest.approx(privacy["epsilon"])
    assert results["privacy"]["site_a"]["epsilon"] == pytest.approx(epsilon_of(round_a, 1e-5))


def test_site_on_another_foundation_is_refused_clearly(tmp_path: Path) -> None:
    # Prepare: the sites build their backbone from another seed
    dirs = make_sites(tmp_path / "sites", THREE_SITES)

    # Execute / Assert: no site can join, so the run cannot start, and says why
    with pytest.raises(SiteQueryError, match="foundation"):
        run_in_process(tiny_overrides(dirs, tmp_path / "run", 1), 3, client_overrides=["seed=1"])


def test_invalid_site_data_excludes_that_site_and_the_others_continue(tmp_path: Path) -> None:
    # Prepare: break one site's manifest
    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    break_label(dirs[1])

    # Execute
    with console.log_file(tmp_path / "flower.log"):
        run_in_process(tiny_overrides(dirs, tmp_path / "run", 1), 3)

    # Assert: site_b is reported with the problem; site_a and site_c trained
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    [(who, reason)] = results["excluded"].items()
    assert who == "site_b" and "label" in reason  # keyed by the site's name, short reason
    assert "Traceback" not in reason and len(reason) <= MAX_REASON_CHARS
    assert str(dirs[1]) not in reason  # no path of the site's leaves it ...
    records = re.split(r"^(?=[A-Z]+ \d{4}-)", (tmp_path / "flower.log").read_text(), flags=re.M)
    [own] = [r for r in records if "site site_b cannot join the run" in r]
    assert str(dirs[1]) in own and "unicon validate" in own  # ... its own log has them
    assert set(results["tasks"][CLS_TASK]["per_site"]) == {"site_a"}
    row = read_jsonl(tmp_path / "run" / "rounds.jsonl")[0]
    assert set(row["sites"]) == {"site_a", "site_c"}


def test_without_a_val_split_sites_report_train_metrics_and_the_test_split_still(
    tmp_path: Path,
) -> None:
    # Prepare / Execute: no held-out report after training, evaluation every 2nd round of 3
    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    run_in_process(tiny_overrides(dirs, tmp_path / "run", 3, "federation.val_split=null",
                                  "federation.evaluate_every=2"), 3)

    # Assert: training replies carry no val_ metric; rounds 2 and 3 (the last) evaluate
    rows = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    trained = [row["sites"]["site_a"]["train"] for row in rows]
    assert all("train_loss" in t and not any(k.startswith("val_") for k in t) for t in trained)
    assert [("eval" in row["sites"]["site_a"]) for row in rows] == [False, True, True]
    assert all(site["status"] == "trained" for row in rows for site in row["sites"].values())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["tasks"][CLS_TASK]["per_site"]) == {"site_a", "site_b"}


def test_invalid_site_data_stops_the_run_below_min_sites(tmp_path: Path) -> None:
    # Prepare: break one site's manifest and require all three sites
    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    (dirs[1] / "manifest.csv").write_text("id,split\n")

    # Execute / Assert
    with pytest.raises(SiteQueryError, match="min_sites=3"):
        run_in_process(tiny_overrides(dirs, tmp_path / "run", 1, "federation.min_sites=3"), 3)


def test_initial_skills_are_the_first_rounds_global_and_checked(tmp_path: Path) -> None:
    # Prepare: skills after a one-round run, to start another run from
    from client.client_app import make_client_app
    from server.federation import run_federation
    from unicon_core.hydra_config import load_settings
    from unicon_flower.inprocess import InProcessGrid

    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    run_in_process(tiny_overrides(dirs, tmp_path / "first", 1), 3)
    start = slice_task(load_checkpoint(tmp_path / "first").arrays, CLS_TASK)
    overrides = tiny_overrides(dirs, tmp_path / "second", 1)
    grid = InProcessGrid(make_client_app(overrides), 3)

    # Execute
    run_federation(grid, load_settings(overrides), initial={CLS_TASK: start})

    # Assert: every first train instruction of the task carries exactly those skills
    first_train = [ex.instruction for ex in grid.exchanges
                   if ex.instruction.metadata.message_type == "train"
                   and ex.reply.content["info"]["task"] == CLS_TASK]
    assert len(first_train) == 2
    for message in first_train:
        sent = {k: a.numpy() for k, a in message.content["skill"].items()}
        assert sent.keys() == start.keys()
        for key, value in start.items():
            np.testing.assert_array_equal(sent[key], value, err_msg=key)
    # a wrong layout or an unknown task is refused, naming it
    bad = {k: v[..., :1] if v.ndim else v for k, v in start.items()}
    with pytest.raises(ValueError, match=CLS_TASK):
        run_federation(InProcessGrid(make_client_app(overrides), 3), load_settings(overrides),
                       initial={CLS_TASK: bad})
    with pytest.raises(ValueError, match="no_such_task"):
        run_federation(InProcessGrid(make_client_app(overrides), 3), load_settings(overrides),
                       initial={"no_such_task": start})
