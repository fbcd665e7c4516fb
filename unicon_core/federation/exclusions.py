"""Why a site is left out of a federation, as a short reason fit for ``results.json``.

A site whose data fail validation used to raise inside its ClientApp; Flower then answered for
it with an error reply keyed by node id, whose reason is the exception text plus (in
simulation) the remote traceback: for a cohort with thousands of bad cells, 700k characters of
manifest problems and frames. Here a site says its *name* and a bounded reason built from the
grouped problem summary, without cell values or paths (the reason leaves the site), and
:func:`short_reason` bounds whatever text still comes back from an error reply.
"""

from __future__ import annotations

import re
from typing import Any

from unicon_core.federation.protocol import InfoKey, Status

#: Longest exclusion reason kept (results.json, the server's log).
MAX_REASON_CHARS = 1200
#: What Flower's ClientAppException puts before the original exception text.
_FLOWER_MESSAGE = "occurred. Message: "
_TRACEBACK_LINE = re.compile(r'^\s*(Traceback \(most recent call last\):|File ".*", line \d+)')


def _bound(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def exclusion_reason(error: BaseException, limit: int = MAX_REASON_CHARS) -> str:
    """A site's reason for not joining, at most ``limit`` characters, never a traceback.

    Invalid data (:class:`~unicon_core.data.problems.SiteValidationError`) gives the count and
    the grouped summary without cell values or paths; any other error its type and message.
    """
    from unicon_core.data.problems import SiteValidationError, count_text, summarize_problems

    if isinstance(error, SiteValidationError):
        head = f"invalid data: {count_text(error.problems)}"
        room = max(limit - len(head) - 1, 80)
        summary = summarize_problems(error.problems, values=False, max_chars=room)
        return _bound(f"{head}\n{summary}", limit)
    return _bound(f"{type(error).__name__}: {error}", limit)


def exclusion_info(site: str, error: BaseException) -> dict[str, Any]:
    """The ``info`` ConfigRecord content of a query reply from a site that cannot join: its
    name, :attr:`Status.INVALID_DATA` and :func:`exclusion_reason` (no task, no arrays)."""
    return {
        InfoKey.SITE.value: site,
        InfoKey.STATUS.value: Status.INVALID_DATA.value,
        InfoKey.REASON.value: exclusion_reason(error),
    }


def short_reason(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Bound the reason of a Flower error reply: the original exception message without the
    remote traceback Flower and Ray wrap around it, at most ``limit`` characters."""
    if _FLOWER_MESSAGE in text:
        text = text.rsplit(_FLOWER_MESSAGE, 1)[1].removesuffix("'>").rstrip()
    lines: list[str] = []
    in_frame = False
    for line in text.splitlines():
        if _TRACEBACK_LINE.match(line):
            in_frame = True  # a frame header; its source line(s) follow, indented
            continue
        if in_frame and line.startswith("    "):
            continue
        in_frame = False
        lines.append(line)
    return _bound("\n".join(lines), limit)
