"""Routing: which skill answers an input.

In order of precedence:

1. an explicit task name (``--task``): that skill, if the input fits it;
2. a question: its words give the task kind (segment -> segmentation; classify/detect/diagnose
   -> classification; prognosis/survival/risk -> survival), and the input's shape, channels
   and modality narrow the skills of that kind;
3. otherwise every skill the input fits is a candidate.

One candidate left: it runs. Several: the learned router (:mod:`.prototypes`) picks the one
whose federated prototype is nearest to the input's descriptor. No candidate: an error naming
the file and why each skill refused it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.inference.inputs import LoadedInput

#: Word starts that name each task kind in a question.
QUESTION_WORDS: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.SEGMENTATION: ("segment", "delineat", "contour", "outlin", "mask"),
    TaskKind.CLASSIFICATION: ("classif", "detect", "diagnos"),
    TaskKind.SURVIVAL: ("prognos", "surviv", "risk", "hazard"),
}


class RouteMethod(str, Enum):
    """How a skill was chosen."""

    EXPLICIT = "explicit-task"
    ONLY_CANDIDATE = "only-compatible-skill"
    LEARNED = "learned-router"


class RoutingError(ValueError):
    """No skill (or no single skill) can answer the input; the message names the file."""


@dataclass
class RouteDecision:
    """The chosen task, how, why, and the router's scores if it was asked (lower wins)."""

    task: str
    method: RouteMethod
    reason: str
    kind_from_question: TaskKind | None = None
    candidates: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


def kind_from_question(question: str) -> TaskKind:
    """The task kind a question asks for; ``ValueError`` if it names none or several."""
    words = re.findall(r"[a-z]+", question.lower())
    kinds = [
        kind
        for kind, starts in QUESTION_WORDS.items()
        if any(w.startswith(s) for w in words for s in starts)
    ]
    if len(kinds) != 1:
        known = {k.value: list(v) for k, v in QUESTION_WORDS.items()}
        what = (
            "names no task kind" if not kinds else f"names several kinds {[k.value for k in kinds]}"
        )
        raise ValueError(f"question {question!r} {what}; use words starting with {known}")
    return kinds[0]


def modality_hint(item: LoadedInput) -> Modality | None:
    """Modality the input itself states: clinical for CSV rows, CT+PET for a 2-file pair whose
    names end in ``_ct``/``_pet``; ``None`` when the file cannot tell (CT or MRI volume)."""
    if item.is_tabular:
        return Modality.CLINICAL
    names = [p.name.lower() for p in item.ref.paths]
    if len(names) == 2 and "_ct" in names[0] and "_pet" in names[1]:
        return Modality.CT_PET
    return None


def _is_pil_image(item: LoadedInput) -> bool:
    """Whether the input is one PNG/JPEG file (whose three channels are colour)."""
    from unicon_core.data.readers import PIL_SUFFIXES

    return len(item.ref.paths) == 1 and item.ref.paths[0].name.lower().endswith(PIL_SUFFIXES)


def incompatibility(spec: TaskSpec, item: LoadedInput) -> str | None:
    """Why ``spec``'s skill cannot take ``item`` (``None`` if it can)."""
    tabular = spec.modality is Modality.CLINICAL
    if tabular != item.is_tabular:
        want = (
            "clinical CSV rows" if tabular else f"{spec.spatial_dims}D {spec.modality.value} images"
        )
        return f"takes {want}, got a {item.describe()}"
    if tabular:
        missing = [f for f in spec.feature_names if f not in item.columns]
        return f"needs feature columns {missing}" if missing else None
    if item.spatial_dims != spec.spatial_dims:
        return f"takes {spec.spatial_dims}D images, got a {item.describe()}"
    colour_to_gray = (  # the task's pipeline converts colour (preprocess.to_gray)
        spec.channels == 1 and item.channels == 3 and bool(spec.preprocess.get("to_gray"))
    )
    if item.channels != spec.channels and not colour_to_gray:
        advice = ""
        if spec.channels == 1 and item.channels == 3 and _is_pil_image(item):
            from unicon_core.data.readers import GREYSCALE_ADVICE

            advice = f" (a colour image: {GREYSCALE_ADVICE})"
        return (
            f"takes {spec.channels}-channel {spec.modality.value} images, got {item.channels} "
            f"channel(s){advice}"
        )
    hint = modality_hint(item)
    if hint is not None and hint is not spec.modality:
        return f"takes {spec.modality.value}, the input is {hint.value}"
    return None


def route(
    specs: Mapping[str, TaskSpec],
    item: LoadedInput,
    *,
    task: str | None = None,
    question: str | None = None,
    scorer: Callable[[list[str]], dict[str, float]] | None = None,
) -> RouteDecision:
    """Choose the skill for ``item``; ``scorer(candidates)`` is the learned router (lower wins).

    Raises :class:`RoutingError` naming the input when nothing fits, when an explicit task does
    not fit, or when several skills fit and no router can decide.
    """
    label = item.ref.label
    if task is not None:
        if task not in specs:
            raise RoutingError(f"{label}: the bundle has no task {task!r}; it has {sorted(specs)}")
        why = incompatibility(specs[task], item)
        if why:
            raise RoutingError(f"{label}: task {task!r} {why}")
        return RouteDecision(task, RouteMethod.EXPLICIT, f"task {task!r} was asked for")
    kind = kind_from_question(question) if question else None
    refusals: dict[str, str] = {}
    candidates = []
    for name, spec in specs.items():
        why = incompatibility(spec, item)
        if why is None and kind is not None and spec.kind is not kind:
            why = f"is {spec.kind.value}, the question asks for {kind.value}"
        if why:
            refusals[name] = why
        else:
            candidates.append(name)
    asked = f"the question asks for {kind.value} and " if kind else ""
    if not candidates:
        detail = "; ".join(f"{n} {w}" for n, w in sorted(refusals.items()))
        raise RoutingError(f"{label}: no skill in the bundle can take it ({detail})")
    if len(candidates) == 1:
        only = candidates[0]
        return RouteDecision(
            only,
            RouteMethod.ONLY_CANDIDATE,
            f"{asked}{only!r} is the only skill that takes a {item.describe()}",
            kind,
            candidates,
        )
    if scorer is None:
        raise RoutingError(
            f"{label}: skills {candidates} all take a {item.describe()} and the bundle has no "
            "learned router; pass --task or a question"
        )
    scores = scorer(candidates)
    best = min(candidates, key=lambda n: (scores[n], n))
    ranked = ", ".join(f"{n}={scores[n]:.3g}" for n in sorted(candidates, key=scores.__getitem__))
    return RouteDecision(
        best,
        RouteMethod.LEARNED,
        f"{asked}{len(candidates)} skills take a {item.describe()}; its raw-input descriptor "
        f"is nearest to {best!r}'s federated prototype (mean squared standardised distance: "
        f"{ranked})",
        kind,
        candidates,
        scores,
    )
