"""Where computation runs: ``train.device=auto|cpu|cuda[:i]`` and bf16 autocast on CUDA.

``auto`` picks CUDA when a GPU is visible, else the CPU (the default everywhere without one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn


def resolve_device(name: str = "auto", setting: str = "train.device") -> torch.device:
    """The torch device for a ``train.device`` value (clear error for an absent GPU);
    ``setting`` is how messages name the value (e.g. ``--device`` for a command option)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{setting}={name!r} but no CUDA GPU is visible here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{setting}={name!r} but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch with every tensor moved to ``device`` (others unchanged)."""
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """bf16 autocast on CUDA when ``enabled``; a no-op on the CPU (results stay float32)."""
    if enabled and device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
