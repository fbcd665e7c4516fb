"""Masked-patch pretraining: it learns, and its checkpoint becomes a shared frozen foundation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.model import UniconModel
from unicon_core.model.foundation import read_foundation_meta, save_foundation
from unicon_core.model.stems import StemSpec
from unicon_core.pretrain import (
    MaskedPatchModel,
    PretrainConfig,
    pretrain,
    reconstruction_heads,
)

TINY = BackboneConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
SPEC = TaskSpec(
    name="cls",
    kind="classification",
    modality="mri",
    channels=1,
    spatial_dims=2,
    input_size=[16, 16],
    patch_size=4,
    num_classes=2,
)


class Images(TensorDataset):
    """Smooth random images (structure a reconstruction can learn), as dict samples."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randn(n, 1, 4, 4, generator=g)
        super().__init__(torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear"))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input": self.tensors[0][i]}


def test_patches_follow_the_stem_token_order() -> None:
    model = UniconModel(TINY)
    stem = StemSpec.from_task(SPEC)
    model.add_stem(stem, owner=None)
    mpm = MaskedPatchModel(model, stem.key)
    x = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    patches = mpm.patches(x)
    assert patches.shape == (1, 16, 16)
    # token 1 is the second patch of the first row: columns 4..7 of rows 0..3
    assert torch.equal(patches[0, 1], x[0, 0, 0:4, 4:8].reshape(-1))
    assert torch.equal(patches[0, 4], x[0, 0, 4:8, 0:4].reshape(-1))


def test_pretraining_lowers_reconstruction_loss_and_yields_a_foundation(tmp_path) -> None:
    # Prepare
    model = UniconModel(TINY, seed=0)
    stem = StemSpec.from_task(SPEC)
    model.add_stem(stem, owner=None)
    hash_before = model.foundation_hash
    # Execute
    images = Images(256, seed=0)
    predict_zero = float(images.tensors[0].pow(2).mean())  # loss of the trivial predictor
    losses = pretrain(
        model,
        {stem.key: images},
        PretrainConfig(steps=300, batch_size=32, lr=2e-3, mask_ratio=0.4, progress=False),
    )
    digest = save_foundation(model, tmp_path / "f.safetensors", extra={"synthetic": True})
    # Assert
    # masked patches are reconstructed from context, clearly better than predicting zero
    assert np.mean(losses[-20:]) < 0.75 * predict_zero
    assert digest == model.foundation_hash != hash_before
    assert not any(p.requires_grad for p in model.parameters())
    meta = read_foundation_meta(tmp_path / "f.safetensors")
    assert meta["hash"] == digest and meta["stems"][0]["key"] == stem.key
    loaded = UniconModel(
        BackboneConfig(**{**TINY.__dict__, "checkpoint": str(tmp_path / "f.safetensors")})
    )
    loaded.add_task(SPEC)
    assert loaded.foundation_hash == digest
    assert loaded.stem_owner[stem.key] is None
    assert not any(k.startswith("stem.") for k in loaded.skill_keys("cls"))


def test_pretrain_refuses_a_model_with_tasks_or_a_task_stem() -> None:
    model = UniconModel(TINY)
    model.add_task(SPEC)
    with pytest.raises(ValueError, match="before any task"):
        pretrain(model, {SPEC.stem_key: Images(4, 0)}, PretrainConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match=r"pretrain\.mask_ratio"):
        PretrainConfig(mask_ratio=1.0)


def _foundation_model(seed: int = 0) -> tuple[UniconModel, str]:
    model = UniconModel(TINY, seed=seed)
    stem = StemSpec.from_task(SPEC)
    model.add_stem(stem, owner=None)
    return model, stem.key


def test_federated_pretraining_averages_the_sites_local_weights() -> None:
    # Prepare: two sites of different sizes; what each would reach alone from the same start
    from unicon_core.pretrain import federated_pretrain

    cfg = PretrainConfig(steps=3, batch_size=8, lr=2e-3, progress=False, seed=1)
    sites = {"a": Images(16, seed=1), "b": Images(48, seed=2)}
    locals_ = {}
    for index, (site, images) in enumerate(sorted(sites.items())):
        model, key = _foundation_model()
        heads = reconstruction_heads(model, [key], cfg.seed)  # the shared start
        pretrain(model, {key: images}, PretrainConfig(**{**cfg.__dict__,
                 "seed": cfg.seed * 10_007 + index}), heads=heads)
        locals_[site] = model.foundation_state_dict()

    # Execute: one federated round
    model, key = _foundation_model()
    losses = federated_pretrain(model, {s: {key: ds} for s, ds in sites.items()}, cfg, rounds=1)

    # Assert: the foundation is the example-weighted average (16 vs 48 images)
    assert len(losses) == 2
    for name, tensor in model.foundation_state_dict().items():
        want = (16 * locals_["a"][name].double() + 48 * locals_["b"][name].double()) / 64
        torch.testing.assert_close(tensor.double(), want, rtol=1e-5, atol=1e-6)


def test_federated_pretraining_learns_without_pooling() -> None:
    from unicon_core.pretrain import federated_pretrain

    model, key = _foundation_model()
    sites = {f"s{i}": {key: Images(96, seed=i)} for i in range(3)}
    predict_zero = float(np.mean([d[key].tensors[0].pow(2).mean() for d in sites.values()]))
    cfg = PretrainConfig(steps=30, batch_size=32, lr=2e-3, mask_ratio=0.4, progress=False)
    losses = federated_pretrain(model, sites, cfg, rounds=8)
    # later rounds reconstruct masked patches clearly better than predicting zero, and better
    # than the first round
    assert np.mean(losses[-3:]) < 0.85 * predict_zero
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="round"):
        federated_pretrain(model, sites, cfg, rounds=0)
