"""The ``unicon`` command line: thin typer commands over the library.

Where a command registers: one that needs only the library (validate, init-site, train, export,
predict, ...) is an ``@app.command()`` here, its body in :mod:`unicon_core.commands`; one that
starts a Flower run (``federate``, ``demo``) registers on this same ``app`` in
:mod:`unicon_flower.cli`, which is the console script, so the library never imports Flower.

Every command that trains takes hydra overrides (``key=value``) as trailing arguments, so the
command line, YAML files and Python share one configuration source (``configs/``). Heavy
libraries are imported inside the commands so ``unicon --help`` is instant.

A user error (invalid site, bad config value, missing path) is printed as a short message with a
fixed exit code (:mod:`unicon_core.commands.errors`); ``-v`` adds the traceback. Tracebacks never
show local variables: their frames would print manifest rows and config values.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from unicon_core.commands.errors import EXIT_FAILED, user_errors

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="unicon: grow one medical foundation model across hospitals with federated skills. "
    "Exit codes: 0 done (site valid), 1 invalid data, 2 usage error (argument, config value, "
    "path), 3 the command could not finish.",
    # locals of a traceback's frames would print manifest rows and config values
    pretty_exceptions_show_locals=False,
)

Overrides = Annotated[
    Optional[list[str]],  # noqa: UP045 (typer needs Optional here)
    typer.Argument(help="Hydra overrides, e.g. backbone=small train.lr=0.001"),
]
Verbose = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Show logs (Flower's output of a run) and the traceback "
                 "of an error; -vv also dependency warnings. Read in main (unicon_core.console)."),
]


@app.command()
def validate(
    site_dir: Path,
    show_all: Annotated[
        bool, typer.Option("--all", "-a", help="After the summary, list every problem.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Check a site folder; print its problems grouped by column and kind, with fix hints.

    Each line gives a count, example values and the first rows; --all lists every problem.
    Exit 0 if the site is valid, 1 if not, 2 if SITE_DIR is not a folder.
    """
    from unicon_core.commands.data import validate_command

    with user_errors("validate", verbose):
        code = validate_command(site_dir, show_all)
    raise typer.Exit(code)


@app.command("prepare-demo")
def prepare_demo(
    out_dir: Path,
    force: Annotated[bool, typer.Option(help="Rebuild sites that exist already.")] = False,
    verbose: Verbose = False,
) -> None:
    """Build the demo hospital sites from data shipped inside installed packages."""
    from unicon_core.commands.data import prepare_demo_command

    with user_errors("prepare-demo", verbose):
        code = prepare_demo_command(out_dir, force)
    raise typer.Exit(code)


