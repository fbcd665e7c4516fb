"""Plans on the product's federation: the default is today's run, bit for bit and byte for byte;
research plans run only where the site allows them, and train and aggregate what they say."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.server.fedtools import (
    CLS_TASK,
    THREE_SITES,
    make_sites,
    run_in_process,
    task_spec,
    tiny_overrides,
)
from unicon_core.federation.protocol import NUM_EXAMPLES, RecordKey
from unicon_core.training.plans import Plan, plan_keys


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def _run(tmp_path: Path, name: str, *extra: str, research: bool = False) -> tuple:
    from unicon_core.federation.checkpoint import load_checkpoint
    from unicon_flower.accounting import content_bytes
    from unicon_flower.runner import run_overrides

    dirs = [tmp_path / "sites" / n for n, *_ in THREE_SITES]
    if not dirs[0].exists():
        make_sites(tmp_path / "sites", THREE_SITES)
    grid = run_overrides(tiny_overrides(dirs, tmp_path / name, 2, *extra), 3, research=research)
    sizes = {(kind, way): [content_bytes(getattr(e, msg).content) for e in grid.exchanges
                           if e.instruction.metadata.message_type == kind]
             for kind in ("train", "evaluate")
             for way, msg in (("down", "instruction"), ("up", "reply"))}
    return _digest(load_checkpoint(tmp_path / name).arrays), sizes, grid


def test_the_default_plan_sends_exactly_the_skill_and_is_the_explicit_skill_plan(
    tmp_path: Path,
) -> None:
    """The default run is today's: only skill tensors travel, and spelling the plan out at a
    research site changes no bit of the skills and no byte of any message (the plan code path
    adds nothing to a skill run). Messages carry timing metrics, so bytes are compared per
    message kind and size class (floats serialise to fixed sizes)."""
    # Prepare
    from unicon_core.config import BackboneConfig
    from unicon_core.model import UniconModel

    # Execute
    default, default_bytes, grid = _run(tmp_path, "default")
    explicit, explicit_bytes, _ = _run(tmp_path, "explicit", "federation.plan=skill",
                                       research=True)
    # Assert
    assert default == explicit
    assert default_bytes == explicit_bytes
    model = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
    model.add_task(task_spec(CLS_TASK))
    for ex in grid.exchanges:
        if ex.instruction.metadata.message_type == "train" and ex.reply.content[
                RecordKey.INFO.value]["task"] == CLS_TASK:
            assert set(ex.reply.content[RecordKey.SKILL.value]) == model.skill_keys(CLS_TASK)


def test_a_research_plan_is_refused_by_a_site_that_does_not_allow_it(tmp_path: Path) -> None:
    # Prepare
    from server.federation import SiteQueryError

    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    # Execute / Assert: every site refuses (node config lacks allow-research-plans)
    with pytest.raises(SiteQueryError, match="allow-research-plans"):
        run_in_process(tiny_overrides(dirs, tmp_path / "run", 1, "federation.plan=full"), 3)


def test_research_hooks_are_refused_by_a_site_that_does_not_allow_them(tmp_path: Path) -> None:
    # Prepare
    from client.site_runner import SiteHooks
    from server.federation import SiteQueryError
    from unicon_flower.runner import node_configs, run_overrides

    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    # Execute / Assert
    with pytest.raises(SiteQueryError, match="research hooks"):
        run_overrides(tiny_overrides(dirs, tmp_path / "run", 1), 3, hooks=SiteHooks(),
                      configs=node_configs(3))


@pytest.mark.parametrize("plan", [Plan.FULL, Plan.HEAD])
def test_a_plan_trains_and_aggregates_exactly_its_parameters(tmp_path: Path, plan: Plan) -> None:
    # Prepare: two sites of one task (12 and 18 training examples)
    from unicon_core.config import BackboneConfig
    from unicon_core.model import UniconModel
    from unicon_flower.runner import run_overrides

    dirs = make_sites(tmp_path / "sites", [("site_a", CLS_TASK, 24), ("site_b", CLS_TASK, 36)])
    overrides = tiny_overrides(dirs, tmp_path / "run", 1, f"federation.plan={plan.value}")
    # Execute
    grid = run_overrides(overrides, 2, research=True)
    # Assert: what travels is exactly the plan's keys
    model = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
    model.add_task(task_spec(CLS_TASK))
    expected = set(plan_keys(model, CLS_TASK, plan))
    train = [e for e in grid.exchanges if e.instruction.metadata.message_type == "train"]
    assert len(train) == 2 and not any(e.reply.has_error() for e in grid.exchanges)
    states, weights = [], []
    for ex in train:
        sent = {k: a.numpy() for k, a in ex.instruction.content[RecordKey.SKILL.value].items()}
        got = {k: a.numpy() for k, a in ex.reply.content[RecordKey.SKILL.value].items()}
        assert set(sent) == set(got) == expected
        assert all(not np.array_equal(sent[k], got[k]) for k in got if k.startswith("head."))
        states.append(got)
        weights.append(float(ex.reply.content[RecordKey.METRICS.value][NUM_EXAMPLES]))
    assert weights == [12.0, 18.0]
    # the round's global state is the example-weighted mean of the two sites' local states
    evaluate = next(e for e in grid.exchanges if e.instruction.metadata.message_type ==
                    "evaluate")
    aggregate = {k: a.numpy() for k, a in evaluate.instruction.content[
        RecordKey.SKILL.value].items()}
    for key in expected:
        mean = (weights[0] * states[0][key].astype(np.float64)
                + weights[1] * states[1][key].astype(np.float64)) / sum(weights)
        np.testing.assert_allclose(aggregate[key], mean, rtol=1e-5, atol=1e-7, err_msg=key)
    if plan is Plan.FULL:  # the backbone really trained (and so moved)
        sent = train[0].instruction.content[RecordKey.SKILL.value]
        moved = [k for k in expected if k.startswith("backbone.")
                 and not np.array_equal(sent[k].numpy(), aggregate[k])]
        assert moved
