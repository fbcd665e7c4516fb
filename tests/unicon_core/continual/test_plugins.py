"""Foundation-refinement plugins: MDS, K&G RFT-style KD, retrieval KD, LwF, EWC (issue #15)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.server.fedtools import CLS_TASK, SURV_TASK, task_spec
from unicon_core.config import BackboneConfig
from unicon_core.continual.plugins import (
    PLUGINS,
    EWCPlugin,
    KDPlugin,
    LwFPlugin,
    MDSPlugin,
    RealignPlugin,
    RetrievalKDPlugin,
    build_plugins,
    extra_loss_for,
    plugin_loss,
)
from unicon_core.continual.plugins.base import pooled
from unicon_core.continual.plugins.ewc import ewc_penalty, fisher_diagonal
from unicon_core.continual.plugins.kd import feature_kd, per_sample_logit_distance
from unicon_core.continual.plugins.lwf import lwf_loss
from unicon_core.continual.plugins.mds import FeatureStats, distances, mds_select
from unicon_core.continual.plugins.retrieval import ReferenceMemory, retrieval_weights
from unicon_core.model import UniconModel

TINY = BackboneConfig(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32)


def _model(tasks: tuple[str, ...] = (CLS_TASK,)) -> UniconModel:
    model = UniconModel(TINY, seed=0)
    for t in tasks:
        model.add_task(task_spec(t))
    return model.eval()


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    return {"input": torch.randn(n, 3, generator=torch.Generator().manual_seed(1))}


def _nudge_backbone(model: UniconModel, amount: float = 0.05) -> None:
    state = {k: v.clone() for k, v in model.backbone_state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[key] += amount
    model.load_backbone_state_dict(state)


# ---------------------------------------------------------------- MDS
def test_mds_picks_the_known_closest_samples_by_mahalanobis() -> None:
    # Prepare: pre-training features spread 10x more along axis 1 than axis 0
    stats = FeatureStats(torch.zeros(2, dtype=torch.float64),
                         torch.diag(torch.tensor([1.0, 100.0], dtype=torch.float64)), 1000)
    site = torch.tensor([[3.0, 0.0], [0.0, 8.0], [1.5, 0.0], [0.0, 25.0], [0.5, 0.0]])
    # Mahalanobis ~ [3, 0.8, 1.5, 2.5, 0.5]; Euclidean would rank [4, 2, 0, ...]
    # Execute
    picked = mds_select(site, stats, k=3)
    # Assert
    assert picked.tolist() == [4, 1, 2]
    d = distances(site, stats, shrinkage=0.0)  # exact: no shrinkage
    assert d.tolist() == pytest.approx([3.0, 0.8, 1.5, 2.5, 0.5])


def test_mds_cosine_and_stats_from_features() -> None:
    # Prepare
    stats = FeatureStats.from_features(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    site = torch.tensor([[1.0, 1.0], [2.0, 0.1], [0.0, 1.0], [1.0, 0.0]])
    # Execute
    picked = mds_select(site, stats, k=2, metric="cosine")
    # Assert: mean (1, 0); cosine distances [0.29, 0.001, 1, 0]
    assert stats.mean.tolist() == [1.0, 0.0]
    assert stats.cov[0, 0].item() == pytest.approx(2.0)
    assert picked.tolist() == [3, 1]


def test_mds_plugin_remembers_a_threshold_per_site() -> None:
    # Prepare
    stats = FeatureStats(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), 9)
    plugin = MDSPlugin(stats, k=2)
    site = torch.tensor([[0.1, 0.0], [5.0, 0.0], [0.0, 0.2], [3.0, 0.0]])
    # Execute
    plugin.select("a", site)
    # Assert
    assert plugin.selected["a"].tolist() == [0, 2]
    assert plugin.mask("a", site).tolist() == [True, False, True, False]


# ---------------------------------------------------------------- KD
@pytest.mark.parametrize("level", ["features", "logits", "both"])
def test_kd_is_exactly_zero_when_student_is_teacher_and_positive_otherwise(level: str) -> None:
    # Prepare
    model = _model()
    plugin = KDPlugin(retention=0.5, level=level)  # type: ignore[arg-type]
    plugin.set_teacher(model)
    batch = _batch()
    # Execute
    same = plugin.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
    _nudge_backbone(model)
    moved = plugin.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
    # Assert
    assert same is not None and moved is not None
    assert same.item() == 0.0
    assert moved.item() > 0.0


def test_kd_on_unselected_samples_is_zero_and_grads_reach_the_adapter() -> None:
    # Prepare
    model = _model()
    plugin = KDPlugin(sample_mask=lambda f: torch.zeros(len(f), dtype=torch.bool))
    plugin.set_teacher(model)
    _nudge_backbone(model)
    batch = _batch()
    everyone = KDPlugin()
    everyone.set_teacher(plugin.teacher)  # type: ignore[arg-type]
    params = model.train_skill(CLS_TASK)
    # Execute
    none_selected = plugin.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
    loss = everyone.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
    assert loss is not None
    loss.backward()
    # Assert
    assert none_selected is not None and none_selected.item() == 0.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_kd_teacher_learns_a_new_task_from_its_start_skill() -> None:
    # Prepare: the teacher predates SURV_TASK
    model = _model()
    plugin = KDPlugin()
    plugin.set_teacher(model)
    model.add_task(task_spec(SURV_TASK))
    batch = _batch()
    # Execute
    loss = plugin.loss(model, SURV_TASK, batch, model(batch["input"], SURV_TASK))
    # Assert: same backbone, same start skill -> nothing to distil
    assert loss is not None and loss.item() == 0.0


def test_kd_primitives_on_hand_computed_values() -> None:
    # Prepare
    s, t = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # Execute / Assert: per-sample MSE [2, 0]; weights [0, 1] drop sample 0
    assert feature_kd(s, t).item() == pytest.approx(1.0)
    assert feature_kd(s, t, torch.tensor([0.0, 1.0])).item() == 0.0
    assert per_sample_logit_distance(s, s).tolist() == [0.0, 0.0]
    assert per_sample_logit_distance(s[:, :1], t[:, :1]).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- retrieval
def test_retrieval_weights_on_a_hand_made_memory() -> None:
    # Prepare: level 0 memory points along x, level 1 along y
    query = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])]
    memory = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0], [-1.0, 0.0]])]
    # Execute
    w, levels = retrieval_weights(query, memory)
    # Assert: sample 0 resembles level-0 memory, sample 1 level-1 memory
    assert w.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert levels.tolist() == [0.5, 0.5]


def test_retrieval_kd_needs_a_remembered_past_task() -> None:
    # Prepare
    model = _model()
    plugin = RetrievalKDPlugin(ReferenceMemory(per_task=2))
    plugin.set_teacher(model)
    batch = _batch()
    plugin.at_site("a")
    equal = plugin.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
    _nudge_backbone(model)
    # Execute
    empty = plugin.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
    with torch.no_grad():
        past = pooled(plugin.teacher.encode(batch["input"], CLS_TASK))  # type: ignore[union-attr]
    plugin.memory.add("a", "past_task", past)
    remembered = plugin.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
    plugin.at_site("b")
    other_site = plugin.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
    # Assert
    assert equal is not None and equal.item() == 0.0
    assert empty is not None and empty.item() == 0.0
    assert remembered is not None and remembered.item() > 0.0
    assert other_site is not None and other_site.item() == 0.0


# ---------------------------------------------------------------- LwF
def test_lwf_loss_zero_when_old_outputs_equal_new() -> None:
    # Prepare
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    # Execute / Assert
    assert lwf_loss({"a": logits}, {"a": logits.clone()}).item() == 0.0
    assert lwf_loss({"a": logits}, {"a": logits.flip(1)}).item() > 0.0


def test_lwf_plugin_distils_earlier_tasks_on_new_data() -> None:
    # Prepare
    model = _model((CLS_TASK, SURV_TASK))
    plugin = LwFPlugin(alpha=1.0)
    plugin.set_teacher(model)
    batch = _batch()
    # Execute
    same = plugin.loss(model, SURV_TASK, batch, model(batch["input"], SURV_TASK))
    with torch.no_grad():
        next(model.heads[CLS_TASK].parameters()).add_(0.5)
    moved = plugin.loss(model, SURV_TASK, batch, model(batch["input"], SURV_TASK))
    # Assert
    assert same is not None and same.item() == 0.0
    assert moved is not None and moved.item() > 0.0


# ---------------------------------------------------------------- EWC
def test_ewc_penalty_zero_at_anchor_and_hand_computed_elsewhere() -> None:
    # Prepare
    anchor = {"w": torch.tensor([1.0, 2.0])}
    fisher = {"w": torch.tensor([1.0, 2.0])}
    # Execute / Assert: lam/2 * (1*1^2 + 2*1^2) = 3 with lam = 2
    assert ewc_penalty({"w": anchor["w"].clone()}, anchor, fisher, lam=2.0).item() == 0.0
    assert ewc_penalty({"w": torch.tensor([2.0, 3.0])}, anchor, fisher, lam=2.0).item() == 3.0


def test_fisher_diagonal_is_the_mean_squared_gradient() -> None:
    # Prepare: loss = w . x, so the gradient is x
    model = nn.Linear(2, 1, bias=False)
    model.weight.requires_grad_(False)
    batches = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])]
    # Execute
    fisher = fisher_diagonal(model, ["weight"], batches, lambda m, x: m(x).sum())
    # Assert: ([1, 4] + [9, 0]) / 2; requires_grad restored
    assert fisher["weight"].tolist() == [[5.0, 2.0]]
    assert not model.weight.requires_grad


def test_ewc_plugin_is_zero_at_its_anchor() -> None:
    # Prepare
    model = nn.Linear(2, 1)
    plugin = EWCPlugin(lam=1.0)
    plugin.consolidate(model, {"weight": torch.ones(1, 2)})
    out = torch.zeros(1)
    # Execute
    at_anchor = plugin.loss(model, "t", {}, out)
    with torch.no_grad():
        model.weight.add_(1.0)
    moved = plugin.loss(model, "t", {}, out)
    # Assert
    assert at_anchor is not None and at_anchor.item() == 0.0
    assert moved is not None and moved.item() == pytest.approx(1.0)


# ---------------------------------------------------------------- disabled
def _ready(name: str, model: UniconModel) -> object:
    """A plugin of each kind, everything in place so that it would act when enabled."""
    stats = FeatureStats(torch.zeros(16, dtype=torch.float64),
                         torch.eye(16, dtype=torch.float64), 10)
    first, param = next(iter(model.named_parameters()))
    plugin = {
        "mds": lambda: MDSPlugin(stats, k=2, enabled=False,
                                 site_features=lambda s, p, c: {"a": torch.randn(5, 16)}),
        "kd": lambda: KDPlugin(enabled=False),
        "retrieval": lambda: RetrievalKDPlugin(enabled=False),
        "lwf": lambda: LwFPlugin(enabled=False),
        "realign": lambda: RealignPlugin(enabled=False),
        "ewc": lambda: EWCPlugin(enabled=False, fisher_fn=lambda s, p, c: (
            model, [first], {first: torch.ones_like(param)})),
    }[name]()
    return plugin


def _state(plugin: object) -> dict[str, object]:
    """A plugin's attributes, its dictionaries (memories, anchors, selections) by their keys."""
    return {k: sorted(v) if isinstance(v, dict) else v for k, v in vars(plugin).items()}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_a_disabled_plugin_changes_nothing(name: str) -> None:
    # Prepare
    model = _model((CLS_TASK, SURV_TASK))
    plugin = _ready(name, model)
    before_state = _state(plugin)
    strategy = SimpleNamespace(model=model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch()
    # Execute
    plugin.before_stage(strategy, None, None)  # type: ignore[attr-defined, arg-type]
    plugin.after_stage(strategy, None, None)  # type: ignore[attr-defined, arg-type]
    plugin.at_site("a")  # type: ignore[attr-defined]
    _nudge_backbone(model)
    loss = plugin.loss(model, SURV_TASK, batch, model(batch["input"], SURV_TASK))  # type: ignore[attr-defined]
    # Assert: no loss, no bookkeeping, no extra_loss hook for training
    assert loss is None
    assert _state(plugin) == before_state
    assert extra_loss_for([plugin], SURV_TASK) is None  # type: ignore[list-item]
    assert plugin_loss([plugin], model, SURV_TASK, batch, torch.zeros(1)) is None  # type: ignore[list-item]
    assert set(weights) == set(model.state_dict())


def test_build_plugins_by_name_and_options() -> None:
    # Execute
    plugins = build_plugins(["kd", "ewc"], {"kd": {"retention": 0.25}})
    # Assert
    assert [p.name for p in plugins] == ["kd", "ewc"]
    assert plugins[0].retention == 0.25  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown"):
        build_plugins(["nope"])


def test_plugin_loss_sums_enabled_terms() -> None:
    # Prepare
    model = nn.Linear(2, 1)
    a, b = EWCPlugin(lam=2.0), EWCPlugin(lam=2.0, enabled=False)
    for p in (a, b):
        p.consolidate(model, {"weight": torch.ones(1, 2)})
    with torch.no_grad():
        model.weight.add_(1.0)
    # Execute
    total = plugin_loss([a, b], model, "t", {}, torch.zeros(1))
    hook = extra_loss_for([a, b], "t")
    # Assert: only the enabled one: 2/2 * (1 + 1)
    assert total is not None and total.item() == pytest.approx(2.0)
    assert hook is not None and hook(model, {}, torch.zeros(1)).item() == pytest.approx(2.0)
    assert not math.isnan(total.item())


def test_captured_loss_equals_the_plugin_loss_of_the_last_training_forward() -> None:
    # Prepare
    from unicon_core.continual.plugins.base import CapturedLoss

    model = _model((CLS_TASK, SURV_TASK))
    kd, lwf = KDPlugin(), LwFPlugin()
    kd.set_teacher(model)
    lwf.set_teacher(model)
    _nudge_backbone(model)
    batch = _batch()
    # Execute
    with CapturedLoss([kd, lwf], model, SURV_TASK) as regulariser:
        nothing_yet = regulariser()
        out = model(batch["input"], SURV_TASK)
        model(batch["input"] * 2, CLS_TASK)  # another task's forward is not captured
        captured = regulariser()
        again = regulariser()  # LwF's own forwards did not replace the captured one
    expected = plugin_loss([kd, lwf], model, SURV_TASK, batch, out)
    # Assert
    assert nothing_yet.item() == 0.0
    assert expected is not None and captured.item() == pytest.approx(expected.item())
    assert again.item() == pytest.approx(captured.item()) and captured.item() > 0
    assert not model._forward_hooks


def test_kd_use_mds_distils_only_within_the_mds_threshold() -> None:
    # Prepare
    model = _model()
    stats = FeatureStats(torch.zeros(16, dtype=torch.float64), torch.eye(16, dtype=torch.float64),
                         100)
    mds = MDSPlugin(stats)
    kd = KDPlugin(use_mds=True)
    ctx = SimpleNamespace(plugins=[mds, kd])
    kd.before_stage(SimpleNamespace(model=model), None, ctx)  # type: ignore[arg-type]
    _nudge_backbone(model)
    batch = _batch()

    def loss() -> float:
        value = kd.loss(model, CLS_TASK, batch, model(batch["input"], CLS_TASK))
        assert value is not None
        return value.item()

    # Execute
    nothing_selected_yet = loss()
    mds.threshold["a"] = -1.0  # no sample is that close
    none_within = loss()
    mds.threshold["a"] = 1e9
    all_within = loss()
    mds.threshold["b"] = -1.0
    kd.at_site("b")  # the training site's own threshold, not the largest
    site_b = loss()
    kd.at_site("a")
    site_a = loss()
    # Assert
    assert nothing_selected_yet > 0 and none_within == 0.0
    assert all_within == pytest.approx(nothing_selected_yet)
    assert site_b == 0.0 and site_a == pytest.approx(nothing_selected_yet)
    with pytest.raises(ValueError, match="mds"):
        KDPlugin(use_mds=True).before_stage(SimpleNamespace(model=model), None,  # type: ignore[arg-type]
                                            SimpleNamespace(plugins=[]))  # type: ignore[arg-type]


# ---------------------------------------------------------------- reference data in the bench
def test_feature_stats_merge_equals_stats_of_the_concatenated_features() -> None:
    # Prepare: two sites' features, different sizes and means
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 4, generator=g), torch.randn(11, 4, generator=g) + 2.0
    # Execute
    merged = FeatureStats.merge([FeatureStats.from_features(a), FeatureStats.from_features(b)])
    whole = FeatureStats.from_features(torch.cat([a, b]))
    # Assert
    assert merged.count == 18
    assert torch.allclose(merged.mean, whole.mean) and torch.allclose(merged.cov, whole.cov)


