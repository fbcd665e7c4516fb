"""PerTaskFedAvg with issue-#14 options, on hand-made replies: deltas decoded and checked
like skills (a delta's update norm is its own norm), a bad payload is rejected without
aborting the round, FFA keeps A exactly, a server optimiser steps per task."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.strategies.per_task_fedavg import PerTaskFedAvg, SiteNode
from unicon_core.federation.aggregation import prefix_task, slice_task
from unicon_core.federation.compression import Codec, encode_delta
from unicon_core.federation.config import TaskFederation
from unicon_core.federation.protocol import ConfigKey, InfoKey, RecordKey, Status

HASH = "f" * 64
A, B = "adapter.m.lora_A.weight", "adapter.m.lora_B.weight"
NODES = [SiteNode(1, "a", "cls"), SiteNode(2, "b", "cls"), SiteNode(3, "c", "cls")]


def setup_function() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {A: rng.normal(size=(2, 3)).astype(np.float32), B: np.zeros((4, 2), np.float32),
            "head.w": np.ones(3, np.float32)}


def _round(strategy: PerTaskFedAvg, locals_: dict[int, dict], codec: Codec | None,
           tamper: dict[int, dict] | None = None, rnd: int = 1,
           glob: dict | None = None, controls: dict[int, dict] | None = None
           ) -> tuple[dict, dict]:
    union = prefix_task("cls", _global() if glob is None else glob)
    msgs = {m.metadata.dst_node_id: m for m in strategy.configure_train(
        rnd, ArrayRecord({k: Array(v) for k, v in union.items()}), ConfigRecord(), None)}
    replies = []
    for node in NODES:
        if node.node_id not in msgs:
            continue
        sent = {k: a.numpy() for k, a in msgs[node.node_id].content["skill"].items()}
        if codec is None:
            record = {RecordKey.SKILL.value: ArrayRecord(
                {k: Array(v) for k, v in locals_[node.node_id].items()})}
        else:
            if strategy.options("cls").lora_rule == "ffa":  # the site leaves A out
                sent = {k: v for k, v in sent.items() if k != A}
            payload, _ = encode_delta(locals_[node.node_id], sent, codec)
            payload.update((tamper or {}).get(node.node_id, {}))
            record = {RecordKey.DELTA.value: ArrayRecord(
                {k: Array(v) for k, v in payload.items()})}
        if controls is not None and node.node_id in controls:  # SCAFFOLD's c_i change
            record[RecordKey.CONTROL.value] = ArrayRecord(
                {k: Array(v) for k, v in controls[node.node_id].items()})
        content = RecordDict({**record,
            RecordKey.METRICS.value: MetricRecord({"num-examples": 10}),
            RecordKey.INFO.value: ConfigRecord({
                InfoKey.SITE.value: node.site, InfoKey.TASK.value: node.task,
                InfoKey.FOUNDATION_HASH.value: HASH, InfoKey.STATUS.value: Status.TRAINED.value,
                InfoKey.ROUND.value: rnd})})
        reply = Message(content, reply_to=msgs[node.node_id])
        reply.metadata.__dict__["_src_node_id"] = node.node_id
        replies.append(reply)
    arrays, _ = strategy.aggregate_train(rnd, replies)
    return slice_task({k: a.numpy() for k, a in arrays.items()}, "cls"), strategy._record


def _locals(scale: float = 1.0) -> dict[int, dict]:
    rng = np.random.default_rng(1)
    g = _global()
    return {i: {k: (v + scale * rng.normal(size=v.shape)).astype(np.float32)
                for k, v in g.items()} for i in (1, 2, 3)}


def test_uncompressed_deltas_aggregate_like_whole_skills() -> None:
    locals_ = _locals()
    plain, _ = _round(PerTaskFedAvg(NODES, foundation_hash=HASH), locals_, None)
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH, lora={"cls": TaskFederation(delta=True)})
    via_delta, record = _round(strategy, locals_, Codec("none"))
    for key, value in plain.items():
        np.testing.assert_allclose(via_delta[key], value, rtol=1e-6, atol=1e-7)
    assert record["tasks"]["cls"]["sites_aggregated"] == 3


def test_a_malformed_delta_is_rejected_and_the_round_goes_on() -> None:
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH,
                             lora={"cls": TaskFederation(delta=True, codec="topk")})
    bad = {2: {A + "#idx": np.asarray([0, 99], np.int32), A: np.ones(2, np.float32)}}
    _, record = _round(strategy, _locals(0.1), Codec("topk"), tamper=bad)
    assert record["sites"]["b"]["status"] == "rejected"
    assert record["tasks"]["cls"]["sites_aggregated"] == 2


def test_a_huge_delta_fails_the_rounds_norm_bound() -> None:
    locals_ = _locals(0.1)
    g = _global()
    locals_[3] = {k: g[k] + 1000 * (v - g[k]) for k, v in locals_[3].items()}
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH,
                             lora={"cls": TaskFederation(delta=True, codec="int8")})
    _, record = _round(strategy, locals_, Codec("int8"))
    assert record["sites"]["c"]["status"] == "rejected"
    assert "norm" in record["sites"]["c"]["reason"]
    assert record["tasks"]["cls"]["sites_aggregated"] == 2


def test_whole_skill_when_deltas_are_expected_is_rejected() -> None:
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH, lora={"cls": TaskFederation(delta=True)})
    _, record = _round(strategy, _locals(), None)
    assert all(e["status"] == "rejected" for e in record["sites"].values())


def test_ffa_through_the_strategy_keeps_a_and_averages_products_exactly() -> None:
    locals_ = _locals()
    for state in locals_.values():
        state[A] = _global()[A]
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH,
                             lora={"cls": TaskFederation(lora_rule="ffa", delta=True)})
    out, _ = _round(strategy, locals_, Codec("none"))
    np.testing.assert_array_equal(out[A], _global()[A])
    mean = sum(s[B].astype(np.float64) @ s[A] for s in locals_.values()) / 3
    np.testing.assert_allclose(out[B].astype(np.float64) @ out[A], mean, rtol=1e-5, atol=1e-6)


def test_server_optimiser_state_is_per_task_and_steps_from_the_global() -> None:
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH,
                             lora={"cls": TaskFederation(server_opt="fedavgm", server_lr=0.5,
                                                         server_momentum=0.0)})
    locals_ = _locals()
    out, _ = _round(strategy, locals_, None)
    mean = {k: sum(s[k].astype(np.float64) for s in locals_.values()) / 3 for k in out}
    for key, value in _global().items():
        np.testing.assert_allclose(out[key], value + 0.5 * (mean[key] - value), rtol=1e-5,
                                   atol=1e-6)
    assert set(strategy.server_opts) == {"cls"}


def test_fedexp_extrapolates_the_mean_delta_by_the_sites_spread() -> None:
    # Prepare: three sites whose deltas are the same random draws as _locals'
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH,
                             lora={"cls": TaskFederation(server_opt="fedexp", delta=True)})
    locals_ = _locals()
    g = _global()
    # Execute
    out, record = _round(strategy, locals_, Codec("none"))
    # Assert: eta_g = mean |d_i|^2 / (2 (|mean d|^2 + eps)) from the sites' own deltas
    d = [{k: s[k].astype(np.float64) - g[k] for k in g} for s in locals_.values()]
    mean = {k: sum(x[k] for x in d) / 3 for k in g}
    spread = sum(sum(float((x[k] ** 2).sum()) for k in g) for x in d) / 3
    eta = max(1.0, spread / (2 * (sum(float((m**2).sum()) for m in mean.values()) + 1e-3)))
    assert eta > 1.2  # independent draws: the average shrinks, fedexp steps further
    assert record["tasks"]["cls"]["server_lr"] == pytest.approx(eta, rel=1e-6)
    for key, value in g.items():
        np.testing.assert_allclose(out[key], value + eta * mean[key], rtol=1e-5, atol=1e-5)


def test_sampling_in_the_strategy() -> None:
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH, min_sites_per_task=2,
                             lora={"cls": TaskFederation(fraction=0.1)}, seed=3)
    _, record = _round(strategy, _locals(), None)
    skipped = [s for s, e in record["sites"].items() if e.get("status") == "not-sampled"]
    assert len(skipped) == 1  # min_sites_per_task is the floor
    assert record["tasks"]["cls"]["sites_aggregated"] == 2


def test_a_replayed_delta_is_refused() -> None:
    """The same encoded delta applied to a newer skill gives another skill (a state digest
    would not see it); the payload's digest does."""
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH,
                             lora={"cls": TaskFederation(delta=True, codec="int8")})
    locals_ = _locals(0.1)
    first, _ = _round(strategy, locals_, Codec("int8"))
    fresh = _locals(0.2)
    g = _global()
    replayed = {k: first[k] + (locals_[1][k] - g[k]) for k in g}  # round 1's delta, new base
    again = {1: replayed, 2: fresh[2], 3: fresh[3]}
    _, record = _round(strategy, again, Codec("int8"), rnd=2, glob=first)
    assert record["sites"]["a"]["status"] == "rejected"
    assert "replay" in record["sites"]["a"]["reason"]
    assert record["tasks"]["cls"]["sites_aggregated"] == 2


