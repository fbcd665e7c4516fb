"""The ``unicon`` console script: the library's commands plus those that launch Flower.

``federate`` and ``demo`` start ``flwr run`` (:mod:`unicon_flower.launcher`), so they live in
the Flower layer and register on the library's typer ``app`` (:mod:`unicon_core.cli`) when this
module is imported; every other command registers in ``unicon_core.cli``. ``[project.scripts]``
points at :func:`main`.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from unicon_core import cli
from unicon_core.cli import Overrides, Verbose, app
from unicon_core.commands.errors import user_errors


@app.command()
def demo(verbose: Verbose = False) -> None:
    """Prepare the demo hospitals if needed and run the federated demo with `flwr run`."""
    from unicon_flower.launcher import demo_command

    with user_errors("demo", verbose):
        demo_command()  # prints the per-task table and the run folder


class Engine(str, Enum):
    """How ``unicon federate`` runs Flower's simulation."""

    FLWR_RUN = "flwr-run"  # flwr run with its local SuperLink (unicon_flower.launcher)
    PYTHON_API = "python-api"  # the simulation engine in this process (unicon_flower.engine)


@app.command()
def federate(
    overrides: Overrides = None,
    verbose: Verbose = False,
    engine: Annotated[Engine, typer.Option(
        help="flwr-run: `flwr run` with its local SuperLink; python-api: Flower's simulation "
             "engine in this process (no SuperLink, the ServerApp in a thread here: faster "
             "to start, but on Flower's deprecated run_simulation)")] = Engine.FLWR_RUN,
) -> None:
    """Run a federated experiment in local simulation (`flwr run`, or Flower's engine in this
    process with --engine python-api); resume=true continues."""
    from unicon_flower.launcher import run_federated, run_report

    with user_errors("federate", verbose):
        if engine is Engine.PYTHON_API:
            from unicon_flower.engine import run_engine

            run_dir = run_engine(list(overrides or []))
        else:
            run_dir = run_federated(list(overrides or []))
        typer.echo(run_report(run_dir))


def main() -> None:
    """Console-script entry point: every command, errors handled as :func:`unicon_core.cli.main`."""
    cli.main()
