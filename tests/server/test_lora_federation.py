"""Issue #14 end to end over the in-process grid: deltas on the wire, LoRA rules, mixed ranks,
server optimisers, FedProx and sampling, each through the real ServerApp and ClientApp."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.server.fedtools import (
    CLS_TASK,
    SURV_TASK,
    THREE_SITES,
    make_sites,
    run_in_process,
    task_spec,
    tiny_overrides,
)
from unicon_core.config import BackboneConfig
from unicon_core.federation.aggregation import slice_task
from unicon_core.federation.checkpoint import load_checkpoint
from unicon_core.federation.lora_rules import a_keys
from unicon_core.federation.outputs import read_jsonl
from unicon_core.federation.protocol import ConfigKey, RecordKey
from unicon_core.model import UniconModel

FIVE_SITES = [("site_a", CLS_TASK, 24), ("site_b", CLS_TASK, 36), ("site_d", CLS_TASK, 24),
              ("site_e", CLS_TASK, 24), ("site_c", SURV_TASK, 24)]


def _initial(task: str) -> dict[str, np.ndarray]:
    model = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
    model.add_task(task_spec(task))
    return {k: v.numpy() for k, v in model.skill_state_dict(task).items()}


def _run(
    tmp_path: Path, name: str, *extra: str, layout: list = THREE_SITES, rounds: int = 2
) -> tuple:
    dirs = make_sites(tmp_path / "sites", layout) if not (tmp_path / "sites").exists() else [
        tmp_path / "sites" / n for n, *_ in layout]
    grid = run_in_process(tiny_overrides(dirs, tmp_path / name, rounds, *extra), len(layout))
    for ex in grid.exchanges:
        assert not ex.reply.has_error(), ex.reply.error.reason
    return load_checkpoint(tmp_path / name).arrays, grid, read_jsonl(
        tmp_path / name / "rounds.jsonl")


def test_explicit_defaults_change_nothing_on_the_wire_or_in_the_skills(tmp_path: Path) -> None:
    """Today's behaviour, bit for bit: the same skills after two rounds whether the issue-#14
    options are absent or spelt out at their defaults, whole skills in every reply and no new
    instruction key. (The same run also matched the code before issue #14 byte for byte:
    checkpoint digest 725503cd... at ded5151 and after.)"""
    base, grid, _ = _run(tmp_path, "base")
    explicit, _, _ = _run(
        tmp_path, "explicit",
        "++strategy.lora={delta:false,codec:none,lora_rule:naive,server_opt:fedavg,fraction:1.0,"
        "min_sites:1,prox_mu:0.0}", f"++strategy.lora_tasks={{{CLS_TASK}:{{lora_rule:naive}}}}")
    assert base.keys() == explicit.keys()
    for key, value in base.items():
        np.testing.assert_array_equal(explicit[key], value, err_msg=key)
    new_keys = {ConfigKey.DELTA_CODEC.value, ConfigKey.LORA_RULE.value, ConfigKey.PROX_MU.value}
    for ex in grid.exchanges:
        config = ex.instruction.content.config_records.get(RecordKey.CONFIG.value, {})
        assert not new_keys & set(config)
        if ex.instruction.metadata.message_type == "train":
            assert RecordKey.DELTA.value not in ex.reply.content.array_records
            assert RecordKey.SKILL.value in ex.reply.content.array_records


def test_uncompressed_deltas_match_whole_skills_within_rounding(tmp_path: Path) -> None:
    """One round: within float32 rounding of the whole-skill run (a second round of Adam,
    whose first steps are ~lr x sign(gradient), can amplify a rounding where a gradient is ~0,
    so the comparison is after the wire round trip, not after more training)."""
    base, _, _ = _run(tmp_path, "base", rounds=1)
    delta, grid, _ = _run(tmp_path, "delta", "++strategy.lora={delta:true}", rounds=1)
    for key, value in base.items():
        np.testing.assert_allclose(delta[key], value, rtol=1e-6, atol=1e-8, err_msg=key)
    replies = [ex.reply for ex in grid.exchanges if ex.instruction.metadata.message_type ==
               "train"]
    assert replies and all(RecordKey.DELTA.value in r.content.array_records for r in replies)
    assert all(RecordKey.SKILL.value not in r.content.array_records for r in replies)


def test_compressed_deltas_cut_the_serialized_bytes_of_a_realistic_skill() -> None:
    """Bytes of the serialized records, as the ledger counts them, for adapter-sized tensors
    (the tiny test skills are dominated by Flower's per-array overhead, see docs)."""
    from flwr.app import Array, ArrayRecord, RecordDict

    from unicon_core.federation.compression import Codec, encode_delta
    from unicon_flower.accounting import content_bytes

    rng = np.random.default_rng(0)
    ref = {f"adapter.m{i}.lora_{x}.weight": rng.normal(size=shape).astype(np.float32)
           for i in range(4) for x, shape in (("A", (8, 768)), ("B", (768, 8)))}
    local = {k: v + rng.normal(scale=1e-2, size=v.shape).astype(np.float32)
             for k, v in ref.items()}

    def size(codec: Codec) -> int:
        payload, _ = encode_delta(local, ref, codec)
        return content_bytes(RecordDict({"delta": ArrayRecord(
            {k: Array(v) for k, v in payload.items()})}))

    full = size(Codec("none"))
    assert size(Codec("fp16")) < 0.55 * full
    assert size(Codec("int8", per_row=True)) < 0.35 * full
    assert size(Codec("topk", topk_fraction=0.05)) < 0.15 * full


def test_packed_deltas_equal_unpacked_ones_with_fewer_bytes(tmp_path: Path) -> None:
    """Packing changes only the framing: through the real apps (the egress guard and the
    server's checks included), the same skills bit for bit as unpacked deltas, every reply's
    delta one flat array per dtype, and fewer bytes up; with int8 and FFA it runs too."""
    unpacked, _, rows = _run(tmp_path, "unpacked", "++strategy.lora={delta:true}")
    packed, grid, packed_rows = _run(tmp_path, "packed", "++strategy.lora={delta:true,pack:true}")
    for key, value in unpacked.items():
        np.testing.assert_array_equal(packed[key], value, err_msg=key)
    deltas = [ex.reply.content.array_records[RecordKey.DELTA.value] for ex in grid.exchanges
              if ex.instruction.metadata.message_type == "train"]
    assert deltas and all(list(d.keys()) == ["#packed.float32"] for d in deltas)

    def up(run_rows: list) -> int:
        return sum(e.get("bytes_up", 0) for r in run_rows for e in r["sites"].values())

    assert up(packed_rows) < up(rows)
    final, grid, _ = _run(tmp_path, "int8", "++strategy.lora={delta:true,codec:int8,"
                          "per_row:true,pack:true,lora_rule:ffa}")
    start, trained = _initial(CLS_TASK), slice_task(final, CLS_TASK)
    assert all(np.array_equal(trained[k], start[k]) for k in a_keys(start))
    assert any(not np.array_equal(trained[k], start[k]) for k in start)


def test_lossy_deltas_run_end_to_end(tmp_path: Path) -> None:
    """Both directions compressed through the real apps (the egress guard included): no site
    fails, every site's downlink copy equals the server's (the site checks its digest)."""
    for name, option in [("int8", "{delta:true,codec:int8,per_row:true,downlink_codec:int8}"),
                         ("topk", "{delta:true,codec:topk,topk_fraction:0.05}")]:
        final, grid, rows = _run(tmp_path, name, f"++strategy.lora={option}")
        assert all(e.get("bytes_up", 0) > 0 for r in rows for e in r["sites"].values())
        downlinks = [ex for ex in grid.exchanges
                     if RecordKey.DOWNLINK.value in ex.instruction.content.array_records]
        assert bool(downlinks) == (name == "int8")  # after each site's first message
        start, trained = _initial(CLS_TASK), slice_task(final, CLS_TASK)
        assert any(not np.array_equal(trained[k], start[k]) for k in start)


def test_ffa_keeps_every_a_factor_at_its_initialisation(tmp_path: Path) -> None:
    final, grid, rows = _run(tmp_path, "ffa", "++strategy.lora={lora_rule:ffa,delta:true}")
    _, _, naive_rows = _run(tmp_path, "naive", "++strategy.lora={delta:true}")
    for ex in grid.exchanges:
        if ex.instruction.metadata.message_type == "train":  # A never travels back
            assert not a_keys(list(ex.reply.content.array_records[RecordKey.DELTA.value].keys()))

    def up(rows: list) -> int:
        return sum(s.get("bytes_up", 0) for r in rows for s in r["sites"].values())

    assert up(rows) < up(naive_rows)
    for task in (CLS_TASK, SURV_TASK):
        start, trained = _initial(task), slice_task(final, task)
        keys = a_keys(start)
        assert keys
        for key in keys:
            np.testing.assert_array_equal(trained[key], start[key], err_msg=key)
        assert any(not np.array_equal(trained[k], start[k]) for k in start if k not in keys)


def test_svd_rule_with_a_lower_rank_site_and_fedadam(tmp_path: Path) -> None:
    final, grid, rows = _run(
        tmp_path, "svd",
        f"++strategy.lora_tasks={{{CLS_TASK}:{{lora_rule:svd,site_ranks:{{site_a:1}},"
        "server_opt:fedadam,delta:true,codec:fp16}}")
    trained = slice_task(final, CLS_TASK)
    assert all(trained[k].shape[0] == 2 for k in a_keys(trained))  # the task's rank
    sent_a = [ex for ex in grid.exchanges if ex.instruction.metadata.message_type == "train"
              and ex.reply.content["info"]["site"] == "site_a"]
    assert sent_a
    for ex in sent_a:
        skill = ex.instruction.content.array_records[RecordKey.SKILL.value]
        assert all(skill[k].shape[0] == 1 for k in a_keys(list(skill.keys())))
    errors = [r["tasks"][CLS_TASK]["svd_truncation_error"] for r in rows]
    assert all(0.0 <= e < 1.0 for e in errors)


def test_fedsa_sends_each_site_its_own_b(tmp_path: Path) -> None:
    _, grid, _ = _run(tmp_path, "fedsa", "++strategy.lora={lora_rule:fedsa}")
    evals = [ex for ex in grid.exchanges if ex.instruction.metadata.message_type == "evaluate"
             and ex.reply.content["info"]["task"] == CLS_TASK]
    skills = {ex.reply.content["info"]["site"]: ex.instruction.content.array_records[
        RecordKey.SKILL.value] for ex in evals}
    b_key = next(k for k in skills["site_a"] if k.endswith("lora_B.weight"))
    a_key = b_key.replace("lora_B", "lora_A")
    assert not np.array_equal(skills["site_a"][b_key].numpy(), skills["site_b"][b_key].numpy())
    np.testing.assert_array_equal(skills["site_a"][a_key].numpy(),
                                  skills["site_b"][a_key].numpy())


def test_fedprox_and_fedavgm_run(tmp_path: Path) -> None:
    final, _, _ = _run(tmp_path, "prox", "++strategy.lora={prox_mu:0.1,server_opt:fedavgm}")
    start, trained = _initial(CLS_TASK), slice_task(final, CLS_TASK)
    assert any(not np.array_equal(trained[k], start[k]) for k in start)


def test_sampling_draws_a_fraction_never_below_the_minimum(tmp_path: Path) -> None:
    _, grid, rows = _run(
        tmp_path, "sampled", f"++strategy.lora_tasks={{{CLS_TASK}:{{fraction:0.25,min_sites:2}}}}",
        layout=FIVE_SITES)
    for row in rows:
        cls_sites = [s for s, e in row["sites"].items() if e["task"] == CLS_TASK]
        skipped = [s for s in cls_sites if row["sites"][s].get("status") == "not-sampled"]
        assert len(cls_sites) - len(skipped) == 2
        assert row["sites"]["site_c"].get("status") != "not-sampled"
        assert all("train" not in row["sites"][s] for s in skipped)
    trains = [ex for ex in grid.exchanges if ex.instruction.metadata.message_type == "train"]
    assert len(trains) == 2 * (2 + 1)  # sites not drawn get no train message at all
    asked: dict[tuple[int, str], set[str]] = {}
    for ex in grid.exchanges:
        if ex.instruction.metadata.message_type not in ("train", "evaluate"):
            continue  # the query round
        rnd = int(ex.instruction.content["config"][ConfigKey.SERVER_ROUND.value])
        asked.setdefault((rnd, ex.instruction.metadata.message_type), set()).add(
            str(ex.reply.content["info"]["site"]))
    assert asked[1, "evaluate"] == asked[1, "train"]  # not drawn: no evaluate message either
    assert asked[2, "evaluate"] == {name for name, *_ in FIVE_SITES}  # the last: everyone
    results = json.loads((tmp_path / "sampled" / "results.json").read_text())
    assert set(results["tasks"][CLS_TASK]["per_site"]) == {"site_a", "site_b", "site_d",
                                                           "site_e"}


def test_bad_lora_options_fail_clearly() -> None:
    from unicon_core.federation.config import StrategyConfig

    with pytest.raises(ValueError, match="delta=true"):
        StrategyConfig(lora={"codec": "int8"})
    with pytest.raises(ValueError, match="unknown option"):
        StrategyConfig(lora={"codek": "int8"})
    with pytest.raises(ValueError, match=r"strategy\.lora\.pack.*delta=true"):
        StrategyConfig(lora={"pack": True})
    with pytest.raises(ValueError, match="svd"):
        StrategyConfig(lora_tasks={"t": {"lora_rule": "ffa", "site_ranks": {"s": 1}}})
    with pytest.raises(ValueError, match=r"strategy\.lora\.scaffold.*naive or ffa"):
        StrategyConfig(lora_tasks={"t": {"lora_rule": "fedsa", "scaffold": True}})
    with pytest.raises(ValueError, match="without site_ranks"):
        StrategyConfig(lora={"scaffold": True, "site_ranks": {"s": 1}})
    with pytest.raises(ValueError, match="per_task_median is robust"):
        StrategyConfig(name="per_task_median", lora_tasks={"t": {"scaffold": True}})
    with pytest.raises(ValueError, match="true or false"):
        StrategyConfig(lora={"scaffold": "yes"})
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"strategy\.lora\.site_sgd_lr.*finite lr >= 0"):
            StrategyConfig(lora={"site_sgd_lr": bad})


