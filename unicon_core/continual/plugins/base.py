"""The plugin protocol of foundation refinement: lifecycle hooks plus an optional loss term.

Avalanche's shape (``LwFPlugin``, ``EWCPlugin``): a retention method is a plugin that does its
bookkeeping between stages and adds a term to the training loss; the training loop itself does
not change. Everything is a no-op by default, and a disabled plugin (``enabled=False``) does
nothing at all: its hooks return at once and its loss is ``None``.

The loss hook receives the task being trained: one :class:`~unicon_core.model.UniconModel`
serves several tasks, and a teacher must run the same task's route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unicon_core.continual.hooks import Plugin

if TYPE_CHECKING:
    from unicon_core.continual.runner import RunContext, Strategy
    from unicon_core.continual.stages import StagePlan


#: What :func:`unicon_core.training.train_task` takes as ``extra_loss``.
ExtraLoss = Callable[[nn.Module, dict[str, Any], torch.Tensor], "torch.Tensor | None"]


class ContinualPlugin(Plugin):
    """Hooks ``before_stage``, ``after_stage`` and ``loss``; subclasses override ``on_*``."""

    name = "plugin"

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def before_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Called before a stage trains (nothing when disabled)."""
        if self.enabled:
            self.on_before_stage(strategy, plan, ctx)

    def after_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Called after a stage trained (nothing when disabled)."""
        if self.enabled:
            self.on_after_stage(strategy, plan, ctx)

    def loss(
        self, model: nn.Module, task: str, batch: dict[str, Any], outputs: torch.Tensor
    ) -> torch.Tensor | None:
        """A term added to ``task``'s training loss, or ``None`` (always ``None`` disabled)."""
        return self.compute_loss(model, task, batch, outputs) if self.enabled else None

    def at_site(self, site: str) -> None:
        """Called before a site trains locally (nothing when disabled)."""
        if self.enabled:
            self.on_site(site)

    def on_site(self, site: str) -> None:
        """Override: remember the training site (per-site selections and memories)."""

    def on_before_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Override: work before a stage."""

    def on_after_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Override: bookkeeping after a stage (snapshots, Fisher, memories)."""

    def compute_loss(
        self, model: nn.Module, task: str, batch: dict[str, Any], outputs: torch.Tensor
    ) -> torch.Tensor | None:
        """Override: the loss term of an enabled plugin."""
        return None


def adds_loss(plugin: ContinualPlugin) -> bool:
    """True for an enabled plugin whose class defines a loss term."""
    return plugin.enabled and type(plugin).compute_loss is not ContinualPlugin.compute_loss


def plugin_loss(
    plugins: Sequence[ContinualPlugin], model: nn.Module, task: str, batch: dict[str, Any],
    outputs: torch.Tensor,
) -> torch.Tensor | None:
    """Sum of the plugins' loss terms; ``None`` when no plugin adds one."""
    terms = [t for p in plugins if (t := p.loss(model, task, batch, outputs)) is not None]
    return torch.stack([t.reshape(()) for t in terms]).sum() if terms else None


def extra_loss_for(plugins: Sequence[ContinualPlugin], task: str) -> ExtraLoss | None:
    """The ``extra_loss`` callable of ``train_task`` for ``task`` (``None``: no enabled plugin)."""
    active = [p for p in plugins if p.enabled]
    if not active:
        return None
    return lambda model, batch, outputs: plugin_loss(active, model, task, batch, outputs)


def strategy_model(strategy: Any, ctx: RunContext | None) -> nn.Module | None:
    """The model a strategy trains: ``strategy.current_model(ctx)`` (built on demand, so a
    teacher exists before the first stage) or ``strategy.model``; ``None`` if it has none."""
    build = getattr(strategy, "current_model", None)
    if callable(build) and ctx is not None:
        return build(ctx)
    return getattr(strategy, "model", None)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every parameter frozen, in eval mode: a teacher."""
    import copy

    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def pooled(features: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer ``(B, D)`` summaries of an ``encode`` output.

    Tokens ``(B, N, D)`` are averaged over tokens (one layer); feature maps ``(B, C, *space)``
    (a list, fine to coarse) are averaged over space, one entry per level.
    """
    levels = [features] if isinstance(features, torch.Tensor) else list(features)
    out = []
    for f in levels:
        if f.ndim == 2:
            out.append(f)
        elif f.ndim == 3:  # tokens (B, N, D)
            out.append(f.mean(1))
        else:  # maps (B, C, *space)
            out.append(f.flatten(2).mean(2))
    return out


class CapturedLoss:
    """The plugins' loss for ``task`` as a zero-argument regulariser (``train_task``'s
    ``regulariser`` hook takes no arguments): a forward hook remembers the model's last
    training forward of ``task`` (input and output), and calling this object returns the
    plugins' summed loss on it (zero before any forward or when no plugin adds a term).

    Use as a context manager (the hook is removed on exit). Forwards the plugins run themselves
    (LwF's earlier tasks) are ignored.
    """

    def __init__(self, plugins: Sequence[ContinualPlugin], model: nn.Module, task: str) -> None:
        self.plugins = [p for p in plugins if p.enabled]
        self.model, self.task = model, task
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self._busy = False
        self._handle = model.register_forward_hook(self._remember, with_kwargs=True)

    def _remember(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        task = args[1] if len(args) > 1 else kwargs.get("task")
        if not self._busy and task == self.task and isinstance(output, torch.Tensor):
            self.last = (args[0] if args else kwargs["x"], output)

    def __call__(self) -> torch.Tensor:
        """The plugins' loss on the last forward (a zero tensor when there is none)."""
        if self.last is None or not self.plugins:
            return torch.zeros(())
        x, outputs = self.last
        self._busy = True
        try:
            term = plugin_loss(self.plugins, self.model, self.task, {"input": x}, outputs)
        finally:
            self._busy = False
        return outputs.new_zeros((), dtype=torch.float32) if term is None else term

    def close(self) -> None:
        """Remove the forward hook."""
        self._handle.remove()

    def __enter__(self) -> CapturedLoss:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
