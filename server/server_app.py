"""Flower ServerApp of unicon (``server.server_app:app``).

Thin on purpose: it reads the experiment name and hydra overrides from Flower's run config and
hands the Grid to :func:`server.federation.run_federation`, which runs per-task FedAvg. Heavy
libraries load inside ``main``.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from unicon_core import console


def make_server_app(overrides: Sequence[str] = ()) -> ServerApp:
    """A ServerApp; ``overrides`` are hydra overrides applied after the run config's own."""
    extra = list(overrides)
    server_app = ServerApp()

    server_app.lifespan()(console.app_lifespan)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        """Run (or resume) the federated experiment named in the run config."""
        from server.federation import run_federation
        from unicon_core.federation.config import overrides_from_run_config
        from unicon_core.hydra_config import load_settings

        settings = load_settings(overrides_from_run_config(context.run_config) + extra)
        run_federation(grid, settings)

    return server_app


app = make_server_app()
