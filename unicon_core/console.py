"""How loud the console is: quiet by default, ``-v`` for logs, ``-vv`` for everything.

Only entry points call :func:`configure` (the ``unicon`` command's ``main``, the ServerApp and
ClientApp handlers); importing a library module never changes warnings or loggers. The level
travels to Flower's processes (SuperLink, simulation, Ray workers) in ``$UNICON_VERBOSITY``.

* ``0`` (default): dependency warnings (deprecations, MONAI/torch/Ray internals) hidden,
  dependency loggers at WARNING, wandb silent. ``unicon demo``/``federate`` then write Flower's
  whole output to the run folder's log file instead of the console.
* ``1`` (``-v``): as 0, but loggers at INFO; Flower's output is shown as well as logged.
* ``2`` (``-vv``): nothing filtered; every library behaves as it does by default.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Environment variable holding the level for child processes (Flower's, Ray's).
VERBOSITY_ENV = "UNICON_VERBOSITY"
#: A log file's lines: level, time, the process (several write one file), message.
LOG_FORMAT = "%(levelname)s %(asctime)s [pid %(process)d]: %(message)s"
QUIET, VERBOSE, EVERYTHING = 0, 1, 2

#: Warning categories about libraries' own APIs, never about a user's data or config.
API_WARNINGS: tuple[type[Warning], ...] = (
    DeprecationWarning, PendingDeprecationWarning, FutureWarning)
#: Packages whose warnings concern their internals (module names, matched with sub-modules).
DEPENDENCIES = (
    "monai", "torch", "ray", "wandb", "opacus", "peft", "torchsurv", "sksurv", "sklearn",
    "nilearn", "nibabel", "hydra", "omegaconf", "matplotlib", "pydantic", "google", "grpc",
)
#: Dependency warnings raised at the calling line in unicon (``stacklevel``), by message.
DEPENDENCY_MESSAGES = (
    r"Ties in `time` detected",  # torchsurv: Efron's method is the one chosen on purpose
)
#: Loggers of dependencies: WARNING when quiet, INFO with ``-v``, untouched with ``-vv``.
DEPENDENCY_LOGGERS = (
    "flwr", "ray", "wandb", "matplotlib", "urllib3", "hydra", "opacus", "monai", "filelock",
    "PIL", "httpx",
)
#: ``flwr run --stream`` output is colourless in a log file.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def count_verbose(argv: Sequence[str]) -> int:
    """The level asked for on a command line: one per ``-v``/``--verbose``, ``-vv`` counts 2.

    Only options before a lone ``--`` count; values such as ``train.lr=0.1`` never do.
    """
    level = 0
    for arg in argv:
        if arg == "--":
            break
        if arg == "--verbose":
            level += 1
        elif re.fullmatch(r"-v+", arg):
            level += len(arg) - 1
    return min(level, EVERYTHING)


def verbosity(default: int = QUIET) -> int:
    """The level in ``$UNICON_VERBOSITY`` (``default`` when unset); a bad value is an error."""
    raw = os.environ.get(VERBOSITY_ENV, "").strip()
    if not raw:
        return default
    if raw not in {"0", "1", "2"}:
        raise ValueError(f"${VERBOSITY_ENV}={raw!r}: must be 0, 1 or 2")
    return int(raw)


def configure(level: int | None = None, default: int = QUIET) -> int:
    """Apply ``level`` to this process; a given level is also exported to its future children,
    without one the level is :func:`verbosity` (``default`` when unset) and nothing is exported.

    Idempotent (a handler may call it for every message), and it never makes a logger louder
    than someone already set it (a benchmark keeping Flower at WARNING stays so). Returns the
    level applied.
    """
    if level is None:
        level = verbosity(default)
    else:
        level = max(QUIET, min(int(level), EVERYTHING))
        os.environ[VERBOSITY_ENV] = str(level)
    if level >= EVERYTHING:
        return level
    for category in API_WARNINGS:
        warnings.filterwarnings("ignore", category=category)
    for package in DEPENDENCIES:
        warnings.filterwarnings("ignore", module=rf"{re.escape(package)}(\.|$)")
    for message in DEPENDENCY_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    os.environ.setdefault("WANDB_SILENT", "true")  # wandb keeps its own logs in the run folder
    threshold = logging.WARNING if level == QUIET else logging.INFO
    for name in DEPENDENCY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < threshold:  # NOTSET (0) and DEBUG included
            logger.setLevel(threshold)
    return level


def child_env_warnings() -> str:
    """``PYTHONWARNINGS`` hiding :data:`API_WARNINGS` in child processes from their start
    (Ray and Flower warn before any handler of ours runs)."""
    return ",".join(f"ignore::{c.__name__}" for c in API_WARNINGS)


def plain(line: str) -> str:
    """``line`` without terminal colour codes (for log files)."""
    return _ANSI.sub("", line)


def app_lifespan(context: Any, log: str = "") -> Iterator[None]:
    """A Flower app's lifespan (``app.lifespan()(app_lifespan)``): warnings and logs at
    ``$UNICON_VERBOSITY`` in whatever process runs the app (default 1: Flower's INFO logs, no
    dependency warnings), and Flower's records appended to the run log ``log`` as well (the
    in-process engine's: its ClientApps run in Ray actors, whose console output Ray keeps in
    its own session logs, not in the run folder). ``context`` is Flower's ``Context``,
    unused here."""
    configure(default=VERBOSE)
    with log_file(log):
        yield


@contextmanager
def log_file(path: str | Path, logger_name: str = "flwr") -> Iterator[None]:
    """``logger_name``'s records appended to ``path`` as well while inside (nothing when
    ``path`` is empty, or when the logger writes to that file already, as the engine's own
    process does)."""
    logger = logging.getLogger(logger_name)
    target = os.path.abspath(path) if path else ""
    if not target or any(isinstance(h, logging.FileHandler) and h.baseFilename == target
                         for h in logger.handlers):
        yield
        return
    handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
