"""The site's local objective under issue-#14 instructions: FFA-LoRA freezes every A factor,
FedProx pulls the skill towards the global one (the training loop's ``regulariser`` hook)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.site_runner import local_objective
from tests.unicon_core.training.test_learning import TINY, DictDataset, _squares
from unicon_core.config import TaskSpec, TrainConfig
from unicon_core.federation.lora_rules import a_keys
from unicon_core.model import UniconModel
from unicon_core.training import make_loader, train_task


def _trained(options: dict, steps: int = 4) -> tuple[dict, dict]:
    spec = TaskSpec(name="cls", kind="classification", modality="mri", channels=1,
                    spatial_dims=2, input_size=[16, 16], patch_size=4, num_classes=2)
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    before = {k: v.clone() for k, v in model.skill_state_dict("cls").items()}
    x, _, y = _squares(16, (16, 16), seed=0)
    params, regulariser = local_objective(model, "cls", options, private=False)
    cfg = TrainConfig(max_steps=steps, batch_size=8, lr=0.05, optimizer="sgd", momentum=0.0,
                      progress=False)
    train_task(model, "cls", make_loader(DictDataset(input=x, label=y), 8, shuffle=False), cfg,
               params=params, regulariser=regulariser)
    return before, model.skill_state_dict("cls")


def _drift(before: dict, after: dict) -> float:
    return float(sum(((after[k] - before[k]) ** 2).sum() for k in before))


def test_ffa_trains_everything_but_a() -> None:
    before, after = _trained({"lora-rule": "ffa"})
    frozen = a_keys(list(before))
    assert frozen
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in frozen)


def test_fedprox_pulls_towards_the_global_skill() -> None:
    free = _drift(*_trained({}))
    prox = _drift(*_trained({"prox-mu": 5.0}))
    assert 0 < prox < free


def test_defaults_are_todays_objective() -> None:
    model = UniconModel(TINY, seed=0)
    assert local_objective(model, "cls", {}, private=False) == (None, None)


def test_fedprox_is_not_combined_with_dp() -> None:
    spec = TaskSpec(name="cls", kind="classification", modality="mri", channels=1,
                    spatial_dims=2, input_size=[16, 16], patch_size=4, num_classes=2)
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    with pytest.raises(ValueError, match="DP"):
        local_objective(model, "cls", {"prox-mu": 0.1}, private=True)


class _Skill:
    """Stands in for a model: the skill a site trained."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def skill_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        return self.state