def test_ffa_with_whole_skills_leaves_a_out_too(tmp_path: Path) -> None:
    final, grid, _ = _run(tmp_path, "ffa_skill", "++strategy.lora={lora_rule:ffa}")
    for ex in grid.exchanges:
        if ex.instruction.metadata.message_type == "train":
            keys = list(ex.reply.content.array_records[RecordKey.SKILL.value].keys())
            assert keys and not a_keys(keys)
    start, trained = _initial(CLS_TASK), slice_task(final, CLS_TASK)
    for key in a_keys(start):
        np.testing.assert_array_equal(trained[key], start[key], err_msg=key)


def test_a_resumed_run_restores_fedadam_moments_and_fedsa_b_factors(tmp_path: Path) -> None:
    """The real apps: two rounds straight against one round, a stop and a resume to two; the
    checkpoint carries the server optimiser's moments and each site's B, so both end equal."""
    options = ("++strategy.lora={server_opt:fedadam}",
               f"++strategy.lora_tasks={{{CLS_TASK}:{{lora_rule:fedsa}}}}")
    straight, _, _ = _run(tmp_path, "straight", *options, rounds=2)
    _run(tmp_path, "resumed", *options, rounds=1)
    assert load_checkpoint(tmp_path / "resumed").state  # round 1 saved the server's state
    resumed, _, _ = _run(tmp_path, "resumed", *options, "resume=true", rounds=2)
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-6, atol=1e-6, err_msg=key)
    saved = load_checkpoint(tmp_path / "straight").state
    again = load_checkpoint(tmp_path / "resumed").state
    assert saved.keys() == again.keys()
    assert any(k.startswith("fedsa/site_a/") for k in saved)
    assert any(k.startswith(f"opt/{SURV_TASK}/v/") for k in saved)
    for key, value in saved.items():
        np.testing.assert_allclose(again[key], value, rtol=1e-6, atol=1e-6, err_msg=key)


