"""README.md and docs/*.md name only what exists: repository paths in backticks, relative
links, dotted module references (``unicon_core.hydra_config.load_config``) and config choices
(``experiment=demo``, ``backbone=small``). Stale references fail here, not in a reader's hands."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Config groups a command-line choice ``<group>=<name>`` selects a file of.
GROUPS = ("experiment", "backbone", "privacy", "strategy", "train", "federation", "site")
#: Top-level Python packages of the repository (dotted references are checked in them).
PACKAGES = ("unicon_core", "unicon_flower", "server", "client", "simulations", "deploy", "tests")

_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/?$")
_DOTTED = re.compile(r"\b((?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_CHOICE = re.compile(r"(?<![\w.])(" + "|".join(GROUPS) + r")=([a-z_][a-z0-9_]*)\b")
#: A dotted name ending in one of these is a file name (``server.crt``), not a module.
FILE_SUFFIXES = {"py", "md", "yaml", "json", "jsonl", "csv", "toml", "txt", "sh", "crt", "key",
                 "pem", "log", "safetensors", "nii", "gz", "png"}


#: Generated or local folders that are never part of the repository (see .gitignore): at the
#: top, and anywhere.
UNTRACKED_TOP = {".git", ".venv", "runs", "demo_data", ".flwr"}
UNTRACKED = {"__pycache__", ".pytest_cache", ".ruff_cache", "wandb", "outputs", "multirun"}


def _files() -> set[str]:
    """The repository's files: ``git ls-files``, or outside a git checkout (an unpacked
    archive) every file but generated and local folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        return {f for f in out.stdout.decode().split("\0") if f}
    except (OSError, subprocess.CalledProcessError):
        rel = [p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file()]
        return {str(r) for r in rel if r.parts[0] not in UNTRACKED_TOP and not any(
            part in UNTRACKED or part.endswith(".egg-info") for part in r.parts)}


@cache
def tracked() -> frozenset[str]:
    """Every file of the repository plus every folder above one (``a/b/``)."""
    files = _files()
    present = {f for f in files if (ROOT / f).exists()}  # a deletion not yet committed
    folders = {str(Path(f).parent) + "/" for f in present} | {
        "/".join(f.split("/")[:i]) + "/" for f in present for i in range(1, f.count("/") + 1)}
    return frozenset(present | folders)


def top_level() -> set[str]:
    return {entry.split("/")[0] for entry in tracked()}


def repo_paths(text: str) -> list[str]:
    """Backticked strings that name a path inside this repository (first component tracked)."""
    found = []
    for code in _CODE.findall(text):
        code = code.strip().rstrip(".,:;")
        if "/" not in code or not _PATH.match(code) or code.split("/")[0] not in top_level():
            continue
        found.append(code)
    return found


def links(text: str, doc: Path) -> list[Path]:
    """Relative link targets of a markdown file (anchors and web addresses left out)."""
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        targets.append((doc.parent / target.split("#")[0]).resolve())
    return targets


def resolves(dotted: str) -> bool:
    """Whether ``pkg.module[.name...]`` is a module of the repository (then a name it defines)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else (
            base / "__init__.py")
        if module.is_file():
            rest = parts[cut:]
            if not rest:
                return True
            source = module.read_text()
            name = rest[0]  # defined, imported, or exported lazily by a name table
            return re.search(rf"^\s*(?:def|class|async def)\s+{name}\b|^\s*{name}\s*[:=]"
                             rf"|\bimport\b.*\b{name}\b|[\"']{name}[\"']\s*:", source,
                             re.MULTILINE) is not None
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_backticked_paths_exist(doc: Path) -> None:
    missing = [p for p in repo_paths(doc.read_text()) if p not in tracked()]
    assert not missing, f"{doc.relative_to(ROOT)} names paths not in the repository: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(doc: Path) -> None:
    missing = [str(t) for t in links(doc.read_text(), doc) if not t.exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_dotted_references_exist(doc: Path) -> None:
    missing = sorted({d for d in _DOTTED.findall(doc.read_text())
                      if d.rsplit(".", 1)[-1] not in FILE_SUFFIXES and not resolves(d)})
    assert not missing, f"{doc.relative_to(ROOT)} names modules/objects that do not exist: " \
        f"{missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_choices_exist(doc: Path) -> None:
    missing = sorted({f"{g}={n}" for g, n in _CHOICE.findall(doc.read_text())
                      if not (ROOT / "configs" / g / f"{n}.yaml").is_file()})
    assert not missing, f"{doc.relative_to(ROOT)} selects configs that do not exist: {missing}"


def test_the_checks_catch_stale_references(tmp_path: Path) -> None:
    text = ("see `unicon_core/continual/nothing.py`, `configs/experiment/nope.yaml` and "
            "`runs/<time>/` [x](docs/none.md) `unicon_core.hydra_config.no_such_function` "
            "with experiment=nope and backbone=small, not federation.rounds=3")
    assert repo_paths(text) == ["unicon_core/continual/nothing.py",
                                "configs/experiment/nope.yaml"]
    assert not resolves("unicon_core.hydra_config.no_such_function")
    assert resolves("unicon_core.hydra_config.load_config")
    assert resolves("unicon_core.config.TaskSpec")
    assert resolves("unicon_core.inference.load_bundle")  # a lazy export
    assert _CHOICE.findall(text) == [("experiment", "nope"), ("backbone", "small")]
    assert links(text, ROOT / "README.md") == [ROOT / "docs" / "none.md"]


def test_readme_stays_an_entry_point() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def architecture_map() -> dict[str, list[str]]:
    """README's map: top-level folder -> entries named at the start of its indented lines."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    entries: dict[str, list[str]] = {}
    top = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            top = line.split()[0]
            entries[top] = []
        elif line.startswith("  ") and not line.startswith("   "):
            names = re.match(r"\s+([\w./]+(?:,\s*[\w./]+)*)", line)
            if names:
                entries[top] += [n.strip() for n in names.group(1).split(",")]
    return entries


def test_architecture_map_matches_the_tree() -> None:
    """Every folder and file the map names exists; every top-level package folder and every
    sub-package of the library is on the map."""
    entries = architecture_map()
    named = [top for top in entries] + [top + e for top, sub in entries.items() for e in sub]
    missing = [n for n in named if n not in tracked()]
    assert not missing, f"README's architecture map names what is not in the tree: {missing}"
    folders = {f.split("/")[0] + "/" for f in tracked() if "/" in f}
    unmapped = sorted(f for f in folders - set(entries) if not f.startswith(".")
                      and f not in {"docs/"})
    assert not unmapped, f"top-level folders missing from README's architecture map: {unmapped}"
    packages = {f.split("/")[1] + "/" for f in tracked() if f.startswith("unicon_core/")
                and f.endswith("/__init__.py") and f.count("/") == 2}
    absent = sorted(packages - set(entries.get("unicon_core/", [])))
    assert not absent, f"unicon_core packages missing from README's architecture map: {absent}"
