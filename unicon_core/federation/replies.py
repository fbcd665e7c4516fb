"""Server-side checks of one site reply: no claim a site makes is taken on trust.

A reply is decoded (by the Flower-facing strategy) into plain mappings and handed to
:func:`check_reply`, which returns either an :class:`Accepted` reply (validated skill, bounded
weight, range-checked metrics) or a :class:`Rejected` one with the reason to log. Nothing in here
raises on hostile input, so one bad reply never aborts a run.

What is checked (besides :func:`~unicon_core.federation.validation.update_problems` on the
skill):

* identity: the reply names the site, task and foundation the node declared in the query round
  (:class:`NodeClaim`); a node cannot speak for another site;
* freshness: the reply names the round it answers, which must be the round being aggregated
  (an older reply replayed by a site, or one meant for another round, is refused);
* status: one of the statuses the phase allows;
* example counts: finite, >= 0 and at most the count the site declared for that split in the
  query round (a larger claim is clamped to it and noted), so one site cannot make its update
  the task's skill by claiming 10^12 examples;
* metrics: at most :data:`MAX_METRICS` scalars, each finite or NaN (NaN is "undefined", see
  :mod:`unicon_core.metrics`), scores in [0, 1], losses and counts never infinite or negative.

:func:`norm_outliers` derives the round's own update-norm bound; :func:`digest` fingerprints an
update so the strategy can flag byte-identical replays.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unicon_core.federation.protocol import NUM_EXAMPLES, InfoKey, Status
from unicon_core.federation.validation import ValidationPolicy, update_problems

Arrays = Mapping[str, np.ndarray]

#: Largest example count a site may declare for a split (a sanity cap, ~ every scan on Earth).
MAX_EXAMPLES = 10**9
#: Most metrics one reply may carry.
MAX_METRICS = 64
#: Metrics that are fractions: a value outside [0, 1] is a lie or a bug.
UNIT_METRICS = frozenset({"auc", "balanced_accuracy", "dice", "c_index", "accuracy"})
#: Prefixes the site adds to held-out metric names (``val_auc``).
METRIC_PREFIXES = ("val_", "test_")
#: Statuses each phase accepts.
PHASE_STATUSES: dict[str, frozenset[str]] = {
    "train": frozenset({Status.TRAINED.value, Status.BUDGET_EXHAUSTED.value}),
    "evaluate": frozenset({Status.EVALUATED.value}),
}
#: Default factor of the round's own update-norm bound: k x the median norm of the task's
#: updates. Honest sites run the same steps and learning rate, so their update norms stay
#: within a small factor of each other (non-IID data moves them by ~2x in our benchmarks); a
#: scaled or boosted update is typically 10x and more. 4 leaves honest spread alone.
DEFAULT_NORM_FACTOR = 4.0
#: Fewest updates of a task before the round's own bound applies: with one or two updates the
#: median is the attacker's own (or half of it), so the bound would say nothing.
MIN_SITES_FOR_NORM_BOUND = 3


@dataclass(frozen=True)
class NodeClaim:
    """What a node declared in the query round; every later reply is held to it."""

    site: str
    task: str
    train_examples: int | None = None
    eval_examples: int | None = None


@dataclass
class Accepted:
    """A reply that may be aggregated."""

    weight: float
    metrics: dict[str, float]
    state: dict[str, np.ndarray] | None = None
    status: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Rejected:
    """A reply left out, and why (short, safe to log)."""

    reason: str


def declared_count(value: Any) -> int | None:
    """A count declared in the query round as an ``int`` in [0, MAX_EXAMPLES], else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0 or value > MAX_EXAMPLES or value != int(value):
        return None
    return int(value)


