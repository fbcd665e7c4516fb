"""What validation reports: one :class:`Problem` per thing wrong, all gathered before failing.

A cohort exported from pandas can hold thousands of bad cells; listed one per line, the three
rows with a survival time of 0 drown among them. So problems also carry a :class:`ProblemKind`,
and :func:`group_problems` / :func:`summarize_problems` fold them into one line per
(column, kind), with a count, the first rows, a few example values and a fix hint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

#: Rows shown per summary line before "…".
SUMMARY_ROWS = 5
#: Distinct example values shown per summary line.
SUMMARY_EXAMPLES = 3
#: Longest example value shown (longer ones are cut).
EXAMPLE_CHARS = 40
#: Bound of ``str(SiteValidationError)``: it travels into logs and a federation's results.
ERROR_SUMMARY_CHARS = 2000
_MANIFEST = "manifest.csv"


class ProblemKind(str, Enum):
    """What sort of thing is wrong; summaries group by (file, column, kind) in this order.

    Structural problems come first (nothing else can be checked without them), then leakage
    between splits and bad targets (rare but they silently spoil results), then cell and file
    problems (often many at once).
    """

    SITE_FOLDER = "site-folder"
    SITE_JSON = "site-json"
    MANIFEST = "manifest"
    MISSING_COLUMN = "missing-column"
    UNKNOWN_COLUMN = "unknown-column"
    PATIENT_IN_SPLITS = "patient-in-splits"
    SAME_FILE_IN_SPLITS = "same-file-in-splits"
    SAME_CONTENT_IN_SPLITS = "same-content-in-splits"
    EMPTY_SPLIT = "empty-split"
    OUT_OF_RANGE = "out-of-range"
    INVALID_VALUE = "invalid-value"
    NOT_A_NUMBER = "not-a-number"
    EMPTY_CELL = "empty-cell"
    DUPLICATE_ID = "duplicate-id"
    MISSING_FILE = "missing-file"
    BAD_PATH = "bad-path"
    DICOM = "dicom"
    UNSUPPORTED_FILE = "unsupported-file"
    REFUSED_FILE = "refused-file"
    UNREADABLE_FILE = "unreadable-file"
    NON_FINITE_VOXELS = "non-finite-voxels"
    WRONG_DIMENSIONS = "wrong-dimensions"
    WRONG_CHANNELS = "wrong-channels"
    GEOMETRY_MISMATCH = "geometry-mismatch"
    MASK_VALUES = "mask-values"
    OTHER = "other"


@dataclass(frozen=True)
class _KindText:
    """How a summary line names ``n`` problems of a kind, and the default fix."""

    singular: str
    plural: str
    hint: str = ""
    #: Whether example values are cell contents (hidden with ``values=False``) rather than
    #: column or split names, which are part of the format and always shown.
    data_examples: bool = True
    #: Whether each problem's own hint may hold file paths (``values=False`` then gives
    #: the kind's hint instead).
    data_hints: bool = False


_DICOM_HINT = "convert each series to NIfTI first: dcm2niix -z y -o OUT SERIES_DIR"
_KINDS: dict[ProblemKind, _KindText] = {
    ProblemKind.SITE_FOLDER: _KindText("problem", "problems"),
    ProblemKind.SITE_JSON: _KindText("problem", "problems"),
    ProblemKind.MANIFEST: _KindText("problem", "problems"),
    ProblemKind.MISSING_COLUMN: _KindText(
        "required column missing", "required columns missing",
        "add the column (docs/site-format.md lists what each task needs)", data_examples=False,
    ),
    ProblemKind.UNKNOWN_COLUMN: _KindText(
        "unknown column", "unknown columns",
        "drop it, or prefix provenance columns with 'meta_' to keep them", data_examples=False,
    ),
    ProblemKind.PATIENT_IN_SPLITS: _KindText(
        "patient in several splits", "patients in several splits",
        "give all rows of a patient one split (or drop the split column to assign splits by "
        "patient_id)",
    ),
    ProblemKind.SAME_FILE_IN_SPLITS: _KindText(
        "file used in two splits", "files used in two splits",
        "a file in two splits leaks held-out data into training: keep rows that share a file in "
        "one split (one patient_id), or drop the copies",
    ),
    ProblemKind.SAME_CONTENT_IN_SPLITS: _KindText(
        "file byte-identical to one in another split",
        "files byte-identical to ones in another split",
        "the same image under two names leaks held-out data into training: drop the copies or "
        "give those rows one patient_id and split",
    ),
    ProblemKind.EMPTY_SPLIT: _KindText(
        "empty split", "empty splits",
        "every site needs train, val and test rows", data_examples=False,
    ),
    ProblemKind.OUT_OF_RANGE: _KindText(
        "out-of-range value", "out-of-range values",
        "docs/site-format.md gives each column's allowed values",
    ),
    ProblemKind.INVALID_VALUE: _KindText(
        "invalid value", "invalid values", "docs/site-format.md gives each column's allowed values"
    ),
    ProblemKind.NOT_A_NUMBER: _KindText(
        "non-numeric value", "non-numeric values",
        "write numbers only; encode categories as codes (NaN and inf are not allowed)",
    ),
    ProblemKind.EMPTY_CELL: _KindText(
        "empty cell", "empty cells",
        "fill them in or drop those rows (pandas writes a missing value as an empty cell)",
    ),
    ProblemKind.DUPLICATE_ID: _KindText(
        "repeated id", "repeated ids",
        "ids must be unique (drop the id column to use <site>:<row>)",
    ),
    ProblemKind.MISSING_FILE: _KindText(
        "missing file", "missing files",
        "paths are relative to the site folder and case-sensitive; check the spelling",
    ),
    ProblemKind.BAD_PATH: _KindText(
        "bad path", "bad paths", "write paths relative to the site folder, without '..'",
    ),
    ProblemKind.DICOM: _KindText("DICOM file or folder", "DICOM files or folders", _DICOM_HINT),
    ProblemKind.UNSUPPORTED_FILE: _KindText(
        "unsupported file", "unsupported files",
        "use NIfTI (.nii, .nii.gz) or, for 2D tasks, PNG/JPEG",
    ),
    ProblemKind.REFUSED_FILE: _KindText(
        "refused image", "refused images",
        "a reading rule refuses it (size over its limit, a path leaving the site folder, values "
        "that cannot be kept): `unicon validate` on the site says why for each file",
        data_hints=True,
    ),
    ProblemKind.UNREADABLE_FILE: _KindText(
        "unreadable file", "unreadable files", "re-export or re-copy these files",
    ),
    ProblemKind.NON_FINITE_VOXELS: _KindText(
        "image with NaN/Inf voxels", "images with NaN/Inf voxels",
        "replace NaN/Inf voxels (e.g. numpy.nan_to_num) before writing the file",
    ),
    ProblemKind.WRONG_DIMENSIONS: _KindText(
        "image of the wrong dimensionality", "images of the wrong dimensionality",
        "2D tasks take 2D images, 3D tasks 3D volumes",
    ),
    ProblemKind.WRONG_CHANNELS: _KindText(
        "image with the wrong channel count", "images with the wrong channel count",
        "write one single-channel image per file (one column per channel)",
    ),
    ProblemKind.GEOMETRY_MISMATCH: _KindText(
        "image off the row's grid", "images off the row's grid",
        "write every file of a row on the same voxel grid (shape and affine) as its first "
        "image column",
    ),
    ProblemKind.MASK_VALUES: _KindText(
        "mask with bad values", "masks with bad values",
        "mask values are integer class labels (0 = background)",
    ),
    ProblemKind.OTHER: _KindText("problem", "problems"),
}
#: Kinds whose single problem reads best as its own message (site-wide, few, no cell value).
_AS_MESSAGE = {ProblemKind.SITE_FOLDER, ProblemKind.SITE_JSON, ProblemKind.MANIFEST}
#: Kinds whose problems are grouped per file, not per column (the column is the example).
_PER_FILE = {ProblemKind.MISSING_COLUMN, ProblemKind.UNKNOWN_COLUMN}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a site.

    ``file`` is the file the problem was found in, relative to the site folder when it lies in it
    (``manifest.csv``, ``site.json``); ``row`` is the 1-based data row of the manifest (the header
    is not counted, so row 1 is the file's second line) or ``None`` for a site-wide problem;
    ``column`` the manifest column involved, if any; ``path`` the file a cell names, if any.
    ``kind`` groups it in summaries; ``value`` is the offending cell text (a summary's example);
    ``hint`` how to fix it, when more specific than the kind's own hint.
    """

    file: str
    row: int | None
    column: str | None
    message: str
    path: str | None = None
    kind: ProblemKind = ProblemKind.OTHER
    value: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        if self.column is not None:
            detail = self.column if self.path is None else f"{self.column}: {self.path}"
            where = f"{where} ({detail})"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ProblemGroup:
    """Problems of one kind in one column (or one file), in the order they were found."""

    file: str
    column: str | None
    kind: ProblemKind
    problems: tuple[Problem, ...]

    @property
    def count(self) -> int:
        """How many problems the group holds."""
        return len(self.problems)

    @property
    def rows(self) -> list[int]:
        """Manifest rows involved, ascending, each once."""
        return sorted({p.row for p in self.problems if p.row is not None})

    def examples(self, values: bool = True) -> list[str]:
        """Up to :data:`SUMMARY_EXAMPLES` distinct examples, the most frequent first.

        Cell values and file paths are left out with ``values=False`` (a summary that leaves the
        site); column and split names are part of the format and always kept.
        """
        text = _KINDS[self.kind]
        if self.kind in _PER_FILE:
            found = [p.column for p in self.problems if p.column is not None]
        elif not values and text.data_examples:
            return []
        else:
            found = [p.value if p.value is not None else p.path for p in self.problems]
        counts = Counter(v for v in found if v)  # ties keep the order found (stable)
        return [value for value, _ in counts.most_common(SUMMARY_EXAMPLES)]

    def hint(self, values: bool = True) -> str:
        """How to fix the group: its problems' own hints, else the kind's (at most two);
        ``values=False`` keeps cell values out of it, as in :meth:`examples`."""
        text = _KINDS[self.kind]
        default = text.hint
        if self.kind is ProblemKind.NOT_A_NUMBER:
            default = _category_hint(self.examples(), values) or default
        if not values and text.data_hints:
            return default
        hints = [p.hint or default for p in self.problems]
        return "; ".join([h for h in dict.fromkeys(hints) if h][:2])

    def line(self, values: bool = True) -> str:
        """One summary line, e.g. ``smoker: 812 non-numeric values such as 'no', 'yes' (rows 1,
        2, 4, …) — encode as 0/1 ('no' → 0, 'yes' → 1)``."""
        hint = self.hint(values)
        hint = f" — {hint}" if hint else ""
        if self.file == _MANIFEST and self.column is not None:
            where = self.column
        else:
            where = self.file if self.column is None else f"{self.file} ({self.column})"
        if self.kind in _AS_MESSAGE:  # few, site-wide, no cell values
            messages = "; ".join(dict.fromkeys(p.message for p in self.problems))
            return f"{where}: {messages}{_rows_text(self.rows)}{hint}"
        text = _KINDS[self.kind]
        noun = text.singular if self.count == 1 else text.plural
        examples = self.examples(values)
        if examples:
            shown = ", ".join(repr(_cut(v)) for v in examples)
            noun += f" such as {shown}" if self.count > len(examples) else f" {shown}"
        if self.kind is ProblemKind.OTHER and values:
            noun += f" ({self.problems[0].message})"
        return f"{where}: {self.count} {noun}{_rows_text(self.rows)}{hint}"


