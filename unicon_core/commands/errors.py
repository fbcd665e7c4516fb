"""Exit codes of the ``unicon`` commands, and how a user's mistake is reported.

A user error (invalid site data, a bad config value, a path that does not exist) is printed
as a short message and a fixed exit code, never as a traceback: a traceback's frames would
show manifest rows and config values, and hide the one line that says what to fix.
``-v/--verbose`` adds the traceback (without local variables) for a bug report.

Exit codes (stable; documented in docs/site-format.md):

* :data:`EXIT_OK` (0): done; for ``unicon validate``, the site is valid;
* :data:`EXIT_INVALID_DATA` (1): a site's data (or a bundle, an input) failed its checks;
* :data:`EXIT_USAGE` (2): a bad command line, config override or path (click uses 2 for its
  own usage errors, such as a missing argument, too);
* :data:`EXIT_FAILED` (3): the command started but could not finish (a federated run that
  failed); the message says where to look.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_OK = 0
EXIT_INVALID_DATA = 1
EXIT_USAGE = 2
EXIT_FAILED = 3


class CommandError(Exception):
    """A failure the message explains well enough to act on; no traceback is shown."""

    exit_code = EXIT_FAILED


class UsageError(CommandError):
    """A bad argument, option or path on the command line."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config override or value that cannot be used (unknown key, wrong type, bad value)."""


class RunFailedError(CommandError, RuntimeError):
    """A run (the federated simulation) started and failed; the message says where to look."""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _available_options(text: str) -> str:
    """The options hydra lists for a missing config group entry, comma-separated."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Available options")), None)
    if start is None:
        return ""
    options = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if not line.strip().endswith("_schema"):  # structured-config schemas, not choices
            options.append(line.strip())
    return ", ".join(options)


@contextmanager
def config_errors() -> Iterator[None]:
    """Turn what composing and checking the config raises into :class:`ConfigError`.

    Wrap only the config steps (``load_config``, ``backbone_config``, ...): a ``ValueError``
    there is a bad value the user gave, elsewhere it may be a bug that deserves a traceback.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as err:
        message = _first_line(str(err)) or type(err).__name__
        options = _available_options(str(err))
        if options:
            message = f"{message} (available: {options})"
        cause = err.__cause__
        if cause is not None and _first_line(str(cause)):
            message = f"{message}: {_first_line(str(cause))}"
        raise ConfigError(f"bad configuration: {message}") from err


def site_error_text(err: Exception, command: str) -> str:
    """What ``unicon <command>`` prints for an invalid site: the grouped summary without cell
    values (see ``unicon validate`` for those) and what to run next."""
    from unicon_core.data.problems import count_text, summarize_problems

    problems = getattr(err, "problems", [])
    site = getattr(err, "site_dir", "SITE")
    return (
        f"error: site {site} is not valid ({count_text(problems)}); `unicon {command}` needs a "
        f"valid site:\n{summarize_problems(problems, values=False)}\n"
        f"Run `unicon validate {site}` for example values, `--all` for every problem."
    )


@contextmanager
def user_errors(command: str, verbose: bool = False) -> Iterator[None]:
    """Report the project's user errors as a short message and exit with their code.

    Catches :class:`~unicon_core.data.problems.SiteValidationError` (exit 1),
    :class:`CommandError` and its subclasses (their ``exit_code``) and ``FileNotFoundError``
    (exit 2). Anything else is a bug and propagates (typer prints it without locals).
    ``verbose`` prints the traceback first.
    """
    import typer

    from unicon_core.data.problems import SiteValidationError

    try:
        yield
        return
    except SiteValidationError as err:
        failure: Exception = err
        code, text = EXIT_INVALID_DATA, site_error_text(err, command)
    except CommandError as err:
        failure, code, text = err, err.exit_code, f"error: {err}"
    except (FileNotFoundError, NotADirectoryError) as err:
        where = f": {err.filename}" if err.filename else ""
        failure, code = err, EXIT_USAGE
        text = f"error: {err.strerror}{where}" if err.strerror else f"error: {err}"
    if verbose:
        traceback.print_exception(failure, file=sys.stderr)
    print(text, file=sys.stderr)
    raise typer.Exit(code)


def require_dir(path: Path, what: str = "site folder") -> Path:
    """``path`` if it is a folder, else :class:`UsageError` naming it."""
    if not Path(path).is_dir():
        raise UsageError(f"{what} not found: {path}")
    return Path(path)
