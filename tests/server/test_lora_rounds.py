"""Issue #14 across rounds, with Flower's own round loop (``Strategy.start``) over the
in-process grid and scripted sites: sites not drawn get no message (the last round evaluates
everyone), downlink compression keeps the server's and each site's copy equal bit for bit, and
a checkpoint restores the server optimiser state and FedSA's B factors exactly.

The scripted site answers like a real one (the real site-side downlink functions of
:mod:`client.site_runner`, every message serialised as on the wire); its "training" adds a
small change seeded by (site, round), so two runs are comparable value for value.
"""

from __future__ import annotations

import copy
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.site_runner import DOWNLINK_STATE, keep_downlink, received_skill
from server.strategies.per_task_fedavg import PerTaskFedAvg, SiteNode
from unicon_core.federation.aggregation import prefix_task, slice_task
from unicon_core.federation.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from unicon_core.federation.compression import Codec, encode_delta
from unicon_core.federation.config import TaskFederation
from unicon_core.federation.outputs import build_results
from unicon_core.federation.protocol import ConfigKey, InfoKey, RecordKey, Status
from unicon_core.federation.replies import digest
from unicon_flower.inprocess import FIRST_NODE, InProcessGrid
from unicon_flower.records import arrays_to_record, record_to_arrays

HASH = "f" * 64
A, B = "adapter.m.lora_A.weight", "adapter.m.lora_B.weight"


def _nodes(cls: int, surv: int = 0) -> list[SiteNode]:
    names = [("cls", f"c{i}") for i in range(cls)] + [("surv", f"s{i}") for i in range(surv)]
    return [SiteNode(FIRST_NODE + i, site, task, 10, 10) for i, (task, site) in enumerate(names)]