def test_mds_takes_its_reference_from_the_first_stage_only() -> None:
    # Prepare: the first stage's sites' features define the reference distribution
    feats = {"a": torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]),
             "b": torch.tensor([[2.0, 2.0], [1.0, 1.0]])}
    strategy = SimpleNamespace(site_features=lambda plan, ctx: feats)
    plugin = MDSPlugin(k=1, metric="cosine", stats_from_first_stage=True)
    # Execute
    plugin.after_stage(strategy, SimpleNamespace(index=0), None)  # type: ignore[arg-type]
    first = plugin.stats
    plugin.after_stage(strategy, SimpleNamespace(index=1), None)  # type: ignore[arg-type]
    # Assert
    assert first is not None and first.count == 5
    assert torch.allclose(first.mean, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert plugin.stats is first  # later stages do not replace it
    assert MDSPlugin(k=1).stats is None


def test_retrieval_remembers_stages_and_a_shared_memory_reaches_other_sites() -> None:
    # Prepare: site "a" trained a past task; site "b" trains the current one
    model = _model()
    batch = _batch()
    with torch.no_grad():
        levels = pooled(model.encode(batch["input"], CLS_TASK))
    strategy = SimpleNamespace(site_levels=lambda plan, ctx: {"a": levels})
    plan = SimpleNamespace(index=0, site_tasks={"a": "past_task"})
    own, shared = (RetrievalKDPlugin(remember=True, shared=s, per_task=2) for s in (False, True))
    for plugin in (own, shared):
        plugin.after_stage(strategy, plan, None)  # type: ignore[arg-type]
        plugin.set_teacher(model)
        plugin.at_site("b")
    _nudge_backbone(model)
    # Execute
    out = model(batch["input"], CLS_TASK)
    own_loss = own.loss(model, CLS_TASK, batch, out)
    shared_loss = shared.loss(model, CLS_TASK, batch, out)
    # Assert
    assert sorted(own.memory.items) == ["a"] and len(own.memory.items["a"]["past_task"][0]) == 2
    assert own_loss is not None and own_loss.item() == 0.0  # "b" itself remembers nothing
    assert shared_loss is not None and shared_loss.item() > 0.0
