"""Command functions behind ``unicon validate`` and ``unicon prepare-demo`` (typer calls them).

Heavy libraries are imported inside the functions so the CLI starts fast.
"""

from __future__ import annotations

from pathlib import Path


def validate_command(site_dir: Path, show_all: bool = False) -> int:
    """Print a site folder's problems grouped by column and kind; return the exit code.

    One line per (column, kind) with the count, first rows, example values and a fix hint, the
    most serious kinds first, so three zero survival times are not lost among 800 non-numeric
    cells; ``show_all`` then lists every problem on its own line. Returns
    :data:`~unicon_core.commands.errors.EXIT_OK` when the site is valid,
    :data:`~unicon_core.commands.errors.EXIT_INVALID_DATA` otherwise; a ``site_dir`` that is
    not a folder raises :class:`~unicon_core.commands.errors.UsageError`.
    """
    from unicon_core.commands.errors import EXIT_INVALID_DATA, EXIT_OK, require_dir
    from unicon_core.data.manifest import SITE_JSON_NAME, read_site_json
    from unicon_core.data.problems import count_text, summarize_problems
    from unicon_core.data.validate import validate_site

    require_dir(site_dir)
    problems = validate_site(site_dir)
    if problems:
        print(f"{site_dir}: {count_text(problems)} (rows count from 1 after the header)")
        print(summarize_problems(problems))
        if show_all:
            print(f"every problem ({len(problems)}):")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print(f"`unicon validate {site_dir} --all` lists every problem.")
        return EXIT_INVALID_DATA
    meta = read_site_json(Path(site_dir))
    kind = "SYNTHETIC" if meta.synthetic else "real"
    role = ", evaluation only (test rows, never trains)" if meta.evaluation_only else ""
    print(
        f"{site_dir}: OK (site {meta.site!r}, task {meta.task.name!r}, {kind} data{role}, "
        f"{SITE_JSON_NAME} and manifest valid)"
    )
    return EXIT_OK


def prepare_demo_command(out_dir: Path, force: bool = False) -> int:
    """Build (or reuse) the demo sites under ``out_dir`` and print one line per site."""
    from unicon_core.demo_data.prepare import prepare_demo

    report = prepare_demo(out_dir, force=force)
    seconds = report.pop("_seconds")
    for name, entry in report.items():
        state = "built" if entry["built"] else "reused"
        kind = "SYNTHETIC" if entry["synthetic"] else "real"
        print(
            f"{name:14s} {entry['task']:11s} {kind:9s} {entry['rows']:5d} rows  {state}  "
            f"{entry['path']}"
        )
    print(f"demo data ready in {out_dir} ({seconds:.1f} s)")
    return 0


def init_site_command(src: Path, out: Path, options: object, validate: bool = True) -> int:
    """Build a site folder from a plain folder or CSV; print what was inferred and every skipped
    item, then validate the new site. Returns the exit code (that of ``unicon validate``).

    ``options`` is an :class:`~unicon_core.data.init_site.InitOptions`; a source that cannot
    become a site raises :class:`~unicon_core.commands.errors.CommandError` (exit 1) naming the
    file, row or column.
    """
    from unicon_core.commands.errors import EXIT_INVALID_DATA, CommandError
    from unicon_core.data.init_site import InitOptions, InitSiteError, init_site

    assert isinstance(options, InitOptions)
    try:
        report = init_site(src, out, options)
    except InitSiteError as err:
        error = CommandError(str(err))
        error.exit_code = EXIT_INVALID_DATA
        raise error from None
    print(report.text())
    if not validate:
        return 0
    return validate_command(out)