def _skill(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {A: rng.normal(size=(4, 256)).astype(np.float32),
            B: rng.normal(scale=0.1, size=(256, 4)).astype(np.float32),
            "head.w": rng.normal(size=256).astype(np.float32)}


def _initial() -> ArrayRecord:
    return arrays_to_record({**prefix_task("cls", _skill(0)), **prefix_task("surv", _skill(1))})


class ScriptedSites:
    """The ClientApp of every node: reconstructs what it is sent like a real site, "trains"
    by a (site, round)-seeded change, replies with the whole skill or its delta."""

    def __init__(self, nodes: list[SiteNode]) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        #: (round, message type, site, copy before, skill it holds after)
        self.log: list[tuple[int, str, str, dict | None, dict]] = []

    def __call__(self, msg: Message, context: Context) -> Message:
        node = self.nodes[context.node_id]
        config = msg.content.config_records[RecordKey.CONFIG.value]
        rnd = int(config[ConfigKey.SERVER_ROUND.value])
        before = context.state.array_records.get(DOWNLINK_STATE)
        skill, keep = received_skill(msg, context)
        assert skill is not None
        sent = record_to_arrays(skill)
        self.log.append((rnd, msg.metadata.message_type, node.site,
                         record_to_arrays(before) if before is not None else None, sent))
        info = ConfigRecord({InfoKey.SITE.value: node.site, InfoKey.TASK.value: node.task,
                             InfoKey.FOUNDATION_HASH.value: HASH, InfoKey.ROUND.value: rnd})
        if msg.metadata.message_type == "evaluate":
            info[InfoKey.STATUS.value] = Status.EVALUATED.value
            content = RecordDict({RecordKey.INFO.value: info, RecordKey.METRICS.value:
                                  MetricRecord({"num-examples": 10, "auc": 0.5})})
        else:
            info[InfoKey.STATUS.value] = Status.TRAINED.value
            rng = np.random.default_rng([zlib.crc32(node.site.encode()), rnd])
            local = {k: (v + rng.normal(scale=0.01, size=v.shape)).astype(v.dtype)
                     for k, v in sent.items()}
            if ConfigKey.DELTA_CODEC.value in config:
                payload, _ = encode_delta(local, sent, Codec(str(config[
                    ConfigKey.DELTA_CODEC.value])))
                update = {RecordKey.DELTA.value: arrays_to_record(payload)}
            else:
                update = {RecordKey.SKILL.value: arrays_to_record(local)}
            content = RecordDict({**update, RecordKey.INFO.value: info,
                                  RecordKey.METRICS.value: MetricRecord({"num-examples": 10})})
        keep_downlink(context, keep)
        return Message(content, reply_to=msg)


def _run(
    strategy: PerTaskFedAvg, sites: ScriptedSites, rounds: int, arrays: ArrayRecord | None = None,
    grid: InProcessGrid | None = None, after_round: Any = None,
) -> tuple[InProcessGrid, list[tuple[dict, dict]]]:
    """Run ``rounds`` rounds; the grid and every round's (record, global arrays)."""
    grid = grid or InProcessGrid(client_app=sites, num_nodes=len(sites.nodes))
    records: list[tuple[dict, dict]] = []

    def keep(record: dict, arrays: ArrayRecord) -> None:
        records.append((copy.deepcopy(record), record_to_arrays(arrays)))
        if after_round is not None:
            after_round(record)

    strategy.on_round_end = keep
    strategy.start(grid, arrays or _initial(), num_rounds=rounds, timeout=10)
    return grid, records


def _sent(grid: InProcessGrid) -> dict[tuple[int, str], set[str]]:
    """(round, message type) -> the sites that received a message."""
    out: dict[tuple[int, str], set[str]] = defaultdict(set)
    for ex in grid.exchanges:
        config = ex.instruction.content.config_records[RecordKey.CONFIG.value]
        out[int(config[ConfigKey.SERVER_ROUND.value]), ex.instruction.metadata.message_type].add(
            str(ex.reply.content.config_records[RecordKey.INFO.value][InfoKey.SITE.value]))
    return out


# ------------------------------------------------------------------ sites not drawn
def test_sites_not_drawn_get_no_message_and_the_last_round_evaluates_everyone() -> None:
    # Prepare: 5 sites of a task drawing 2 a round, 1 site of a task that does not sample
    nodes = _nodes(5, 1)
    strategy = PerTaskFedAvg(nodes, foundation_hash=HASH, seed=0,
                             lora={"cls": TaskFederation(fraction=0.4)})
    # Execute
    grid, records = _run(strategy, ScriptedSites(nodes), rounds=3)
    # Assert
    sent = _sent(grid)
    cls_sites = {n.site for n in nodes if n.task == "cls"}
    for rnd in (1, 2):
        trained = sent[rnd, "train"]
        assert len(trained & cls_sites) == 2 and "s0" in trained
        assert sent[rnd, "evaluate"] == trained  # not drawn: no evaluate message either
        record = records[rnd - 1][0]
        for site in cls_sites - trained:
            assert record["sites"][site] == {"task": "cls", "status": "not-sampled"}
    assert len(sent[3, "train"] & cls_sites) == 2
    assert sent[3, "evaluate"] == cls_sites | {"s0"}  # the last round: every site
    assert sum(len(v) for v in sent.values()) == 3 * 3 + 3 + 3 + 6  # nothing else was sent
    results = build_results(experiment="t", rounds=[r for r, _ in records],
                            task_info={"cls": {"kind": "classification", "metric": "auc"},
                                       "surv": {"kind": "classification", "metric": "auc"}},
                            full_model_bytes=1, privacy={})
    assert set(results["tasks"]["cls"]["per_site"]) == cls_sites


def test_without_sampling_every_site_is_evaluated_every_round() -> None:
    nodes = _nodes(3)
    grid, _ = _run(PerTaskFedAvg(nodes, foundation_hash=HASH), ScriptedSites(nodes), rounds=2)
    sent = _sent(grid)
    assert sent[1, "evaluate"] == sent[2, "evaluate"] == {"c0", "c1", "c2"}


def test_evaluate_every_k_rounds_and_always_the_last() -> None:
    # Prepare: 5 rounds, evaluate every 2nd
    nodes = _nodes(2)
    strategy = PerTaskFedAvg(nodes, foundation_hash=HASH, evaluate_every=2)
    # Execute
    grid, records = _run(strategy, ScriptedSites(nodes), rounds=5)
    # Assert: rounds 2, 4 and the last evaluate; every round trains and is recorded
    sent = _sent(grid)
    assert [r for r in range(1, 6) if sent.get((r, "evaluate"))] == [2, 4, 5]
    assert all(sent[r, "train"] == {"c0", "c1"} for r in range(1, 6))
    assert [("eval" in rec["sites"]["c0"]) for rec, _ in records] == [
        False, True, False, True, True]
    # a round without evaluate messages has no silent site either
    assert all(rec["sites"][s]["status"] == "trained" for rec, _ in records for s in ("c0", "c1"))
    with pytest.raises(ValueError, match="evaluate_every"):
        PerTaskFedAvg(nodes, foundation_hash=HASH, evaluate_every=0)


# ------------------------------------------------------------------ downlink compression
def test_downlink_off_sends_the_whole_global_skill_exactly() -> None:
    nodes = _nodes(2)
    sites = ScriptedSites(nodes)
    strategy = PerTaskFedAvg(nodes, foundation_hash=HASH, lora={"cls": TaskFederation(
        delta=True, codec="int8")})
    grid, records = _run(strategy, sites, rounds=2)
    for ex in grid.exchanges:
        assert RecordKey.DOWNLINK.value not in ex.instruction.content.array_records
        config = ex.instruction.content.config_records[RecordKey.CONFIG.value]
        assert ConfigKey.DOWNLINK_CODEC.value not in config
    for rnd, kind, _site, before, held in sites.log:
        assert before is None  # nothing kept at the site
        if kind == "evaluate":  # exactly the round's aggregate
            expected = slice_task(records[rnd - 1][1], "cls")
            assert digest(held) == digest(expected)
    assert strategy.held == {}


def _array_bytes(message: Message) -> int:
    return sum(len(a.data) for r in message.content.array_records.values() for a in r.values())


@pytest.mark.parametrize(("codec", "bound", "share"),
                         [("int8", 1 / 254, 0.35), ("fp16", 2.0**-10, 0.6)])
def test_downlink_copies_agree_bit_for_bit_within_the_codecs_error(
    codec: str, bound: float, share: float
) -> None:
    # Prepare
    nodes = _nodes(3)
    sites = ScriptedSites(nodes)
    strategy = PerTaskFedAvg(nodes, foundation_hash=HASH, lora={"cls": TaskFederation(
        delta=True, downlink_codec=codec)})
    # Execute
    grid, records = _run(strategy, sites, rounds=4)
    # Assert: both sides hold the same bytes
    for node in nodes:
        site_copy = record_to_arrays(grid.contexts[node.node_id].state.array_records[
            DOWNLINK_STATE])
        assert digest(site_copy) == digest(strategy.held[node.site])
    # the whole skill once per site, then changes only
    firsts = [ex for ex in grid.exchanges if RecordKey.SKILL.value in
              ex.instruction.content.array_records]
    deltas = [ex for ex in grid.exchanges if RecordKey.DOWNLINK.value in
              ex.instruction.content.array_records]
    assert len(firsts) == 3 and len(deltas) == 3 * (2 * 4 - 1)
    biggest = max(_array_bytes(ex.instruction) for ex in deltas)
    assert biggest < share * min(_array_bytes(ex.instruction) for ex in firsts)
    # the skill a site evaluates is the round's aggregate within the codec's error
    for rnd, kind, _site, before, held in sites.log:
        if kind != "evaluate" or before is None:
            continue
        target = slice_task(records[rnd - 1][1], "cls")
        for key, value in target.items():
            change = np.max(np.abs(value.astype(np.float64) - before[key]))
            error = np.max(np.abs(held[key].astype(np.float64) - value))
            assert error <= bound * change + 1e-6 * np.max(np.abs(value)), key


def test_lossy_downlink_error_stays_out_of_the_aggregate() -> None:
    """Each update is moved onto the exact skill meant for its site before aggregation, so
    sites that train the same change from a lossy copy (top-k: 90 % of each change missing)
    give the lossless run's skills."""
    nodes = _nodes(3)
    lossless = PerTaskFedAvg(nodes, foundation_hash=HASH, lora={"cls": TaskFederation(
        delta=True)})
    _, exact = _run(lossless, ScriptedSites(nodes), rounds=3)
    lossy = PerTaskFedAvg(nodes, foundation_hash=HASH, lora={"cls": TaskFederation(
        delta=True, downlink_codec="topk", topk_fraction=0.1)})
    sites = ScriptedSites(nodes)
    _, approx = _run(lossy, sites, rounds=3)
    assert any(not np.allclose(held[A], slice_task(exact[rnd - 2][1], "cls")[A], atol=1e-3)
               for rnd, kind, _, _, held in sites.log if kind == "train" and rnd > 1)
    for key, value in exact[-1][1].items():
        np.testing.assert_allclose(approx[-1][1][key], value, rtol=1e-5, atol=1e-5,
                                   err_msg=key)


def test_a_site_that_lost_its_copy_fails_once_then_gets_the_whole_skill() -> None:
    # Prepare: after round 1, site c1 forgets what it held (e.g. its process restarted)
    nodes = _nodes(2)
    sites = ScriptedSites(nodes)
    grid = InProcessGrid(client_app=sites, num_nodes=2)
    strategy = PerTaskFedAvg(nodes, foundation_hash=HASH, lora={"cls": TaskFederation(
        downlink_codec="int8")})

    def forget(record: dict) -> None:
        if record["round"] == 1:
            grid.contexts[FIRST_NODE + 1].state = RecordDict()

    # Execute
    _, records = _run(strategy, sites, rounds=3, grid=grid, after_round=forget)
    # Assert: round 2's train instruction fails at c1, its evaluate instruction is whole again
    c1 = [(int(ex.instruction.content["config"][ConfigKey.SERVER_ROUND.value]),
           ex.instruction.metadata.message_type, sorted(ex.instruction.content.array_records),
           ex.reply.has_error()) for ex in grid.exchanges if ex.node_id == FIRST_NODE + 1]
    assert c1[:5] == [(1, "train", ["skill"], False), (1, "evaluate", ["downlink"], False),
                      (2, "train", ["downlink"], True), (2, "evaluate", ["skill"], False),
                      (3, "train", ["downlink"], False)]
    assert "holds no skill" in next(ex.reply.error.reason for ex in grid.exchanges
                                    if ex.reply.has_error())
    assert records[1][0]["sites"]["c1"]["status"] == "error"
    assert records[2][0]["sites"]["c1"]["train"]
    assert digest(strategy.held["c1"]) == digest(record_to_arrays(
        grid.contexts[FIRST_NODE + 1].state.array_records[DOWNLINK_STATE]))


# ------------------------------------------------------------------ checkpoint and resume
STATEFUL = {"cls": TaskFederation(lora_rule="fedsa", server_opt="fedadam"),
            "surv": TaskFederation(server_opt="fedyogi")}


def _resumed(tmp_path: Path, restore: bool) -> tuple[PerTaskFedAvg, dict]:
    """Two rounds, a checkpoint written and read back, one more round from it."""
    nodes = _nodes(3, 1)
    first = PerTaskFedAvg(nodes, foundation_hash=HASH, lora=STATEFUL)
    _, records = _run(first, ScriptedSites(nodes), rounds=2)
    save_checkpoint(tmp_path, Checkpoint(round=2, arrays=records[-1][1], foundation_hash=HASH,
                                         config={}, state=first.server_state()))
    ckpt = load_checkpoint(tmp_path)
    second = PerTaskFedAvg(nodes, foundation_hash=HASH, lora=STATEFUL, round_offset=ckpt.round)
    if restore:
        second.load_server_state(ckpt.state)
    _, after = _run(second, ScriptedSites(nodes), rounds=1, arrays=arrays_to_record(ckpt.arrays))
    assert after[-1][0]["round"] == 3
    return second, after[-1][1]


def test_a_resumed_run_equals_an_uninterrupted_one_for_fedadam_fedyogi_and_fedsa(
    tmp_path: Path,
) -> None:
    # Prepare
    nodes = _nodes(3, 1)
    straight = PerTaskFedAvg(nodes, foundation_hash=HASH, lora=STATEFUL)
    _, records = _run(straight, ScriptedSites(nodes), rounds=3)
    # Execute
    resumed, final = _resumed(tmp_path / "a", restore=True)
    forgetful, forgot = _resumed(tmp_path / "b", restore=False)
    # Assert
    assert set(straight.server_opts) == {"cls", "surv"} and set(straight.personal) == {
        "c0", "c1", "c2"}
    for key, value in records[-1][1].items():
        np.testing.assert_allclose(final[key], value, rtol=1e-6, atol=1e-6, err_msg=key)
    for task, opt in straight.server_opts.items():
        assert resumed.server_opts[task].steps == opt.steps == 3
        for key in opt.m:
            np.testing.assert_allclose(resumed.server_opts[task].m[key], opt.m[key], atol=1e-12)
            np.testing.assert_allclose(resumed.server_opts[task].v[key], opt.v[key], atol=1e-12)
    for site, skill in straight.personal.items():
        for key, value in skill.items():
            np.testing.assert_allclose(resumed.personal[site][key], value, atol=1e-6)
    # the check can fail: without the saved state the run drifts off the uninterrupted one
    assert any(not np.allclose(forgot[k], v, rtol=1e-6, atol=1e-6)
               for k, v in records[-1][1].items())
    assert forgetful.server_opts["cls"].steps == 1


def test_saved_state_of_a_task_that_changed_its_options_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nodes = _nodes(2)
    first = PerTaskFedAvg(nodes, foundation_hash=HASH, lora=STATEFUL)
    _run(first, ScriptedSites(nodes), rounds=1)
    plain = PerTaskFedAvg(nodes, foundation_hash=HASH)
    plain.load_server_state(first.server_state())
    assert plain.server_opts == {} and plain.personal == {}
    assert "left out" in caplog.text
    with pytest.raises(ValueError, match="unknown kind"):
        plain.load_server_state({"momentum/cls/x": np.zeros(1)})


def test_checkpoint_keeps_server_state_apart_from_the_skills(tmp_path: Path) -> None:
    arrays = {"cls.head.w": np.ones(3, np.float32)}
    state = {"opt/cls/m/head.w": np.full(3, 0.5), "opt/cls/steps": np.asarray([2], np.int64)}
    save_checkpoint(tmp_path, Checkpoint(1, arrays, HASH, {}, state=state))
    ckpt = load_checkpoint(tmp_path)
    assert set(ckpt.arrays) == set(arrays) and set(ckpt.state) == set(state)
    np.testing.assert_array_equal(ckpt.state["opt/cls/m/head.w"], state["opt/cls/m/head.w"])
    assert ckpt.state["opt/cls/m/head.w"].dtype == np.float64
    with pytest.raises(ValueError, match="reserved prefix"):
        save_checkpoint(tmp_path, Checkpoint(1, {"server-state/x": np.ones(1)}, HASH, {}))
