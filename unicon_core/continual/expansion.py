"""Modality expansion: a task gains a modality (CT -> CT+PET) starting from an existing skill.

The new task has a stem of its own (more input channels) but reuses the source task's adapter and
head as its starting point. Adapter keys are portable between tasks (same LoRA spec); a head or
stem tensor whose only difference is the input-channel axis (axis 1: the segmentation head's
full-resolution skip convolutions, the stem's patch embedding) gets the source's weights for
the source's channels and **zeros** for the added channels. Everything else must match exactly.

With zero weights on the new channels the expanded skill computes exactly the source skill's
output from the source channels, whatever the new channel holds: training starts from the CT
skill and learns how much to use PET.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from unicon_core.data.epochs import set_epoch
from unicon_core.keys import BatchKey
from unicon_core.model import UniconModel

#: Axis of a convolution weight that indexes input channels.
CHANNEL_AXIS = 1


def expand_tensor(source: torch.Tensor, target_shape: torch.Size, key: str) -> torch.Tensor:
    """``source`` widened along the input-channel axis to ``target_shape`` (new part zero)."""
    if tuple(source.shape) == tuple(target_shape):
        return source.clone()
    same_elsewhere = (
        source.ndim == len(target_shape)
        and source.ndim > CHANNEL_AXIS
        and all(
            a == b for i, (a, b) in enumerate(zip(source.shape, target_shape, strict=True))
            if i != CHANNEL_AXIS
        )
        and source.shape[CHANNEL_AXIS] < target_shape[CHANNEL_AXIS]
    )
    if not same_elsewhere:
        raise ValueError(
            f"{key}: source shape {tuple(source.shape)} cannot grow into {tuple(target_shape)} "
            f"(only the input-channel axis {CHANNEL_AXIS} may grow)"
        )
    out = torch.zeros(target_shape, dtype=source.dtype)
    out.narrow(CHANNEL_AXIS, 0, source.shape[CHANNEL_AXIS]).copy_(source)
    return out


def expanded_skill(
    model: UniconModel, source: Mapping[str, torch.Tensor], target_task: str
) -> dict[str, torch.Tensor]:
    """The initial skill of ``target_task`` built from the ``source`` skill's tensors.

    ``model`` must hold ``target_task`` (its fresh skill gives the target shapes). Keys of the
    target that the source lacks (e.g. a stem when the source used a shared foundation stem)
    keep the target's fresh initialisation; source keys the target lacks are an error.
    """
    target = model.skill_state_dict(target_task)
    extra = sorted(set(source) - set(target))
    if extra:
        raise ValueError(f"source skill has keys task {target_task!r} lacks: {extra[:5]}")
    return {
        key: expand_tensor(source[key].detach(), fresh.shape, key) if key in source else fresh
        for key, fresh in target.items()
    }


def expand_into(model: UniconModel, source_task: str, target_task: str) -> list[str]:
    """Initialise ``target_task``'s skill from ``source_task``'s, in place; returns grown keys."""
    source = model.skill_state_dict(source_task)
    state = expanded_skill(model, source, target_task)
    model.load_skill_state_dict(target_task, state)
    target = model.skill_state_dict(target_task)
    return sorted(k for k in target if k in source and source[k].shape != target[k].shape)


class ChannelView(Dataset):
    """A dataset's items with only some input channels (CT-only view of CT+PET patients)."""

    def __init__(self, data: Dataset, channels: list[int]) -> None:
        if not channels:
            raise ValueError("ChannelView needs at least one channel")
        self.data = data
        self.channels = list(channels)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the viewed dataset (its seeded augmentation)."""
        set_epoch(self.data, epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.data[index])
        item[BatchKey.INPUT.value] = item[BatchKey.INPUT.value][self.channels]
        return item
