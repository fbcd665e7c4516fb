"""The per-task server optimisers step exactly as Flower's FedAvgM / FedAdam / FedYogi do
(``flwr.serverapp.strategy``), round after round, on the same aggregates."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi
from flwr.supercore.task_identity import TaskIdentity

from unicon_core.federation.server_opt import ServerOptConfig, ServerOptimizer


def _reply(arrays: dict[str, np.ndarray]) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1,
                          message_type="train")
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": 1})})
    return Message(content, reply_to=instruction)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_same_steps_as_flower(name: str) -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=4)}
    if name == "fedavgm":
        flower = FedAvgM(server_learning_rate=0.7, server_momentum=0.5)
        flower.current_arrays = ArrayRecord({k: Array(v) for k, v in x.items()})
        ours = ServerOptimizer(ServerOptConfig(name, lr=0.7, momentum=0.5))
    else:
        flower = (FedAdam if name == "fedadam" else FedYogi)(eta=0.05, beta_1=0.8, beta_2=0.95,
                                                              tau=1e-2)
        ours = ServerOptimizer(ServerOptConfig(name, eta=0.05, beta_1=0.8, beta_2=0.95,
                                               tau=1e-2))
    mine = dict(x)
    for rnd in range(1, 4):
        aggregate = {k: v + rng.normal(scale=0.1, size=v.shape) for k, v in mine.items()}
        if name != "fedavgm":
            flower.current_arrays = {k: np.asarray(v) for k, v in mine.items()}
        theirs, _ = flower.aggregate_train(rnd, [_reply(aggregate)])
        mine = ours.step(mine, aggregate)
        assert theirs is not None
        for key, value in theirs.items():
            np.testing.assert_allclose(mine[key], value.numpy(), rtol=1e-12, atol=1e-12)
