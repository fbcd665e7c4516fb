"""Differential privacy of local training: opacus DP-SGD plus per-site epsilon accounting.

Each site trains with DP-SGD (per-example clipping to ``max_grad_norm``, Gaussian noise of
``noise_multiplier * max_grad_norm``, Poisson sampling) and keeps a :class:`PrivacyLedger`: the
``(noise_multiplier, sample_rate, steps)`` history of every round it trained. Rounds compose, so
the site's epsilon after round r is opacus' RDP accountant over the concatenated history.
Before a round, the site asks :meth:`PrivacyLedger.would_exceed` whether that round's steps would
take it past its budget, and if so it stops training and says so.

The ledger belongs to the site: it is kept in the ClientApp's ``context.state`` and, when the
site has a state folder, in ``privacy_ledger.json`` there, so a resumed run continues the count.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from unicon_core.federation.config import PrivacyConfig

LEDGER_FILE = "privacy_ledger.json"

#: One accountant entry: (noise multiplier, sample rate, number of steps).
Step = tuple[float, float, int]


def steps_per_round(
    num_examples: int, batch_size: int, epochs: int, max_steps: int | None = None
) -> int:
    """Optimizer steps one round of local training takes (opacus: ``1/sample_rate`` per epoch)."""
    per_epoch = math.ceil(num_examples / batch_size)
    total = per_epoch * epochs
    return total if max_steps is None else min(total, max_steps)


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate opacus derives from a loader: ``1 / len(loader)``."""
    return 1.0 / math.ceil(num_examples / batch_size)


def epsilon_of(history: list[Step], delta: float) -> float:
    """Epsilon of a DP-SGD history under opacus' RDP accountant (0 for no steps)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(n), float(q), int(s)) for n, q, s in history if s > 0]
    return float(accountant.get_epsilon(delta=delta)) if accountant.history else 0.0


@dataclass
class PrivacyLedger:
    """Per-site privacy spend across rounds."""

    delta: float
    history: list[Step] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far."""
        return epsilon_of(self.history, self.delta)

    def epsilon_after(self, steps: list[Step]) -> float:
        """Epsilon if ``steps`` were spent on top of the history."""
        return epsilon_of(self.history + list(steps), self.delta)

    def would_exceed(self, budget: float | None, steps: list[Step]) -> bool:
        """Whether spending ``steps`` would take epsilon above ``budget`` (None: no budget)."""
        return budget is not None and self.epsilon_after(steps) > budget

    def record(self, server_round: int, steps: list[Step]) -> None:
        """Add one round's accountant history."""
        self.history.extend((float(n), float(q), int(s)) for n, q, s in steps)
        self.rounds.append(int(server_round))

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        """JSON text (what ``context.state`` and the ledger file hold)."""
        return json.dumps(
            {"delta": self.delta, "history": [list(h) for h in self.history], "rounds": self.rounds}
        )

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        """Inverse of :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        return cls(
            delta=float(data["delta"]),
            history=[(float(n), float(q), int(s)) for n, q, s in data["history"]],
            rounds=[int(r) for r in data.get("rounds", [])],
        )

    def save(self, folder: Path) -> Path:
        """Write ``privacy_ledger.json`` into ``folder`` atomically (temp file + rename)."""
        from unicon_core.files import write_atomic

        path = folder / LEDGER_FILE
        write_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, folder: Path, delta: float) -> PrivacyLedger:
        """The ledger saved in ``folder``, or an empty one."""
        path = folder / LEDGER_FILE
        if not path.exists():
            return cls(delta=delta)
        ledger = cls.from_json(path.read_text())
        if ledger.delta != delta:
            raise ValueError(
                f"{path}: the site's ledger was kept for delta={ledger.delta}, the experiment "
                f"now asks for delta={delta}; epsilons for different deltas do not add up"
            )
        return ledger


def entropy_seed() -> int:
    """64 bits from the OS entropy pool (``os.urandom``): a seed no one else can know."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def secure_mode_available() -> bool:
    """Whether opacus' ``secure_mode`` can run here (it needs ``torchcsprng``)."""
    import importlib.util

    return importlib.util.find_spec("torchcsprng") is not None


def noise_generator(module: nn.Module, seed: int) -> torch.Generator:
    """The seeded generator of DP-SGD's noise, on the device of ``module``'s parameters:
    opacus draws the noise where the gradients are, and refuses a generator elsewhere (a CPU
    generator fails on a GPU site)."""
    import torch

    from unicon_core.device import module_device

    return torch.Generator(device=module_device(module)).manual_seed(seed)


class DPSGD:
    """``make_private`` hook for :func:`unicon_core.training.train_task` (opacus DP-SGD).

    Called once per round after the optimizer is built; afterwards :attr:`history` holds the
    accountant's steps of that round and :meth:`close` removes opacus' hooks from the model.

    ``seed`` None (the default, and what every deployment uses): noise and Poisson sampling
    come from opacus' ``secure_mode`` when ``torchcsprng`` is installed, else from a generator
    seeded with 64 bits of OS entropy (:func:`entropy_seed`), which nobody outside the site
    can know or replay. An integer seed makes the noise reproducible: only for simulations that
    ask for it (``privacy.reproducible``), since whoever knows the seed can subtract the noise.
    """

    def __init__(self, cfg: PrivacyConfig, *, seed: int | None = None) -> None:
        if not cfg.enabled:
            raise ValueError("DPSGD needs privacy.enabled=true")
        self.cfg = cfg
        self.seed = seed
        self._engine: Any = None
        self._module: Any = None

    def __call__(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        """Wrap model, optimizer and loader with opacus (Poisson sampling, clipping, noise)."""
        from opacus import PrivacyEngine

        secure = self.seed is None and secure_mode_available()
        self._engine = PrivacyEngine(accountant="rdp", secure_mode=secure)
        module.train()  # opacus validates in training mode; train_task switches to it anyway
        seed = entropy_seed() if self.seed is None else self.seed
        # Without secure_mode, Poisson sampling draws from torch's global generator, which
        # train_task seeds with cfg.seed: the caller passes an entropy seed there too.
        module, optimizer, loader = self._engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.cfg.noise_multiplier,
            max_grad_norm=self.cfg.max_grad_norm,
            poisson_sampling=True,
            noise_generator=None if secure else noise_generator(module, seed),
        )
        self._module = module
        return module, optimizer, loader

    @property
    def history(self) -> list[Step]:
        """Accountant history of the round: ``[(noise_multiplier, sample_rate, steps)]``."""
        if self._engine is None:
            return []
        return [(float(n), float(q), int(s)) for n, q, s in self._engine.accountant.history]

    def close(self) -> None:
        """Remove opacus' hooks and per-sample-gradient attributes from the model."""
        if self._module is not None and hasattr(self._module, "to_standard_module"):
            self._module.to_standard_module()
        self._module = None