def _cut(value: str) -> str:
    return value if len(value) <= EXAMPLE_CHARS else value[: EXAMPLE_CHARS - 1] + "…"


def _rows_text(rows: Sequence[int]) -> str:
    if not rows:
        return ""
    head = ", ".join(str(r) for r in rows[:SUMMARY_ROWS])
    more = ", …" if len(rows) > SUMMARY_ROWS else ""
    return f" ({'row' if len(rows) == 1 else 'rows'} {head}{more})"


#: Words a spreadsheet uses for yes/no, and the code each usually means.
_BINARY = {
    "no": 0, "yes": 1, "n": 0, "y": 1, "false": 0, "true": 1, "f": 0, "t": 1,
    "absent": 0, "present": 1, "negative": 0, "positive": 1, "neg": 0, "pos": 1,
}


def _category_hint(examples: Sequence[str], values: bool = True) -> str:
    """'encode as 0/1' for yes/no words (with the mapping unless ``values=False``); a hint for
    other categories; nothing for NaN/inf (the kind's own hint covers them)."""
    words = [e for e in examples if e.strip()]
    if words and all(w.strip().lower() in _BINARY for w in words):
        if not values:
            return "encode as 0/1"
        pairs = sorted((_BINARY[w.strip().lower()], w) for w in words)
        return f"encode as 0/1 ({', '.join(f'{w!r} → {code}' for code, w in pairs)})"
    if words and not any(_is_float(w) for w in words):  # NaN/inf parse: not categories
        return "encode the categories as numbers (e.g. 0, 1, 2), one code per category"
    return ""


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def group_problems(problems: Iterable[Problem]) -> list[ProblemGroup]:
    """Fold problems into one group per (file, column, kind), most serious kind first.

    Within a kind the smaller groups come first, so a handful of rows with a survival time of
    0 is listed before 800 non-numeric cells; every group gets its own line, so none is
    hidden by a larger one.
    """
    found: dict[tuple[str, str | None, ProblemKind], list[Problem]] = {}
    for problem in problems:
        column = None if problem.kind in _PER_FILE else problem.column
        found.setdefault((problem.file, column, problem.kind), []).append(problem)
    order = list(ProblemKind)
    groups = [ProblemGroup(f, c, k, tuple(ps)) for (f, c, k), ps in found.items()]
    # a stable sort keeps the order of discovery (manifest column order) among equals
    return sorted(groups, key=lambda g: (order.index(g.kind), g.count))


