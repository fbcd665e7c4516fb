"""What validation reports: one :class:`Problem` per thing wrong, all gathered before failing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a site.

    ``file`` is the file the problem was found in, relative to the site folder when it lies in it
    (``manifest.csv``, ``site.json``); ``row`` is the 1-based data row of the manifest (the header
    is not counted, so row 1 is the file's second line) or ``None`` for a site-wide problem;
    ``column`` the manifest column involved, if any; ``path`` the file a cell names, if any.
    """

    file: str
    row: int | None
    column: str | None
    message: str
    path: str | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        if self.column is not None:
            detail = self.column if self.path is None else f"{self.column}: {self.path}"
            where = f"{where} ({detail})"
        return f"{where}: {self.message}"


class SiteValidationError(ValueError):
    """A site failed validation; ``problems`` lists every problem found, not just the first."""

    def __init__(self, site_dir: str, problems: Sequence[Problem]) -> None:
        self.site_dir = site_dir
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"site {site_dir} has {len(self.problems)} problem(s):\n{lines}")
