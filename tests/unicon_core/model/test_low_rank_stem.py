"""Low-rank patch stem (``TaskSpec.stem_rank``): size, default unchanged, training, validation.

The skill contract with a low-rank stem (task B leaves task A and the backbone bit-identical,
exact skill keys, round trip) is parametrised into ``test_unicon.py``; this file covers what is
particular to the option. Tiny models only, CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from monai.networks.blocks import PatchEmbeddingBlock

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.model import SkillStateError, UniconModel
from unicon_core.model.foundation import read_foundation_meta, save_foundation
from unicon_core.model.stems import ImageStem, LowRankPatchEmbedding, StemSpec

TINY = BackboneConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
I3RESNET_3D = BackboneConfig(name="i3resnet", options={"blocks": [1, 1, 1, 1], "width": 8})
CT_ON_I3RESNET = BackboneConfig(
    hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
    modalities={"ct": {"name": "i3resnet", "options": {"blocks": [1, 1, 1, 1], "width": 8}}},
)


def _task(name: str = "t", **kw: object) -> TaskSpec:
    base: dict[str, object] = {
        "name": name, "kind": "classification", "modality": "mri", "channels": 1,
        "spatial_dims": 2, "input_size": [16, 16], "patch_size": 4, "num_classes": 2,
    }
    return TaskSpec(**{**base, **kw})  # type: ignore[arg-type]


def _ctpet(name: str = "ctpet", **kw: object) -> TaskSpec:
    base: dict[str, object] = {"kind": "segmentation", "modality": "ct+pet", "channels": 2,
                               "spatial_dims": 3, "input_size": [8, 8, 8]}
    return _task(name, **{**base, **kw})


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- size
@pytest.mark.parametrize(
    ("spec", "hidden"),
    [
        (_task(stem_rank=3), 32),
        (_ctpet(stem_rank=8), 32),
        (_ctpet(stem_rank=64, input_size=[32, 32, 32], patch_size=8), 768),  # ViT-B, CT+PET
        (_task(modality="ct", channels=1, spatial_dims=3, input_size=[32, 32, 16], patch_size=8,
               stem_rank=16), 48),
    ],
)
def test_low_rank_stem_has_the_parameters_of_the_formula(spec: TaskSpec, hidden: int) -> None:
    # Prepare
    rank, patch = spec.stem_rank, spec.channels * spec.patch_size**spec.spatial_dims
    n_patches = math.prod(s // spec.patch_size for s in spec.input_size)
    full_spec = TaskSpec(**{**spec.__dict__, "stem_rank": None})
    # Execute
    low = ImageStem(StemSpec.from_task(spec), hidden, num_heads=4)
    full = ImageStem(StemSpec.from_task(full_spec), hidden, num_heads=4)
    # Assert: r*C*p^d (first factor) + r*hidden + hidden (second) + positional embedding
    assert rank is not None
    assert _count(low) == rank * patch + rank * hidden + hidden + n_patches * hidden
    assert _count(full) == patch * hidden + hidden + n_patches * hidden
    assert _count(low) < _count(full)


def test_vit_b_ct_pet_stem_shrinks_from_0_84m_to_0_16m_parameters() -> None:
    spec = _ctpet(stem_rank=64, input_size=[32, 32, 32], patch_size=8)
    low = ImageStem(StemSpec.from_task(spec), 768, num_heads=12)
    full = ImageStem(StemSpec.from_task(_ctpet(input_size=[32, 32, 32], patch_size=8)), 768, 12)
    assert (_count(full), _count(low)) == (836_352, 164_608)


# ---------------------------------------------------------------------------- default unchanged
def test_default_stem_is_the_monai_patch_embedding_with_its_keys_and_weights() -> None:
    # Prepare
    spec = _ctpet()
    stem_spec = StemSpec.from_task(spec)
    # Execute
    torch.manual_seed(5)
    stem = ImageStem(stem_spec, 32, num_heads=4)
    torch.manual_seed(5)
    reference = PatchEmbeddingBlock(in_channels=2, img_size=[8, 8, 8], patch_size=4,
                                    hidden_size=32, num_heads=4, proj_type="conv",
                                    pos_embed_type="learnable", spatial_dims=3)
    # Assert: the very module (keys, shapes, initial weights) and no trace of the option
    assert isinstance(stem.embed, PatchEmbeddingBlock)
    shapes = {k: tuple(v.shape) for k, v in stem.state_dict().items()}
    assert shapes == {
        "embed.position_embeddings": (1, 8, 32),
        "embed.patch_embeddings.weight": (32, 2, 4, 4, 4),
        "embed.patch_embeddings.bias": (32,),
    }
    ref = reference.state_dict()
    assert all(torch.equal(v, ref[k.removeprefix("embed.")]) for k, v in stem.state_dict().items())
    assert spec.stem_key == "ct_pet_3d_c2_8x8x8_p4"
    assert "stem_rank" not in spec.to_dict() and "stem_rank" not in stem_spec.to_dict()


def test_low_rank_forward_is_conv_then_linear_then_position_like_monai() -> None:
    # Prepare
    stem = ImageStem(StemSpec.from_task(_ctpet(stem_rank=5)), 32, num_heads=4).eval()
    embed = stem.embed
    assert isinstance(embed, LowRankPatchEmbedding)
    x = torch.randn(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    # Execute
    tokens = stem(x)
    # Assert: (B, N, r) patch codes -> hidden, + positional embedding (dropout is off)
    codes = embed.patch_embeddings.down(x).flatten(2).transpose(1, 2)
    assert codes.shape == (2, 8, 5)
    expected = embed.patch_embeddings.up(codes) + embed.position_embeddings
    torch.testing.assert_close(tokens, expected)
    assert tokens.shape == (2, 8, 32)


# ---------------------------------------------------------------------------- keys and specs
def test_stem_key_carries_the_rank_so_ranks_never_share_a_stem() -> None:
    # Prepare
    full, r4, r8 = _ctpet("full"), _ctpet("rank4", stem_rank=4), _ctpet("rank8", stem_rank=8)
    # Execute
    model = UniconModel(TINY, seed=0)
    for spec in (full, r4, r8):
        model.add_task(spec)
    # Assert
    assert r4.stem_key == full.stem_key + "_r4" and r8.stem_key == full.stem_key + "_r8"
    assert _ctpet("own", own_stem=True, stem_rank=4).stem_key == "task_own_r4"
    assert len({model.task_stem[t] for t in model.tasks}) == 3
    assert all(model.stem_owner[model.task_stem[t]] == t for t in model.tasks)
    low_keys = {k for k in model.skill_keys("rank4") if k.startswith("stem.")}
    assert low_keys == {"stem.embed.patch_embeddings.down.weight",
                        "stem.embed.patch_embeddings.up.weight",
                        "stem.embed.patch_embeddings.up.bias", "stem.embed.position_embeddings"}


def test_specs_round_trip_and_older_stem_dicts_load_as_full_stems() -> None:
    spec = _ctpet(stem_rank=8)
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    stem_spec = StemSpec.from_task(spec)
    assert StemSpec.from_dict(stem_spec.to_dict()) == stem_spec
    old = StemSpec.from_task(_ctpet()).to_dict()  # what checkpoints before the option hold
    assert "stem_rank" not in old and StemSpec.from_dict(old).stem_rank is None


def test_a_low_rank_skill_loads_strictly() -> None:
    # Prepare
    model = UniconModel(TINY, seed=0)
    model.add_task(_ctpet("full"))
    model.add_task(_ctpet("low", stem_rank=4))
    # Execute / Assert: a full stem's skill does not fit the low-rank task, nothing loads
    before = model.skill_state_dict("low")
    with pytest.raises(SkillStateError, match=r"missing keys.*unexpected keys"):
        model.load_skill_state_dict("low", model.skill_state_dict("full"))
    assert all(torch.equal(v, before[k]) for k, v in model.skill_state_dict("low").items())


def test_a_low_rank_foundation_stem_is_saved_shared_and_pretrainable(tmp_path) -> None:
    from unicon_core.pretrain import MaskedPatchModel

    # Prepare: a foundation with a low-rank CT+PET stem
    spec = _ctpet(stem_rank=4)
    base = UniconModel(TINY, seed=0)
    base.add_stem(StemSpec.from_task(spec), owner=None)
    x = torch.randn(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    loss = MaskedPatchModel(base, spec.stem_key)(x, torch.rand(2, 8) < 0.5)
    path = tmp_path / "f.safetensors"
    digest = save_foundation(base, path)
    # Execute
    model = UniconModel(BackboneConfig(**{**TINY.__dict__, "checkpoint": str(path)}), seed=3)
    model.add_task(spec)
    # Assert
    assert torch.isfinite(loss)
    assert read_foundation_meta(path)["stems"][0]["stem_rank"] == 4
    assert model.foundation_hash == digest
    assert model.task_stem[spec.name] == spec.stem_key and model.stem_owner[spec.stem_key] is None
    assert not any(k.startswith("stem.") for k in model.skill_keys(spec.name))


# ---------------------------------------------------------------------------- training
def test_a_low_rank_stem_trains() -> None:
    # Prepare: a tiny fixed batch, the skill (stem included) trainable
    model = UniconModel(TINY, seed=0)
    model.add_task(_task(stem_rank=4))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16, generator=gen), torch.arange(8) % 2
    params = model.train_skill("t")
    stem_before = {k: v.clone() for k, v in model.skill_state_dict("t").items()
                   if k.startswith("stem.")}
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    # Execute
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x, "t"), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Assert
    assert losses[-1] < 0.7 * losses[0], losses
    after = model.skill_state_dict("t")
    assert all(not torch.equal(after[k], v) for k, v in stem_before.items())


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"stem_rank": 0}, r"must be an integer >= 1 or null, got 0"),
        ({"stem_rank": -2}, r"got -2"),
        ({"stem_rank": 2.5}, r"got 2\.5"),
        ({"stem_rank": True}, r"got True"),
        ({"stem_rank": "4"}, r"got '4'"),
        ({"stem_rank": 16},
         r"16 must be < channels \* patch_size\*\*spatial_dims = 1 \* 4\*\*2 = 16"),
        ({"stem_rank": 2, "modality": "clinical", "spatial_dims": 0, "feature_names": ["age"]},
         r"2 is set but a clinical task has no patch stem"),
    ],
)
def test_bad_stem_rank_names_the_key_value_and_limit(kw: dict[str, object], why: str) -> None:
    with pytest.raises(ValueError, match=rf"task 't'\.stem_rank: .*{why}"):
        _task(**kw)


@pytest.mark.parametrize("cfg", [I3RESNET_3D, CT_ON_I3RESNET], ids=["i3resnet", "ct_slot"])
def test_stem_rank_on_a_backbone_without_patch_stem_is_an_error(cfg: BackboneConfig) -> None:
    model = UniconModel(cfg, seed=0)
    spec = _task("ct_cls", modality="ct", spatial_dims=3, input_size=[32, 32, 16], patch_size=8,
                 stem_rank=4)
    with pytest.raises(ValueError, match=r"task 'ct_cls' cannot use backbone 'i3resnet': "
                                         r"stem_rank=4 .*channel stem"):
        model.add_task(spec)
    assert "ct_cls" not in model.tasks and not model.stems


def test_stem_rank_that_saves_nothing_at_this_hidden_size_is_an_error() -> None:
    # 2D, 1 channel, patch 4: 16 inputs per patch; at hidden 32 the factorised projection is
    # smaller only for r * (16 + 32) < 16 * 32, i.e. r <= 10
    model = UniconModel(TINY, seed=0)
    model.add_task(_task("ok", stem_rank=10))
    with pytest.raises(ValueError, match=r"task 'no' cannot use backbone 'transformer': "
                                         r"stem_rank=11 .*hidden_size 32; use stem_rank <= 10"):
        model.add_task(_task("no", stem_rank=11))


def test_stem_rank_is_a_task_file_option() -> None:
    from unicon_core.hydra_config import load_config, task_specs

    specs = task_specs(load_config(["tasks.ctpet_seg.stem_rank=16"]))
    assert specs["ctpet_seg"].stem_rank == 16 and specs["ct_seg"].stem_rank is None
    with pytest.raises(ValueError, match=r"task 'ctpet_seg'\.stem_rank: 1024 must be <"):
        task_specs(load_config(["tasks.ctpet_seg.stem_rank=1024"]))


def test_modality_expansion_grows_the_low_rank_stem_on_its_channel_axis(
        move_ct_skill: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    from unicon_core.continual.expansion import expand_into

    # Prepare: CT and CT+PET tasks with low-rank stems of the same rank, CT moved off its init
    model = UniconModel(TINY, seed=0)
    model.add_task(_ctpet("ct", modality="ct", channels=1, input_size=[16, 16, 16], patch_size=8,
                          stem_rank=4))
    model.add_task(_ctpet("ctpet", input_size=[16, 16, 16], patch_size=8, stem_rank=4))
    ct, pet = move_ct_skill(model)
    # Execute
    grown = expand_into(model, "ct", "ctpet")
    # Assert: only the first factor has a channel axis; CT+PET starts as the CT skill
    assert "stem.embed.patch_embeddings.down.weight" in grown
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat([ct, pet], 1), "ctpet"), model(ct, "ct"))
