"""SCAFFOLD control variates at a site (Karimireddy et al. 2020), for a skill's parameters.

Client drift: with heterogeneous sites, each site's local steps walk towards its own optimum and
the average of those walks is not the pooled-data walk. SCAFFOLD corrects every local gradient
by ``c - c_i``: ``c`` (the server's, per task) estimates the task's gradient over all sites,
``c_i`` (the site's own, kept at the site) this site's. After the round the site's new ``c_i``
is the mean of the raw minibatch gradients it computed (a gradient-space estimate, unlike the
paper's option II ``(x - y) / (K lr)``, which with Adam is a mean *step*, not a gradient); the
site sends ``c_i_new - c_i`` and the server adds ``(1 / N) x`` the sum of those to ``c``
(:mod:`unicon_core.federation.scaffold`).

The correction is added to each parameter's gradient after ``backward`` and before the
optimiser's step (with Adam it is then normalised with the gradient). Not combined with DP-SGD:
a mean of unclipped, un-noised gradients would leave the site.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from unicon_core.federation.scaffold import control_problem


class ControlVariates:
    """One site's SCAFFOLD correction for one local run over ``params``.

    Parameters
    ----------
    params : mapping
        Skill key -> the parameter it names (the parameters this run trains).
    server : mapping
        The server's control variate ``c`` per key (same shapes as ``params``).
    site : mapping, optional
        The site's own ``c_i`` from its last round (zeros when ``None``, its first round).
    """

    def __init__(self, params: Mapping[str, nn.Parameter], server: Mapping[str, np.ndarray],
                 site: Mapping[str, np.ndarray] | None = None) -> None:
        self.params = dict(params)
        for name, given in (("server", server), ("site", site)):
            if given is not None and (problem := control_problem(given, self.params)):
                raise ValueError(f"{name} {problem}")
        self.site = {k: np.asarray(site[k], np.float32) if site is not None
                     else np.zeros(tuple(p.shape), np.float32) for k, p in self.params.items()}
        self._shift = {k: torch.as_tensor(np.asarray(server[k], np.float32) - self.site[k])
                       for k in self.params}
        self._sums = {k: torch.zeros(p.shape, dtype=torch.float64) for k, p in
                      self.params.items()}
        self.steps = 0

    def correct(self) -> None:
        """Record this step's raw gradients, then add ``c - c_i`` to them (after ``backward``,
        before the optimiser's step). A parameter without a gradient counts as zero. The sums
        and shifts move to the gradient's device once, not every step."""
        self.steps += 1
        for key, param in self.params.items():
            grad = param.grad
            if grad is None:
                continue
            if self._sums[key].device != grad.device:
                self._sums[key] = self._sums[key].to(grad.device)
                self._shift[key] = self._shift[key].to(grad.device)
            self._sums[key] += grad.detach().to(torch.float64)
            grad.add_(self._shift[key].to(grad.dtype))

    def site_update(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(new c_i, c_i_new - c_i)`` after the run: the mean raw gradient per key (the old
        ``c_i`` again when the run took no step)."""
        if self.steps == 0:
            return dict(self.site), {k: np.zeros_like(v) for k, v in self.site.items()}
        new = {k: (s / self.steps).cpu().numpy().astype(np.float32)
               for k, s in self._sums.items()}
        return new, {k: new[k] - self.site[k] for k in new}
