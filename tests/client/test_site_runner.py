"""A site refuses instructions for another foundation or task, loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import make_client_app
from client.site_runner import FoundationMismatchError
from tests.server.fedtools import CLS_TASK, make_site, tiny_overrides


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _train(config: dict, skill: dict[str, np.ndarray] | None = None) -> Message:
    content = RecordDict({"config": ConfigRecord(config)})
    if skill is not None:
        content["skill"] = ArrayRecord({k: Array(v) for k, v in skill.items()})
    return Message(content=content, dst_node_id=1, message_type="train")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"foundation-hash": "0" * 64, "task": CLS_TASK, "server-round": 1}, "runs foundation"),
        ({"task": "other_task", "server-round": 1}, "was sent task 'other_task'"),
        ({"task": CLS_TASK, "server-round": 1}, "no skill record"),
    ],
)
def test_train_instruction_is_refused(tmp_path: Path, config: dict, match: str) -> None:
    # Prepare: one site served through the real ClientApp (guard included)
    site = make_site(tmp_path / "sites", "site_a", CLS_TASK)
    app = make_client_app(tiny_overrides([site], tmp_path / "run", 1))
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})

    # Execute
    with pytest.raises(Exception, match=match) as info:
        app(_train(config), context)
    if "foundation-hash" in config:
        assert isinstance(info.value, FoundationMismatchError)


def test_nodes_of_one_process_compose_the_run_config_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many virtual sites in one simulation process: one hydra compose per override list."""
    from client import site_runner

    # Prepare: count the composes; two nodes with the same run config, one with another
    site = make_site(tmp_path / "sites", "site_a", CLS_TASK)
    overrides = tiny_overrides([site], tmp_path / "run", 1)
    composed: list[list[str]] = []
    real = site_runner.load_settings

    def counting(given: list[str]) -> object:
        composed.append(list(given))
        return real(given)

    monkeypatch.setattr(site_runner, "load_settings", counting)
    monkeypatch.setattr(site_runner, "_COMPOSED", {})

    def context(node: int) -> Context:
        return Context(run_id=1, node_id=node, node_config={}, state=RecordDict(),
                       run_config={})

    # Execute
    first = site_runner.settings_for(context(1), overrides)
    second = site_runner.settings_for(context(2), overrides)
    other = site_runner.settings_for(context(3), [*overrides, "federation.rounds=2"])

    # Assert: composed for the first node and for the other override list only; equal values,
    # but fresh objects (one node cannot change another's settings)
    assert len(composed) == 2 and composed[1][-1] == "federation.rounds=2"
    assert first.resolved == second.resolved and first is not second
    assert first.federation is not second.federation
    assert other.federation.rounds == 2 and first.federation.rounds == 1


def test_each_round_draws_fresh_augmentation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """A site's rounds never share an augmentation epoch: otherwise every round would augment
    each item exactly as the first did (a fixed, not an augmented, training set)."""
    import unicon_core.training as training
    from client.site_runner import augmentation_epoch
    from tests.server.fedtools import run_in_process

    # Prepare: record the first augmentation epoch of every local training
    site = make_site(tmp_path / "sites", "site_a", CLS_TASK)
    first_epochs: list[int] = []
    real = training.train_task

    def recording(*args: object, **kwargs: object) -> object:
        first_epochs.append(int(kwargs["first_epoch"]))  # type: ignore[call-overload]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "train_task", recording)

    # Execute
    run_in_process(tiny_overrides([site], tmp_path / "run", 3), 1)

    # Assert: one training per round, each starting where no earlier round's passes reach
    assert first_epochs == [augmentation_epoch(r, 1) for r in (1, 2, 3)] == [1, 2, 3]
    passes = [set(range(augmentation_epoch(r, 4), augmentation_epoch(r, 4) + 4))
              for r in range(1, 6)]
    assert all(not a & b for i, a in enumerate(passes) for b in passes[i + 1:])
