"""The lifecycle hooks every continual plugin implements (Avalanche's shape).

Its own module, importing nothing at run time, so the runner and the plugins can both use it
without an import cycle (the runner builds plugins; plugins only annotate with its types).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unicon_core.continual.runner import RunContext, Strategy
    from unicon_core.continual.stages import StagePlan


class Plugin:
    """Lifecycle hooks; override what you need."""

    def before_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Called before a stage trains."""

    def after_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Called after a stage trained."""