def metric_problem(name: str, value: Any) -> str:
    """Why one metric value cannot be true ('' if it can)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"metric {name!r} is {type(value).__name__}, not a number"
    value = float(value)
    if math.isnan(value):
        return ""  # undefined (e.g. AUC with one class): allowed, skipped by the aggregates
    if not math.isfinite(value):
        return f"metric {name!r} is {value}"
    base = name
    for prefix in METRIC_PREFIXES:
        base = base.removeprefix(prefix)
    if base in UNIT_METRICS and not 0.0 <= value <= 1.0:
        return f"metric {name!r} is {value:.4g}, outside [0, 1]"
    if (base.endswith("loss") or base.endswith("_s") or base in {"steps", "epsilon"}
            or base == NUM_EXAMPLES) and value < 0:
        return f"metric {name!r} is {value:.4g}, below 0"
    if base == "delta" and not 0.0 < value < 1.0:
        return f"metric {name!r} is {value:.4g}, outside (0, 1)"
    return ""


def check_reply(
    phase: str,
    *,
    info: Mapping[str, Any],
    metrics: Mapping[str, Any],
    state: Arrays | None,
    reference: Arrays | None,
    claim: NodeClaim,
    server_round: int,
    policy: ValidationPolicy,
    weighted_by: str = NUM_EXAMPLES,
) -> Accepted | Rejected:
    """Validate one decoded reply of ``phase`` ('train' or 'evaluate') against the claim.

    ``reference`` is the skill the server sent (train only). A budget-exhausted train reply is
    accepted without a skill (weight 0); its ``status``/``reason`` tell the strategy to stop it.
    """
    if info.get(InfoKey.FOUNDATION_HASH.value) != policy.foundation_hash:
        return Rejected(f"foundation {str(info.get(InfoKey.FOUNDATION_HASH.value))[:12]}... is "
                        f"not the federation's {policy.foundation_hash[:12]}...; its skill cannot "
                        "be mixed in")
    if info.get(InfoKey.SITE.value) != claim.site:
        return Rejected(f"reply names site {str(info.get(InfoKey.SITE.value))[:64]!r}, but this "
                        f"node joined as {claim.site!r}")
    if info.get(InfoKey.TASK.value) != claim.task:
        return Rejected(f"reply is for task {str(info.get(InfoKey.TASK.value))[:64]!r}, "
                        f"not {claim.task!r}")
    rnd = info.get(InfoKey.ROUND.value)
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd != server_round:
        return Rejected(f"replay: the reply answers round {str(rnd)[:20]}, this is round "
                        f"{server_round}")
    status = str(info.get(InfoKey.STATUS.value))
    if status not in PHASE_STATUSES[phase]:
        return Rejected(f"status {status[:32]!r} is not one of {sorted(PHASE_STATUSES[phase])}")
    if len(metrics) > MAX_METRICS:
        return Rejected(f"{len(metrics)} metrics, at most {MAX_METRICS}")
    problems = [p for k, v in metrics.items() if (p := metric_problem(str(k), v))]
    if problems:
        return Rejected("; ".join(problems[:5]))
    values = {str(k): float(v) for k, v in metrics.items()}
    if status == Status.BUDGET_EXHAUSTED.value:
        reason = str(info.get(InfoKey.REASON.value, "privacy budget spent"))[:500]
        return Accepted(0.0, values, None, status=status, reason=reason)
    weight = metrics.get(weighted_by)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
        math.isfinite(weight) and weight >= 0
    ):
        return Rejected(f"{weighted_by} is {weight!r}, not a count >= 0")
    notes: list[str] = []
    if info.get(InfoKey.PRIVACY.value):
        notes.append(f"site privacy floor: {str(info.get(InfoKey.PRIVACY.value))[:300]}")
    bound = claim.train_examples if phase == "train" else claim.eval_examples
    bound = MAX_EXAMPLES if bound is None else bound
    if weight > bound:  # a train count over several epochs exceeds the split: clamp silently
        if phase == "evaluate":
            notes.append(f"{weighted_by} {weight:.4g} clamped to the {bound} declared at the "
                         "query")
        weight = float(bound)
    if phase == "evaluate":
        return Accepted(float(weight), values, None, status=status, notes=notes)
    if state is None or reference is None:
        return Rejected("reply carries no skill")
    found = update_problems(reference, state, foundation_hash=info.get(
        InfoKey.FOUNDATION_HASH.value), policy=policy)
    if found:
        return Rejected("; ".join(found))
    return Accepted(float(weight), values, dict(state), status=status, notes=notes)


def norm_outliers(
    norms: Mapping[str, float],
    factor: float | None = DEFAULT_NORM_FACTOR,
    min_sites: int = MIN_SITES_FOR_NORM_BOUND,
) -> dict[str, str]:
    """Site -> reason, for the updates whose norm exceeds ``factor`` x the median of ``norms``.

    ``norms`` are one task's update norms of this round (the round's own statistics; never a
    test metric). Below ``min_sites`` updates, or with ``factor`` None, nothing is flagged.
    """
    if factor is None or len(norms) < min_sites:
        return {}
    median = float(np.median(np.fromiter(norms.values(), np.float64)))
    bound = factor * median
    return {
        site: f"update norm {norm:.4g} exceeds {factor:g} x the round's median {median:.4g}"
        for site, norm in norms.items()
        if norm > bound and median > 0
    }


def digest(state: Arrays) -> str:
    """SHA-256 over keys, dtypes, shapes and bytes: equal digests are byte-identical updates."""
    h = hashlib.sha256()
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()