def test_downlink_composes_with_mixed_ranks_and_fedsa(tmp_path: Path) -> None:
    """Each site's own skill (its rank, its FedSA B) travels as a change from what it holds;
    no site fails (a wrong base would), and the lower-rank site holds its rank."""
    _, grid, _ = _run(
        tmp_path, "mixed",
        f"++strategy.lora_tasks={{{CLS_TASK}:{{lora_rule:svd,site_ranks:{{site_a:1}},"
        f"delta:true,downlink_codec:int8}},{SURV_TASK}:{{lora_rule:fedsa,downlink_codec:fp16}}}}")
    kinds = {(ex.reply.content["info"]["site"], ex.instruction.metadata.message_type,
              next(iter(ex.instruction.content.array_records))) for ex in grid.exchanges
             if ex.instruction.metadata.message_type in ("train", "evaluate")}
    for site in ("site_a", "site_b", "site_c"):
        assert (site, "train", RecordKey.SKILL.value) in kinds  # first contact: whole
        assert (site, "evaluate", RecordKey.DOWNLINK.value) in kinds
    held = {ex.reply.content["info"]["site"]: ex.instruction.content.array_records[
        RecordKey.DOWNLINK.value] for ex in grid.exchanges
        if RecordKey.DOWNLINK.value in ex.instruction.content.array_records}
    factors = [k for k in a_keys(list(held["site_a"].keys())) if "#" not in k]
    assert factors and all(held["site_a"][k].shape[0] == 1 for k in factors)