def test_an_aggregation_error_keeps_the_skill_and_is_in_the_rounds_record() -> None:
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH, lora={"cls": TaskFederation(delta=True)})

    def fails(*_args: object) -> None:
        raise ValueError("factors of an unexpected shape")

    strategy.aggregate_task = fails  # type: ignore[method-assign]
    after, record = _round(strategy, _locals(), Codec("none"))
    for key, value in _global().items():
        np.testing.assert_array_equal(after[key], value)
    assert record["tasks"]["cls"]["sites_aggregated"] == 0
    assert "unexpected shape" in record["tasks"]["cls"]["aggregation_error"]


def _sent_controls(strategy: PerTaskFedAvg, rnd: int, glob: dict) -> dict[int, dict]:
    union = prefix_task("cls", glob)
    msgs = strategy.configure_train(rnd, ArrayRecord({k: Array(v) for k, v in union.items()}),
                                    ConfigRecord(), None)
    out = {}
    for msg in msgs:
        assert msg.content[RecordKey.CONFIG.value][ConfigKey.SCAFFOLD.value] is True
        out[msg.metadata.dst_node_id] = {
            k: a.numpy() for k, a in msg.content[RecordKey.CONTROL.value].items()}
    return out


def test_scaffold_sends_c_and_moves_it_by_the_sites_checked_changes() -> None:
    # Prepare: FFA (A is not trained, so c leaves it out); each site's change is its id
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH,
                             lora={"cls": TaskFederation(lora_rule="ffa", scaffold=True)})
    trained = {k: v for k, v in _global().items() if k != A}
    changes = {i: {k: np.full_like(v, float(i)) for k, v in trained.items()} for i in (1, 2, 3)}
    locals_ = _locals()
    for state in locals_.values():
        state[A] = _global()[A]
    # Execute / Assert: round 1 sends zeros over the trained keys
    first = _sent_controls(strategy, 1, _global())
    assert set(first) == {1, 2, 3}
    assert all(set(c) == set(trained) and not any(v.any() for v in c.values())
               for c in first.values())
    after, record = _round(strategy, locals_, None, controls=changes)
    assert record["tasks"]["cls"]["sites_aggregated"] == 3
    for value in strategy.controls["cls"].values():
        np.testing.assert_allclose(value, (1 + 2 + 3) / 3)
    want_norm = np.sqrt(sum(4.0 * v.size for v in trained.values()))
    assert record["tasks"]["cls"]["control_norm"] == pytest.approx(want_norm)
    # round 2 sends the new c; site b's reply lacks its change, site c's has a wrong shape:
    # both are rejected and c moves by a's change over all three sites
    second = _sent_controls(strategy, 2, after)
    np.testing.assert_allclose(second[2]["head.w"], 2.0)
    bad = {1: changes[1], 3: {**changes[3], "head.w": np.zeros(5, np.float32)}}
    _, record = _round(strategy, _locals(0.5), None, rnd=2, glob=after, controls=bad)
    assert record["sites"]["b"]["status"] == record["sites"]["c"]["status"] == "rejected"
    assert "no control variate" in record["sites"]["b"]["reason"]
    assert "head.w" in record["sites"]["c"]["reason"]
    for value in strategy.controls["cls"].values():
        np.testing.assert_allclose(value, 2.0 + 1 / 3, rtol=1e-6)
    # a resumed run is a new Flower run: the sites' c_i start at zero, so c restarts at zero
    # with them (c = their mean), also from a checkpoint that still holds the old c
    restored = PerTaskFedAvg(NODES, foundation_hash=HASH,
                             lora={"cls": TaskFederation(lora_rule="ffa", scaffold=True)})
    old = {f"scaffold/cls/{k}": v for k, v in strategy.controls["cls"].items()}
    restored.load_server_state({**strategy.server_state(), **old})
    assert not restored.controls
    resent = _sent_controls(restored, 3, after)
    assert all(not any(v.any() for v in c.values()) for c in resent.values())


def test_a_control_record_the_task_did_not_ask_for_is_refused() -> None:
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH)
    extra = {1: {k: np.zeros_like(v) for k, v in _global().items()}}
    _, record = _round(strategy, _locals(), None, controls=extra)
    assert record["sites"]["a"]["status"] == "rejected"
    assert "did not ask for" in record["sites"]["a"]["reason"]
    assert record["tasks"]["cls"]["sites_aggregated"] == 2