def test_topk_residual_lives_in_the_runs_context_and_a_resumed_run_starts_at_zero() -> None:
    """Error feedback is kept in ``context.state``, which Flower keeps per run: a resumed
    run (a new Flower run, a fresh context) encodes its first delta without a residual."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from client.site_runner import RESIDUAL_STATE, delta_record
    from unicon_core.federation.compression import Codec, encode_delta
    from unicon_flower.inprocess import act_as_server_app
    from unicon_flower.records import arrays_to_record, record_to_arrays

    # Prepare
    act_as_server_app()
    sent = {"head.w": np.zeros(8, np.float32)}
    local = {"head.w": np.arange(1, 9, dtype=np.float32)}
    msg = Message(RecordDict({"skill": arrays_to_record(sent), "config": ConfigRecord()}),
                  message_type="train", dst_node_id=1)
    options = {"delta-codec": "topk", "topk-fraction": 0.25}
    model = _Skill({k: torch.from_numpy(v) for k, v in local.items()})

    def context() -> Context:
        return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    fresh = encode_delta(local, sent, Codec("topk", topk_fraction=0.25))[0]
    # Execute
    running = context()
    first = record_to_arrays(delta_record(msg, running, model, "cls", options))
    second = record_to_arrays(delta_record(msg, running, model, "cls", options))
    resumed = record_to_arrays(delta_record(msg, context(), model, "cls", options))
    # Assert
    assert RESIDUAL_STATE in running.state.array_records
    for key, value in fresh.items():
        np.testing.assert_array_equal(first[key], value)
        np.testing.assert_array_equal(resumed[key], value)  # no residual carried over
    assert not np.array_equal(second["head.w#idx"], fresh["head.w#idx"])  # feedback at work


def test_optimizer_state_is_kept_in_the_node_state_only_when_configured() -> None:
    """``train.keep_optimizer_state``: the round's moments go to ``context.state`` (never into
    a reply) and come back next round; a state that no longer fits is replaced."""
    from flwr.app import Context, RecordDict

    from client.site_runner import OPTIMIZER_STATE, keep_optimizer, kept_optimizer
    from unicon_core.training import TrainResult

    def context() -> Context:
        return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    moments = {"0/exp_avg": np.ones(3, np.float32), "0/step": np.array(2.0, np.float32)}
    result = TrainResult(num_examples=8, steps=1, loss=0.5, optimizer_state=moments)
    off, on = TrainConfig(), TrainConfig(keep_optimizer_state=True)

    ctx = context()
    assert not keep_optimizer(ctx, off, result, "a") and OPTIMIZER_STATE not in ctx.state
    assert kept_optimizer(ctx, on) is None

    assert not keep_optimizer(ctx, on, result, "a")  # first round: nothing was resumed
    kept = kept_optimizer(ctx, on)
    assert kept is not None and set(kept) == set(moments)
    np.testing.assert_array_equal(kept["0/exp_avg"], moments["0/exp_avg"])
    assert kept_optimizer(ctx, off) is None
    assert keep_optimizer(ctx, on, result, "a")  # second round resumed it
    refused = TrainResult(num_examples=8, steps=1, loss=0.5, optimizer_state=moments,
                          state_refused="another rank")
    assert not keep_optimizer(ctx, on, refused, "a")


def test_scaffold_at_the_site_covers_what_it_trains_and_keeps_c_i() -> None:
    """``site_control``: c from the instruction, c_i from ``context.state`` (zeros at first or
    when it no longer fits); under FFA the A factors are left out; refused under DP."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from client.site_runner import CONTROL_STATE, keep_control, site_control
    from unicon_flower.records import arrays_to_record, record_to_arrays

    spec = TaskSpec(name="cls", kind="classification", modality="mri", channels=1,
                    spatial_dims=2, input_size=[16, 16], patch_size=4, num_classes=2)
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    options = {"lora-rule": "ffa", "scaffold": True}
    params, _ = local_objective(model, "cls", options, private=False)
    trained = {k: p for k, p in model.skill_parameters("cls").items() if k not in a_keys(
        list(model.skill_parameters("cls")))}
    c = {k: np.full(tuple(p.shape), 0.5, np.float32) for k, p in trained.items()}

    def message(control: dict | None) -> Message:
        content = RecordDict({"config": ConfigRecord({"scaffold": True})})
        if control is not None:
            content["control"] = arrays_to_record(control)
        return Message(content, dst_node_id=1, message_type="train")

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    first = site_control(message(c), ctx, model, "cls", options, params, private=False)
    assert first is not None and set(first.params) == set(trained)
    assert all(not v.any() for v in first.site.values())
    change = record_to_arrays(keep_control(ctx, first))  # no step: c_i stays 0
    assert set(change) == set(trained) and CONTROL_STATE in ctx.state.array_records
    ctx.state[CONTROL_STATE] = arrays_to_record({k: v + 1 for k, v in c.items()})
    kept = site_control(message(c), ctx, model, "cls", options, params, private=False)
    assert kept is not None and all((v == 1.5).all() for v in kept.site.values())
    ctx.state[CONTROL_STATE] = ArrayRecord()  # no longer fits: starts at zero
    fresh = site_control(message(c), ctx, model, "cls", options, params, private=False)
    assert fresh is not None and all(not v.any() for v in fresh.site.values())
    assert site_control(message(c), ctx, model, "cls", {}, params, private=False) is None
    with pytest.raises(ValueError, match="DP-SGD"):
        site_control(message(c), ctx, model, "cls", options, params, private=True)
    with pytest.raises(ValueError, match="no control variate"):
        site_control(message(None), ctx, model, "cls", options, params, private=False)