def test_resume_says_site_residuals_and_downlink_copies_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What lives at the sites (per Flower run) is not resumed, and the server says so; the
    resumed run still works: each site's first downlink message carries the whole skill."""
    option = "++strategy.lora={delta:true,codec:topk,downlink_codec:int8}"
    _run(tmp_path, "run", option, rounds=1)
    caplog.clear()
    _, grid, _ = _run(tmp_path, "run", option, "resume=true", rounds=2)
    assert "restart the sites' error-feedback residuals at zero" in caplog.text
    first = {}
    for ex in grid.exchanges:
        if ex.instruction.metadata.message_type in ("train", "evaluate"):
            first.setdefault(ex.node_id, next(iter(ex.instruction.content.array_records)))
    assert set(first.values()) == {RecordKey.SKILL.value}


def test_resume_says_scaffold_c_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A resumed SCAFFOLD task says that its c and the sites' c_i restart at zero, also when
    the checkpoint (written without c) gives no other hint; the resumed rounds still run."""
    option = "++strategy.lora={scaffold:true}"
    _run(tmp_path, "run", option, rounds=1)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _, _, rounds = _run(tmp_path, "run", option, "resume=true", rounds=2)
    assert "restart SCAFFOLD's c at zero" in caplog.text
    assert [int(r["round"]) for r in rounds] == [1, 2]


def test_sites_keep_their_optimiser_state_between_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.keep_optimizer_state=true``: from round 2 every site resumes its own moments
    (never in a reply: the egress guard would refuse an unknown record); off, none resume."""
    import unicon_core.training as training

    given: list[bool] = []
    real = training.train_task

    def spy(*args: object, **kw: object) -> object:
        given.append(bool(kw.get("optimizer_state")))
        result = real(*args, **kw)
        assert result.state_refused == ""
        return result

    monkeypatch.setattr(training, "train_task", spy)
    _run(tmp_path, "kept", "train.keep_optimizer_state=true")
    assert given == [False] * 3 + [True] * 3  # 3 sites, 2 rounds
    given.clear()
    _run(tmp_path, "fresh")
    assert given == [False] * 6


