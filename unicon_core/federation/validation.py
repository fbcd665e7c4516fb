"""Server-side validation of a site's skill update before it is aggregated.

A federation must survive a broken or malicious site: one reply with a NaN, a tensor of the
wrong shape, an extra key or a huge update would otherwise poison its task's global skill for
every hospital. :func:`update_problems` checks one reply against the skill the server sent and
returns every reason to reject it (empty: accept). The strategy logs the site and reasons and
aggregates the remaining replies.

Checks, in order:

* the reply's foundation hash is the federation's (a skill only fits its own backbone);
* the keys are exactly the task's skill keys (none missing, none unknown);
* every tensor has the shape and the floating-point dtype of the skill that was sent;
* every value is finite;
* the L2 norm of the update (reply minus the skill sent, over all tensors) is at most
  ``max_update_norm`` when a bound is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from unicon_core.keys import key_set_problems

Arrays = Mapping[str, np.ndarray]

FLOAT_KINDS = frozenset("f")  # numpy dtype kinds accepted for skill tensors


@dataclass(frozen=True)
class ValidationPolicy:
    """What the server accepts from a site.

    Parameters
    ----------
    foundation_hash : str
        Hash of the federation's frozen backbone; a reply naming another is rejected.
    max_update_norm : float or None
        Largest allowed L2 norm of ``reply - sent`` over all tensors of the skill; ``None``
        disables the bound (the other checks always apply).
    """

    foundation_hash: str
    max_update_norm: float | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.foundation_hash:
            raise ValueError("ValidationPolicy.foundation_hash must be non-empty")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0 or None, got {self.max_update_norm}")


def update_norm(reference: Arrays, update: Arrays) -> float:
    """L2 norm of ``update - reference`` over the keys both share, in float64."""
    total = 0.0
    for key in reference.keys() & update.keys():
        diff = np.asarray(update[key], np.float64) - np.asarray(reference[key], np.float64)
        total += float(np.sum(diff * diff))
    return float(np.sqrt(total))


def update_problems(
    reference: Arrays,
    update: Arrays,
    *,
    foundation_hash: object,
    policy: ValidationPolicy,
) -> list[str]:
    """Every reason to reject ``update`` (a site's returned skill) against ``reference``.

    ``reference`` is the task's skill the server sent this round; ``foundation_hash`` is what
    the reply claims. An empty list means the update may be aggregated.
    """
    if foundation_hash != policy.foundation_hash:
        return [
            f"foundation hash {str(foundation_hash)[:12]}... is not the federation's "
            f"{policy.foundation_hash[:12]}... (a skill only fits its own backbone)"
        ]
    problems = key_set_problems(reference, update, extra="unknown")
    for key in sorted(set(reference) & set(update)):
        ref, arr = np.asarray(reference[key]), np.asarray(update[key])
        if arr.shape != ref.shape:
            problems.append(f"{key}: shape {arr.shape} != {ref.shape}")
        elif arr.dtype != ref.dtype or arr.dtype.kind not in FLOAT_KINDS:
            problems.append(f"{key}: dtype {arr.dtype} != {ref.dtype}")
        elif not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            problems.append(f"{key}: {bad} non-finite value(s)")
    if problems or policy.max_update_norm is None:
        return problems
    norm = update_norm(reference, update)
    if norm > policy.max_update_norm:
        problems.append(
            f"update norm {norm:.4g} exceeds the bound {policy.max_update_norm:.4g}"
        )
    return problems
