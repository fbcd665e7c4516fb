"""Run the red-team tests (``pytest -m redteam``) and write their table into docs/security.md.

Each case's ``redteam(surface=..., outcome=...)`` marker says what the protection should do; the
test result says whether it does. Per surface the table counts: cases tried; clear errors
(``clear_error`` cases that pass); handled safely (``kept``, ``confined``, ``nan``, ``private``
cases that pass); crashes (a case that fails with an unexpected exception); silent accepts (a
case that fails its assertions: the hostile input got through); data lost (a failing ``kept``
case). A JSON report (one entry per case) and a JUnit XML file are written next to each other.

Usage: ``python -m simulations.redteam_table [--report DIR] [--doc docs/security.md]``.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- redteam-table:start -->", "<!-- redteam-table:end -->"
COLUMNS = ("cases", "clear errors", "handled safely", "crashes", "silent accepts", "data lost")


class _Collector:
    """pytest plugin: each red-team case's marker and result."""

    def __init__(self) -> None:
        self.cases: dict[str, dict[str, Any]] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            mark = item.get_closest_marker("redteam")
            if mark is not None:
                self.cases[item.nodeid] = {"surface": mark.kwargs.get("surface", "?"),
                                           "outcome": mark.kwargs.get("outcome", "?"),
                                           "result": "not run"}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case = self.cases.get(report.nodeid)
        if case is None or (report.when != "call" and report.passed):
            return
        if report.passed:
            case["result"] = "passed"
        elif report.failed:
            crashed = report.when != "call" or "AssertionError" not in str(report.longrepr)
            case["result"] = "crashed" if crashed else "failed"
        elif report.skipped:
            case["result"] = "skipped"


def classify(case: dict[str, Any]) -> str:
    """The table column one case counts in."""
    if case["result"] == "passed":
        return "clear errors" if case["outcome"] == "clear_error" else "handled safely"
    if case["result"] == "crashed":
        return "crashes"
    if case["result"] == "failed":
        return "data lost" if case["outcome"] == "kept" else "silent accepts"
    return ""


def table(cases: dict[str, dict[str, Any]]) -> str:
    """Markdown table of counts per surface, plus a total row."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    for case in cases.values():
        for surface in (case["surface"], "**all**"):
            counts[surface]["cases"] += 1
            column = classify(case)
            if column:
                counts[surface][column] += 1
    rows = ["| Surface | " + " | ".join(c.capitalize() for c in COLUMNS) + " |",
            "| --- |" + " ---: |" * len(COLUMNS)]
    for surface in sorted(counts, key=lambda s: (s == "**all**", s)):
        rows.append(f"| {surface} | " + " | ".join(str(counts[surface][c]) for c in COLUMNS)
                    + " |")
    return "\n".join(rows)


def write_into(doc: Path, text: str) -> None:
    """Replace what lies between the markers in ``doc`` (markers appended if absent)."""
    content = doc.read_text()
    block = f"{START}\n{text}\n{END}"
    if START in content and END in content:
        content = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, content,
                         flags=re.S)
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(content)


def main(argv: list[str] | None = None) -> int:
    """Run the red-team cases, write the reports and the table; pytest's exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=None, help="folder of the reports")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "security.md")
    args = parser.parse_args(argv)
    report = args.report or Path(tempfile.mkdtemp(prefix="redteam-"))
    report.mkdir(parents=True, exist_ok=True)
    collector = _Collector()
    code = pytest.main(["-m", "redteam", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report / 'redteam.xml'}", str(ROOT / "tests")],
                       plugins=[collector])
    (report / "redteam.json").write_text(json.dumps(collector.cases, indent=1))
    write_into(args.doc, table(collector.cases))
    print(table(collector.cases))
    print(f"reports: {report}")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
