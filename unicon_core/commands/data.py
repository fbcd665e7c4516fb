"""Command functions behind ``unicon validate`` and ``unicon prepare-demo`` (typer calls them).

Heavy libraries are imported inside the functions so the CLI starts fast.
"""

from __future__ import annotations

from pathlib import Path


def validate_command(site_dir: Path) -> int:
    """Print every problem of a site folder; return 0 when it is valid, 1 otherwise."""
    from unicon_core.data.manifest import SITE_JSON_NAME, read_site_json
    from unicon_core.data.validate import validate_site

    problems = validate_site(site_dir)
    if problems:
        print(f"{site_dir}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    meta = read_site_json(Path(site_dir))
    kind = "SYNTHETIC" if meta.synthetic else "real"
    print(
        f"{site_dir}: OK (site {meta.site!r}, task {meta.task.name!r}, {kind} data, "
        f"{SITE_JSON_NAME} and manifest valid)"
    )
    return 0


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