@app.command("init-site")
def init_site(
    src: Annotated[Path, typer.Argument(help="Folder of class subfolders, images/ + masks/, "
                                        "a labels CSV, or a clinical CSV.")],
    out: Annotated[Path, typer.Argument(help="New or empty folder for the site.")],
    task: Annotated[Optional[str], typer.Option(help="Task name (default: SRC's name).")] = None,  # noqa: UP045
    kind: Annotated[Optional[str], typer.Option(help="classification, segmentation or survival.")] = None,  # noqa: UP045,E501
    modality: Annotated[Optional[str], typer.Option(help="Image modality (default mri).")] = None,  # noqa: UP045
    label_column: Annotated[Optional[str], typer.Option(help="CSV label column.")] = None,  # noqa: UP045
    time_column: Annotated[Optional[str], typer.Option(help="CSV survival time column.")] = None,  # noqa: UP045
    event_column: Annotated[Optional[str], typer.Option(help="CSV event column.")] = None,  # noqa: UP045
    image_column: Annotated[Optional[str], typer.Option(help="CSV column of image files.")] = None,  # noqa: UP045
    size: Annotated[Optional[list[int]], typer.Option(help="Input size (repeat per axis).")] = None,  # noqa: UP045
    train_fraction: Annotated[float, typer.Option(help="Share of rows in train.")] = 0.7,
    val_fraction: Annotated[float, typer.Option(help="Share of rows in val.")] = 0.15,
    test_fraction: Annotated[float, typer.Option(help="Share of rows in test.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of the stratified split.")] = 0,
    evaluation_only: Annotated[
        bool, typer.Option(help="An external validation site: every row test, never trains.")
    ] = False,
    task_file: Annotated[
        Optional[Path], typer.Option("--task-file", help="YAML/JSON task spec fields to use.")  # noqa: UP045
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Turn a plain folder of images (or a CSV) into a site folder and validate it.

    Prints what it inferred (task, sizes, labels, colour conversion) and every file, row or
    column it skipped (also in OUT/skipped.csv). Exit codes as `unicon validate`.
    """
    from unicon_core.commands.data import init_site_command
    from unicon_core.data.init_site import InitOptions

    with user_errors("init-site", verbose):
        options = InitOptions(
            task_name=task, kind=kind, modality=modality, label_column=label_column,
            time_column=time_column, event_column=event_column, image_column=image_column,
            size=list(size) if size else None,
            fractions={"train": train_fraction, "val": val_fraction, "test": test_fraction},
            seed=seed, role="evaluation" if evaluation_only else "train", task_file=task_file,
        )
        code = init_site_command(src, out, options)
    raise typer.Exit(code)


@app.command()
def pretrain(
    sites: Annotated[list[Path], typer.Option("--site", help="Site folder (repeatable).")],
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors).")],
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 300,
    mask_ratio: Annotated[float, typer.Option(help="Fraction of patches masked.")] = 0.6,
    rounds: Annotated[
        int, typer.Option(help="> 0: federated (FedAvg over the sites, --steps per round).")
    ] = 0,
    overrides: Overrides = None,
    verbose: Verbose = False,
) -> None:
    """Masked-patch pretraining of the backbone and image stems on sites' *train* splits."""
    from unicon_core.commands.core import pretrain_command

    with user_errors("pretrain", verbose):
        digest = pretrain_command(
            sites, out, steps, mask_ratio, list(overrides or []), rounds=rounds
        )
    typer.echo(f"wrote {out} (backbone hash {digest}); use backbone.checkpoint={out}")


@app.command()
def train(
    site_dir: Path,
    epochs: Annotated[
        int | None,
        typer.Option(help="Passes over the train split (default: the train config's budget, "
                     "what one federated round trains)."),
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Write the trained skill as a bundle for predict.")
    ] = None,
    overrides: Overrides = None,
    verbose: Verbose = False,
) -> None:
    """Train one site's task locally (no federation) and report held-out metrics."""
    from unicon_core.commands.core import train_local_command

    with user_errors("train", verbose):
        report = train_local_command(site_dir, epochs, list(overrides or []), bundle_dir=bundle)
    typer.echo(report)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (holds checkpoint.safetensors).")],
    bundle_dir: Annotated[Path, typer.Argument(help="New or empty folder for the bundle.")],
    verbose: Verbose = False,
) -> None:
    """Write a self-describing bundle of a run's global skills."""
    from unicon_core.commands.inference import export_command

    with user_errors("export", verbose):
        code = export_command(run_dir, bundle_dir)
    raise typer.Exit(code)


@app.command()
def predict(
    inputs: Annotated[
        list[Path], typer.Argument(help="NIfTI/PNG/JPEG file, CT,PET pair, CSV or folder.")
    ],
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle folder from `unicon export`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for masks and JSON summaries.")],
    task: Annotated[Optional[str], typer.Option(help="Skill to run (default: routed).")] = None,  # noqa: UP045
    question: Annotated[Optional[str], typer.Option(help='e.g. "segment the lesion".')] = None,  # noqa: UP045
    device: Annotated[
        str, typer.Option(help="auto (CUDA when a GPU is visible), cpu, cuda or cuda:<i>.")
    ] = "auto",
    refuse_ood: Annotated[
        bool,
        typer.Option(
            "--refuse-ood", help="Skip inputs flagged out of distribution (listed in summary)."
        ),
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Route each input to a skill and write its outputs (masks keep the input's affine)."""
    from unicon_core.commands.inference import predict_command

    with user_errors("predict", verbose):
        code = predict_command(bundle, out, inputs, task, question, device, refuse_ood)
    raise typer.Exit(code)


def main() -> None:
    """Run ``app`` (the console script, :func:`unicon_flower.cli.main`, adds the Flower commands
    first): an unexpected error (a bug) prints typer's traceback, without locals, and exits
    with 3, so exit 1 always means invalid data.

    The console is quiet unless ``-v``/``-vv`` (or ``$UNICON_VERBOSITY``) asks for more
    (:mod:`unicon_core.console`); set here, before any command imports a library."""
    from unicon_core import console

    console.configure(console.count_verbose(sys.argv[1:]) or None)
    try:
        app()
    except Exception:
        sys.excepthook(*sys.exc_info())
        raise SystemExit(EXIT_FAILED) from None
