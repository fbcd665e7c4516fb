"""Each task kind learns a tiny separable fixture; metrics are measured on held-out samples."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
from unicon_core.model import UniconModel
from unicon_core.training import evaluate_task, make_loader, train_task

TINY = BackboneConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


class DictDataset(Dataset):
    """Samples as dicts of tensors (the shape site datasets produce)."""

    def __init__(self, **columns: torch.Tensor) -> None:
        self.columns = columns
        self.n = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


def _squares(
    n: int, size: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy images; half contain a bright square/cube whose mask is the target."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, *size, generator=g) * 0.3
    mask = torch.zeros(n, 1, *size, dtype=torch.long)
    label = torch.arange(n) % 2
    for i in range(n):
        if label[i]:
            edge = size[0] // 2
            lo = [int(torch.randint(0, s - edge + 1, (1,), generator=g)) for s in size]
            region = (i, 0, *[slice(a, a + edge) for a in lo])
            mask[region] = 1
            x[region] += 1.5
    return x, mask, label


def _fit_and_score(
    spec: TaskSpec, train: DictDataset, test: DictDataset, steps: int, lr: float = 3e-3
) -> dict[str, float]:
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    cfg = TrainConfig(epochs=1000, max_steps=steps, batch_size=16, lr=lr, seed=0, progress=False)
    result = train_task(model, spec.name, make_loader(train, 16, shuffle=True, seed=0), cfg)
    assert result.steps == steps and result.num_examples >= steps
    assert math.isfinite(result.loss)
    return evaluate_task(model, spec.name, make_loader(test, 32, shuffle=False))


def test_2d_classification_learns() -> None:
    spec = TaskSpec(
        name="cls",
        kind="classification",
        modality="mri",
        channels=1,
        spatial_dims=2,
        input_size=[16, 16],
        patch_size=4,
        num_classes=2,
    )
    xtr, _, ytr = _squares(128, (16, 16), seed=0)
    xte, _, yte = _squares(64, (16, 16), seed=1)
    metrics = _fit_and_score(
        spec, DictDataset(input=xtr, label=ytr), DictDataset(input=xte, label=yte), steps=60
    )
    assert metrics["auc"] > 0.9, metrics
    assert metrics["balanced_accuracy"] > 0.75, metrics
    assert metrics["num_examples"] == 64


def test_multiclass_classification_reports_ovr_auc() -> None:
    spec = TaskSpec(
        name="cls3",
        kind="classification",
        modality="mri",
        channels=1,
        spatial_dims=2,
        input_size=[8, 8],
        patch_size=4,
        num_classes=3,
    )
    g = torch.Generator().manual_seed(0)
    y = torch.arange(150) % 3
    x = torch.randn(150, 1, 8, 8, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float()
    metrics = _fit_and_score(
        spec,
        DictDataset(input=x[:100], label=y[:100]),
        DictDataset(input=x[100:], label=y[100:]),
        steps=40,
    )
    assert metrics["auc"] > 0.9, metrics


def test_2d_segmentation_learns() -> None:
    spec = TaskSpec(
        name="seg2",
        kind="segmentation",
        modality="mri",
        channels=1,
        spatial_dims=2,
        input_size=[16, 16],
        patch_size=4,
        num_classes=2,
    )
    xtr, mtr, _ = _squares(96, (16, 16), seed=0)
    xte, mte, _ = _squares(32, (16, 16), seed=1)
    metrics = _fit_and_score(
        spec, DictDataset(input=xtr, mask=mtr), DictDataset(input=xte, mask=mte), steps=80, lr=1e-2
    )
    assert metrics["dice"] > 0.7, metrics
    assert metrics["hd95"] < 4.0, metrics


@pytest.mark.slow
def test_3d_segmentation_learns() -> None:
    spec = TaskSpec(
        name="seg3",
        kind="segmentation",
        modality="ct",
        channels=1,
        spatial_dims=3,
        input_size=[16, 16, 16],
        patch_size=4,
        num_classes=2,
    )
    xtr, mtr, _ = _squares(64, (16, 16, 16), seed=0)
    xte, mte, _ = _squares(16, (16, 16, 16), seed=1)
    metrics = _fit_and_score(
        spec, DictDataset(input=xtr, mask=mtr), DictDataset(input=xte, mask=mte), steps=60, lr=1e-2
    )
    assert metrics["dice"] > 0.6, metrics


def _survival(n: int, seed: int) -> DictDataset:
    """Exponential event times whose hazard grows with feature 0; random censoring."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    hazard = torch.exp(1.5 * x[:, 0])
    t_event = -torch.log(torch.rand(n, generator=g)) / hazard
    t_censor = -torch.log(torch.rand(n, generator=g)) / 0.3
    time = torch.minimum(t_event, t_censor) + 1e-3
    event = (t_event <= t_censor).float()
    return DictDataset(input=x, time=time, event=event)