def summarize_problems(
    problems: Sequence[Problem], values: bool = True, max_chars: int | None = None
) -> str:
    """The grouped summary, one ``- `` line per group (see :meth:`ProblemGroup.line`).

    ``values=False`` leaves out cell values and paths (for text that leaves the site: a
    federation's exclusion reason); ``max_chars`` bounds the text, dropping the last groups
    (the least serious) with a note of how many were dropped.
    """
    lines = [f"  - {group.line(values)}" for group in group_problems(problems)]
    if max_chars is None:
        return "\n".join(lines)
    longest = max(80, max_chars // 2)
    kept: list[str] = []
    used = 0
    for number, line in enumerate(lines):
        line = line if len(line) <= longest else line[: longest - 1] + "…"
        reserve = 40 if number < len(lines) - 1 else 0  # room for the note below
        if kept and used + len(line) + reserve > max_chars:
            kept.append(f"  … and {len(lines) - number} more group(s)")
            break
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)


def count_text(problems: Sequence[Problem]) -> str:
    """``"1054 problems in 4 groups"`` (singulars where they apply)."""
    n, g = len(problems), len(group_problems(problems))
    return f"{n} problem{'s' * (n != 1)} in {g} group{'s' * (g != 1)}"


class SiteValidationError(ValueError):
    """A site failed validation; ``problems`` lists every problem found, not just the first.

    Its message is the grouped summary without cell values or paths, bounded to
    :data:`ERROR_SUMMARY_CHARS`: it ends up in logs and, for a federated site, in the server's
    results. ``unicon validate SITE --all`` lists every problem with its values.
    """

    def __init__(self, site_dir: str, problems: Sequence[Problem]) -> None:
        self.site_dir = site_dir
        self.problems = list(problems)
        summary = summarize_problems(self.problems, values=False, max_chars=ERROR_SUMMARY_CHARS)
        super().__init__(
            f"site {site_dir} has {count_text(self.problems)}:\n{summary}\n"
            f"(`unicon validate {site_dir} --all` lists every problem)"
        )
