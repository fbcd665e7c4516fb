"""Writing a site folder atomically: files go to ``<site>.partial`` and are renamed at the end,
so a site folder that exists is complete (``prepare_demo`` skips it on a second run)."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unicon_core.config import TaskSpec
from unicon_core.data.manifest import (
    MANIFEST_NAME,
    SITE_JSON_NAME,
    SiteMetadata,
    SiteRole,
    write_site_json,
)


def site_is_complete(site_dir: Path) -> bool:
    """A site folder is complete when its manifest and ``site.json`` exist (written last)."""
    return (site_dir / MANIFEST_NAME).is_file() and (site_dir / SITE_JSON_NAME).is_file()


def write_manifest(site_dir: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows (dicts with the same keys, in column order) as ``manifest.csv``."""
    if not rows:
        raise ValueError(f"{site_dir}: a manifest needs at least one row")
    path = site_dir / MANIFEST_NAME
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_site(
    out_dir: Path,
    name: str,
    task: TaskSpec,
    synthetic: bool,
    source: str,
    description: str,
    fill: Callable[[Path], list[dict[str, Any]]],
    force: bool = False,
    role: SiteRole = SiteRole.TRAIN,
) -> tuple[Path, bool]:
    """Build one site with ``fill(tmp_dir) -> manifest rows`` unless it is already complete
    (``role`` evaluation: an external validation site, every row a test row).

    Returns the site folder and whether it was (re)built.
    """
    site_dir = Path(out_dir) / name
    if site_is_complete(site_dir) and not force:
        return site_dir, False
    tmp = site_dir.with_name(name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = fill(tmp)
    write_manifest(tmp, rows)
    write_site_json(tmp, SiteMetadata(name, synthetic, source, description, task, role=role))
    shutil.rmtree(site_dir, ignore_errors=True)
    tmp.rename(site_dir)
    return site_dir, True
