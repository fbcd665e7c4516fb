"""Modality expansion: CT -> CT+PET starts as exactly the CT skill, whatever PET holds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.continual.expansion import ChannelView, expand_into, expand_tensor
from unicon_core.model import UniconModel

TINY = BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)


def _spec(name: str, modality: str, channels: int) -> TaskSpec:
    return TaskSpec(name=name, kind="segmentation", modality=modality, channels=channels,
                    spatial_dims=3, input_size=[16, 16, 16], patch_size=8, num_classes=2)


def test_expanded_skill_reproduces_the_source_on_the_source_channel(
        move_ct_skill: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    # Prepare: a CT skill that has moved away from its initialisation
    model = UniconModel(TINY, seed=0)
    model.add_task(_spec("ct", "ct", 1))
    model.add_task(_spec("ctpet", "ct+pet", 2))
    ct, pet = move_ct_skill(model)
    # Execute
    grown = expand_into(model, "ct", "ctpet")
    # Assert
    assert grown == ["head.skip.layer.conv1.conv.weight", "head.skip.layer.conv3.conv.weight",
                     "stem.embed.patch_embeddings.weight"]
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat([ct, pet], 1), "ctpet"), model(ct, "ct"))
    skill = model.skill_state_dict("ctpet")
    assert torch.all(skill["stem.embed.patch_embeddings.weight"][:, 1] == 0)


def test_expand_tensor_only_grows_the_channel_axis() -> None:
    # Prepare
    source = torch.ones(4, 1, 3)
    # Execute
    grown = expand_tensor(source, torch.Size([4, 3, 3]), "w")
    # Assert
    assert grown[:, 0].eq(1).all() and grown[:, 1:].eq(0).all()
    with pytest.raises(ValueError, match="only the input-channel axis"):
        expand_tensor(source, torch.Size([5, 2, 3]), "w")
    with pytest.raises(ValueError, match="only the input-channel axis"):
        expand_tensor(torch.ones(4, 2, 3), torch.Size([4, 1, 3]), "w")


def test_channel_view_keeps_the_chosen_channels() -> None:
    # Prepare
    data = [{"input": torch.arange(2.0).reshape(2, 1), "mask": torch.zeros(1)}]
    # Execute
    item = ChannelView(data, [0])[0]  # type: ignore[arg-type]
    # Assert
    assert item["input"].shape == (1, 1) and item["input"].item() == 0.0
    assert len(ChannelView(data, [1])) == 1  # type: ignore[arg-type]
