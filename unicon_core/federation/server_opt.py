"""Server-side optimisers per task on the aggregated delta (FedOpt, Reddi et al. 2021).

The update rules are Flower's (``flwr.serverapp.strategy`` ``FedAvgM``, ``FedAdam``,
``FedYogi``), written for one task's ``{key: array}`` so each task keeps its own state:

* ``fedavg``: ``x + delta`` (plain FedAvg, no state);
* ``fedavgm``: ``v = momentum * v + delta`` (``v = delta`` in the first round),
  ``x + lr * v`` (Flower's FedAvgM, with its pseudo-gradient ``-delta``);
* ``fedadam``: ``m = b1 m + (1 - b1) delta``, ``v = b2 v + (1 - b2) delta^2``,
  ``x + eta_t m / (sqrt(v) + tau)`` with Flower's bias-corrected ``eta_t``;
* ``fedyogi``: as Adam with ``v = v - (1 - b2) delta^2 sign(v - delta^2)`` and ``eta``;
* ``fedexp``: ``x + eta_g delta`` with FedExP's adaptive server step (Jhunjhunwala et al.,
  ICLR 2023; not in Flower): ``eta_g = max(1, mean_i |delta_i|^2 / (2 (|delta|^2 + eps)))``,
  the sites' mean squared update norm (example-weighted) over twice the mean update's. It is
  1 (FedAvg) while the sites agree and grows towards ``sites / 2`` as their updates turn
  orthogonal, when averaging shrinks the step most; no state.

``delta`` is ``aggregate - global`` of the task, computed in float64; the result keeps each
key's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from unicon_core.federation.validation import update_norm

Arrays = Mapping[str, np.ndarray]
SERVER_OPTS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedexp")


@dataclass(frozen=True)
class ServerOptConfig:
    """Which server optimiser a task uses and its hyper-parameters (Flower's defaults)."""

    name: str = "fedavg"
    lr: float = 1.0  # fedavgm: server learning rate
    momentum: float = 0.9  # fedavgm
    eta: float = 1e-1  # fedadam / fedyogi
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    eps: float = 1e-3  # fedexp: keeps eta_g finite when the site updates cancel out

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTS:
            raise ValueError(f"server_opt {self.name!r} is not one of {SERVER_OPTS}")
        if not (self.lr > 0 and self.eta > 0 and self.tau > 0 and self.eps > 0):
            raise ValueError("server_opt lr, eta, tau and eps must be > 0")
        for name in ("momentum", "beta_1", "beta_2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"server_opt {name} must be in [0, 1)")


@dataclass
class ServerOptimizer:
    """One task's optimiser state across rounds."""

    cfg: ServerOptConfig = field(default_factory=ServerOptConfig)
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    steps: int = 0
    #: fedexp: the server step of the last round (1 for every other optimiser)
    last_lr: float = 1.0

    def step(self, current: Arrays, aggregate: Arrays,
             site_sq_norm: float | None = None) -> dict[str, np.ndarray]:
        """The task's new skill from its current one and the round's aggregate
        (``site_sq_norm``, fedexp only: the example-weighted mean over the round's sites of
        ``|site skill - current|^2``)."""
        cfg = self.cfg
        if cfg.name == "fedavg":
            return {k: np.asarray(v).copy() for k, v in aggregate.items()}
        x = {k: np.asarray(v, np.float64) for k, v in current.items()}
        delta = {k: np.asarray(aggregate[k], np.float64) - x[k] for k in x}
        if set(self.m) != set(delta) or any(self.m[k].shape != delta[k].shape for k in delta):
            self.m, self.v, self.steps = {}, {}, 0  # layout changed: restart the state
        self.steps += 1
        if cfg.name == "fedexp":
            if site_sq_norm is None or not (site_sq_norm >= 0 and np.isfinite(site_sq_norm)):
                raise ValueError(f"fedexp needs the sites' mean squared update norm, got "
                                 f"{site_sq_norm!r}")
            mean_sq = sum(float((d**2).sum()) for d in delta.values())
            self.last_lr = max(1.0, site_sq_norm / (2.0 * (mean_sq + cfg.eps)))
            new = {k: x[k] + self.last_lr * delta[k] for k in x}
        elif cfg.name == "fedavgm":
            self.m = {k: cfg.momentum * self.m[k] + d if self.m else d.copy()
                      for k, d in delta.items()}
            new = {k: x[k] + cfg.lr * self.m[k] for k in x}
        else:
            self.m = {k: cfg.beta_1 * self.m.get(k, 0.0) + (1 - cfg.beta_1) * d
                      for k, d in delta.items()}
            if cfg.name == "fedadam":
                self.v = {k: cfg.beta_2 * self.v.get(k, 0.0) + (1 - cfg.beta_2) * d**2
                          for k, d in delta.items()}
                eta = (cfg.eta * np.sqrt(1 - cfg.beta_2 ** (self.steps + 1.0))
                       / (1 - cfg.beta_1 ** (self.steps + 1.0)))
            else:
                self.v = {k: self.v.get(k, np.zeros_like(d))
                          - (1 - cfg.beta_2) * d**2 * np.sign(self.v.get(k, 0.0) - d**2)
                          for k, d in delta.items()}
                eta = cfg.eta
            new = {k: x[k] + eta * self.m[k] / (np.sqrt(self.v[k]) + cfg.tau) for k in x}
        return {k: new[k].astype(np.asarray(current[k]).dtype) for k in new}


def site_sq_norm(states: Sequence[Arrays], weights: Sequence[float], reference: Arrays
                 ) -> float:
    """The example-weighted mean over sites of ``|state - reference|^2`` over
    ``reference``'s keys (float64): FedExP's numerator."""
    total = float(sum(weights))
    if not total > 0:
        raise ValueError("site_sq_norm needs positive weights")
    return sum(w * update_norm(reference, s) ** 2
               for s, w in zip(states, weights, strict=True)) / total