def test_tabular_survival_learns() -> None:
    spec = TaskSpec(
        name="surv",
        kind="survival",
        modality="clinical",
        spatial_dims=0,
        feature_names=["f0", "f1", "f2", "f3"],
    )
    metrics = _fit_and_score(spec, _survival(256, seed=0), _survival(128, seed=1), steps=80)
    assert metrics["c_index"] > 0.7, metrics


def test_training_is_deterministic_under_a_seed() -> None:
    spec = TaskSpec(
        name="cls",
        kind="classification",
        modality="mri",
        channels=1,
        spatial_dims=2,
        input_size=[16, 16],
        patch_size=4,
        num_classes=2,
    )
    x, _, y = _squares(48, (16, 16), seed=0)
    data = DictDataset(input=x, label=y)
    skills = []
    for _ in range(2):
        model = UniconModel(TINY, seed=0)
        model.add_task(spec)
        cfg = TrainConfig(max_steps=5, batch_size=8, seed=3, progress=False)
        train_task(model, "cls", make_loader(data, 8, shuffle=True, seed=3), cfg)
        skills.append(model.skill_state_dict("cls"))
    assert all(torch.equal(skills[0][k], skills[1][k]) for k in skills[0])


def test_undefined_metrics_are_nan_not_guessed() -> None:
    spec = TaskSpec(
        name="cls",
        kind="classification",
        modality="mri",
        channels=1,
        spatial_dims=2,
        input_size=[16, 16],
        patch_size=4,
        num_classes=2,
    )
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    x, _, _ = _squares(8, (16, 16), seed=0)
    one_class = DictDataset(input=x, label=torch.zeros(8, dtype=torch.long))
    metrics = evaluate_task(model, "cls", make_loader(one_class, 4, shuffle=False))
    assert math.isnan(metrics["auc"])


def test_parameter_groups_train_with_their_own_learning_rates() -> None:
    spec = TaskSpec(name="cls", kind="classification", modality="mri", channels=1, spatial_dims=2,
                    input_size=[16, 16], patch_size=4, num_classes=2)
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    skill = model.skill_parameters("cls")
    head = [p for k, p in skill.items() if k.startswith("head.")]
    rest = [p for k, p in skill.items() if not k.startswith("head.")]
    before = {k: p.detach().clone() for k, p in skill.items()}
    x, _, y = _squares(16, (16, 16), seed=0)
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=0.01, optimizer="sgd", momentum=0.0,
                      progress=False)
    groups = [{"params": head, "lr": 0.01}, {"params": rest, "lr": 0.0}]
    train_task(model, "cls", make_loader(DictDataset(input=x, label=y), 8, shuffle=False), cfg,
               params=groups)
    # on the CPU: train.device defaults to auto, which is a GPU where one is visible
    after = {k: p.detach().cpu() for k, p in model.skill_parameters("cls").items()}
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head."))


class EpochRecordingDataset(DictDataset):
    """A dataset that records every ``set_epoch`` call (the seeded-augmentation hook)."""

    def __init__(self, **columns: torch.Tensor) -> None:
        super().__init__(**columns)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_augmentation_epochs_start_at_first_epoch() -> None:
    # Prepare: 8 samples in batches of 4 (2 steps a pass), 5 steps: three passes
    spec = TaskSpec(name="t", kind="classification", modality="clinical", spatial_dims=0,
                    feature_names=["f0", "f1", "f2"], num_classes=2)
    data = EpochRecordingDataset(input=torch.randn(8, 3), label=torch.arange(8) % 2)
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    cfg = TrainConfig(epochs=3, max_steps=5, batch_size=4, seed=0, progress=False)

    # Execute
    train_task(model, "t", make_loader(data, 4, shuffle=True, seed=0), cfg, first_epoch=6)
    train_task(model, "t", make_loader(data, 4, shuffle=True, seed=0), cfg)

    # Assert: the first run numbers its passes from 6, the default from 0
    assert data.epochs == [6, 7, 8, 0, 1, 2]
