"""The ``unicon`` console script: the library's commands plus those that launch Flower.

``federate`` and ``demo`` start ``flwr run`` (:mod:`unicon_flower.launcher`), so they live in
the Flower layer and register on the library's typer ``app`` (:mod:`unicon_core.cli`) when this
module is imported; every other command registers in ``unicon_core.cli``. ``[project.scripts]``
points at :func:`main`.
"""

from __future__ import annotations

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


@app.command()
def federate(overrides: Overrides = None, verbose: Verbose = False) -> None:
    """Run a federated experiment in local simulation (`flwr run`); resume=true continues."""
    from unicon_flower.launcher import run_federated, run_report

    with user_errors("federate", verbose):
        run_dir = run_federated(list(overrides or []))
        typer.echo(run_report(run_dir))


def main() -> None:
    """Console-script entry point: every command, errors handled as :func:`unicon_core.cli.main`."""
    cli.main()