def test_fedopt_split_sites_take_plain_sgd_steps_at_the_servers_lr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``site_sgd_lr`` on one task: its sites train with plain SGD at that lr (no momentum, no
    weight decay), the other task's site with its train config; the server's FedAdam takes
    the adaptive step. A site refuses a lr that is not a finite number > 0."""
    import unicon_core.training as training
    from client.site_runner import site_train_config
    from unicon_core.config import TrainConfig

    used: dict[str, set[tuple]] = {}
    real = training.train_task

    def spy(model: object, task: str, loader: object, cfg: TrainConfig, **kw: object) -> object:
        used.setdefault(task, set()).add((cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay))
        return real(model, task, loader, cfg, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "train_task", spy)
    final, grid, _ = _run(tmp_path, "fedopt", "++strategy.lora={delta:true}",
                          f"++strategy.lora_tasks={{{CLS_TASK}:{{site_sgd_lr:0.5,"
                          "server_opt:fedadam}}")
    assert used[CLS_TASK] == {("sgd", 0.5, 0.0, 0.0)}
    assert used[SURV_TASK] == {(TrainConfig().optimizer, 0.002, TrainConfig().momentum,
                                TrainConfig().weight_decay)}
    for ex in grid.exchanges:
        config = ex.instruction.content.config_records.get(RecordKey.CONFIG.value, {})
        if ex.instruction.metadata.message_type == "train":
            assert (ConfigKey.SITE_SGD_LR.value in config) == (config["task"] == CLS_TASK)
    start, trained = _initial(CLS_TASK), slice_task(final, CLS_TASK)
    assert any(not np.array_equal(trained[k], start[k]) for k in start)
    for bad in (0.0, -1.0, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="site-sgd-lr"):
            site_train_config(TrainConfig(), {ConfigKey.SITE_SGD_LR.value: bad})


def test_scaffold_end_to_end_sites_send_changes_and_get_the_mean_back(tmp_path: Path) -> None:
    """SCAFFOLD through the real apps: round 1's instructions carry c = 0 over the skill, every
    train reply carries the site's c_i change (through the egress guard), round 2 sends each
    task c = the mean of its sites' changes; the corrected round 2 differs from plain FedAvg's
    (round 1, with c = c_i = 0, does not)."""
    base, _, _ = _run(tmp_path, "plain")
    final, grid, rows = _run(tmp_path, "scaffold", "++strategy.lora={scaffold:true}")
    trains = [ex for ex in grid.exchanges if ex.instruction.metadata.message_type == "train"]
    by_round: dict[int, list] = {}
    for ex in trains:
        rnd = int(ex.instruction.content[RecordKey.CONFIG.value][ConfigKey.SERVER_ROUND.value])
        by_round.setdefault(rnd, []).append(ex)
    changes: dict[str, list[dict[str, np.ndarray]]] = {}
    for ex in by_round[1]:
        sent = record_arrays(ex.instruction.content[RecordKey.CONTROL.value])
        skill = record_arrays(ex.instruction.content[RecordKey.SKILL.value])
        assert set(sent) == set(skill) and not any(v.any() for v in sent.values())
        change = record_arrays(ex.reply.content[RecordKey.CONTROL.value])
        assert set(change) == set(skill) and any(v.any() for v in change.values())
        task = str(ex.reply.content[RecordKey.INFO.value]["task"])
        changes.setdefault(task, []).append(change)
    for ex in by_round[2]:
        task = str(ex.reply.content[RecordKey.INFO.value]["task"])
        sent = record_arrays(ex.instruction.content[RecordKey.CONTROL.value])
        for key, value in sent.items():
            want = sum(c[key].astype(np.float64) for c in changes[task]) / len(changes[task])
            np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-7, err_msg=key)
    assert all("control_norm" in row["tasks"][CLS_TASK] for row in rows)
    cls_base, cls_final = slice_task(base, CLS_TASK), slice_task(final, CLS_TASK)
    assert any(not np.allclose(cls_final[k], cls_base[k], atol=1e-7) for k in cls_base)


def record_arrays(record: object) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}  # type: ignore[attr-defined]


def test_logit_adjustment_reaches_each_classification_site_with_its_own_prior(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``logit_adjust`` for the classification task: its sites train with their own train
    split's log prior (computed at the site), the survival site without; a survival site asked
    for it would refuse with a clear error."""
    import unicon_core.training as training
    from unicon_core.data import open_site
    from unicon_core.training.losses import logit_prior_shift

    shifts: list[object] = []
    real = training.train_task

    def spy(*args: object, **kw: object) -> object:
        shift = kw.get("logit_shift")
        shifts.append(None if shift is None else tuple(shift.tolist()))  # type: ignore[union-attr]
        return real(*args, **kw)

    monkeypatch.setattr(training, "train_task", spy)
    make_sites(tmp_path / "sites", THREE_SITES)
    skew_train_labels(tmp_path / "sites" / "site_a")  # two priors, so each is the site's own
    _, grid, _ = _run(tmp_path, "adjusted", f"++strategy.lora_tasks={{{CLS_TASK}:"
                      "{logit_adjust:true}}", rounds=1)
    sites = {name: open_site(tmp_path / "sites" / name) for name, *_ in THREE_SITES}
    want = {tuple(logit_prior_shift(s.class_counts("train")).tolist())
            for s in sites.values() if s.task_spec.name == CLS_TASK}
    assert len(want) == 2 and set(shifts) == want | {None} and len(shifts) == 3
    for ex in grid.exchanges:
        if ex.instruction.metadata.message_type == "train":
            config = ex.instruction.content[RecordKey.CONFIG.value]
            is_cls = config[ConfigKey.TASK.value] == CLS_TASK
            assert (ConfigKey.LOGIT_ADJUST.value in config) is is_cls
    with pytest.raises(ValueError, match="class counts need a classification task"):
        next(s for s in sites.values() if s.task_spec.name == SURV_TASK).class_counts("train")


def test_logit_adjustment_for_a_survival_task_is_refused_before_any_round(
    tmp_path: Path,
) -> None:
    """``lora:`` applies to every task: the server refuses at start, naming the survival task,
    instead of sending its site an instruction it would refuse every round."""
    with pytest.raises(ValueError, match=rf"\['{SURV_TASK}'\], which are not classifications "
                       r"\(\w+: survival\)"):
        _run(tmp_path, "everywhere", "++strategy.lora={logit_adjust:true}", rounds=1)
    assert not (tmp_path / "everywhere" / "rounds.jsonl").exists()


def skew_train_labels(site: Path) -> None:
    """Label every train row of a classification site 1 but its first (a skewed prior)."""
    import csv

    path = site / "manifest.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train"]
    for i, row in enumerate(train):
        row["label"] = "0" if i == 0 else "1"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
