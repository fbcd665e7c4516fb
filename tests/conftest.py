"""Test-wide settings: one torch thread (CI has 2 cores), offline wandb, no Flower telemetry."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _quiet_environment() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    import torch

    torch.set_num_threads(1)
