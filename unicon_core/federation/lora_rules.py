"""Aggregation rules for LoRA skills, chosen per task: pure functions on ``{key: array}``.

A skill's adapter holds one pair per adapted module, ``adapter.<m>.lora_A.weight`` (r x in)
and ``adapter.<m>.lora_B.weight`` (out x r); the module's update is ``s * B @ A`` with peft's
scaling ``s = alpha / r``. A convolution's factors (A: r x C x k.., B: out x r x 1..) are
flattened after their first axis for every product and reshaped back (:func:`_matrix`).
Heads and stems are plain tensors and are always averaged.

Rules (:data:`RULES`):

* ``naive``: average A and B separately (today's FedAvg; the average of ``B_i A_i`` is *not*
  ``mean(B) mean(A)``);
* ``ffa``: FFA-LoRA: A stays at its shared initialisation (frozen at the sites, never
  averaged), only B is averaged; exact, since ``mean(B_i) A = mean(B_i A)``;
* ``fedsa``: FedSA-LoRA-style: A averaged and shared, B kept per site (the server keeps each
  site's B and sends it back; the shared B is the average, for sites without one);
* ``svd``: product space: ``dW = sum_i w_i s_i B_i A_i`` re-factorised by truncated SVD to the
  task's rank; the truncation error ``||dW - s B A||_F / ||dW||_F`` is reported.

Mixed ranks: a site may train a lower rank ``r_i``; :func:`pad_rank` zero-pads its factors to
the task's rank with the product kept (scaling folded into B), and :func:`project_rank` cuts a
global pair down to a site's rank by truncated SVD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from unicon_core.federation.aggregation import normalised_weights, weighted_average

Arrays = Mapping[str, np.ndarray]

RULES = ("naive", "ffa", "fedsa", "svd")
A_MARK, B_MARK = ".lora_A.weight", ".lora_B.weight"


@dataclass
class LoraAggregate:
    """The aggregated skill, and what the rule reports (e.g. the SVD truncation error)."""

    skill: dict[str, np.ndarray]
    report: dict[str, float] = field(default_factory=dict)
    #: fedsa: each site's own B factors (index of the state -> {B key: array})
    personal: list[dict[str, np.ndarray]] = field(default_factory=list)


def lora_pairs(keys: Sequence[str] | Arrays) -> dict[str, tuple[str, str]]:
    """Module -> (A key, B key) for every adapted module whose A and B are both present."""
    keys = set(keys)
    out = {}
    for key in sorted(keys):
        if key.endswith(A_MARK):
            module = key[: -len(A_MARK)]
            if module + B_MARK in keys:
                out[module] = (key, module + B_MARK)
    return out


def b_keys(keys: Sequence[str] | Arrays) -> set[str]:
    """The B-factor keys of a skill."""
    return {b for _, b in lora_pairs(keys).values()}


def a_keys(keys: Sequence[str] | Arrays) -> set[str]:
    """The A-factor keys of a skill."""
    return {a for a, _ in lora_pairs(keys).values()}


def aggregate_lora(
    states: Sequence[Arrays],
    weights: Sequence[float],
    rule: str,
    *,
    reference: Arrays,
    alpha: float,
    rank: int,
    site_ranks: Sequence[int] | None = None,
) -> LoraAggregate:
    """Combine one task's site skills (already padded to ``rank``) with ``rule``.

    ``reference`` is the global skill the sites started from (``ffa`` keeps its A).
    ``site_ranks`` (svd) are the ranks each site trained at, for their scaling ``alpha / r_i``;
    default: all at ``rank``.
    """
    if rule not in RULES:
        raise ValueError(f"LoRA rule {rule!r} is not one of {RULES}")
    if rule == "naive":
        return LoraAggregate(weighted_average(states, weights))
    pairs = lora_pairs(reference)
    if rule in ("ffa", "fedsa"):
        out = weighted_average(states, weights)
        personal: list[dict[str, np.ndarray]] = []
        for a_key, b_key in pairs.values():
            if rule == "ffa":
                out[a_key] = np.asarray(reference[a_key]).copy()
            else:
                personal_bs = [np.asarray(s[b_key]).copy() for s in states]
                if not personal:
                    personal = [{} for _ in states]
                for i, b in enumerate(personal_bs):
                    personal[i][b_key] = b
        return LoraAggregate(out, personal=personal)
    # svd: product space
    share = normalised_weights(weights)
    ranks = list(site_ranks) if site_ranks is not None else [rank] * len(states)
    plain = [k for k in reference if k not in a_keys(reference) | b_keys(reference)]
    out = weighted_average([{k: s[k] for k in plain} for s in states], weights) if plain else {}
    num = den = 0.0
    for a_key, b_key in pairs.values():
        dw = sum(
            w * (alpha / r) * (_matrix(s[b_key]) @ _matrix(s[a_key]))
            for s, w, r in zip(states, share, ranks, strict=True)
        )
        b, a, err = factorise(dw, rank, alpha / rank)
        out[a_key] = _a_shaped(a, reference[a_key])
        out[b_key] = _b_shaped(b, reference[b_key])
        num += err**2
        den += float(np.sum(dw * dw))
    rel = float(np.sqrt(num / den)) if den > 0 else 0.0
    return LoraAggregate(out, report={"svd_truncation_error": rel})


def _matrix(factor: np.ndarray) -> np.ndarray:
    """A LoRA factor as a matrix: a Linear's as it is, a convolution's flattened after its first
    axis (peft's convolutional dW = B.flatten(1) @ A.flatten(1), reshaped to the kernel)."""
    arr = np.asarray(factor, np.float64)
    return arr.reshape(arr.shape[0], -1)


def _a_shaped(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    """An A matrix (r x in) back to the shape and dtype of the factor ``like`` (a convolution's
    A is r x C x k..); ``r`` may differ from ``like``'s rank (mixed ranks)."""
    like = np.asarray(like)
    return a.reshape((a.shape[0], *like.shape[1:])).astype(like.dtype)


def _b_shaped(b: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A B matrix (out x r) back to the shape and dtype of ``like`` (a convolution's B is
    out x r x 1..); ``r`` may differ from ``like``'s rank."""
    like = np.asarray(like)
    return b.reshape((like.shape[0], b.shape[1], *like.shape[2:])).astype(like.dtype)


def factorise(dw: np.ndarray, rank: int, scale: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``(B, A, ||dW - scale B A||_F)`` with ``B`` (out x rank), ``A`` (rank x in): the best
    rank-``rank`` approximation of ``dW`` (truncated SVD), singular values split evenly."""
    u, s, vt = np.linalg.svd(np.asarray(dw, np.float64), full_matrices=False)
    k = min(rank, s.size)
    root = np.sqrt(s[:k] / scale)
    b = np.zeros((dw.shape[0], rank))
    a = np.zeros((rank, dw.shape[1]))
    b[:, :k] = u[:, :k] * root
    a[:k] = root[:, None] * vt[:k]
    return b, a, float(np.sqrt(np.sum(s[k:] ** 2)))


def pad_rank(state: Arrays, rank: int, alpha: float) -> dict[str, np.ndarray]:
    """A lower-rank skill zero-padded to ``rank`` with every product ``s B A`` unchanged
    (B rescaled by ``r_site / rank``'s inverse: ``alpha/r_i B_i A_i = alpha/rank B' A'``)."""
    out = dict(state)
    for a_key, b_key in lora_pairs(state).values():
        a, b = _matrix(state[a_key]), _matrix(state[b_key])
        r = a.shape[0]
        if r > rank:
            raise ValueError(f"{a_key}: site rank {r} above the task's rank {rank}")
        a_pad = np.zeros((rank, a.shape[1]))
        a_pad[:r] = a
        b_pad = np.zeros((b.shape[0], rank))
        b_pad[:, :r] = b * (rank / r)
        out[a_key] = _a_shaped(a_pad, state[a_key])
        out[b_key] = _b_shaped(b_pad, state[b_key])
    return out


def project_rank(
    state: Arrays, rank: int, alpha: float, site_rank: int
) -> tuple[dict[str, np.ndarray], float]:
    """A global skill at ``rank`` cut to ``site_rank`` by truncated SVD of each ``s B A``
    (products kept at the site's scaling); and the relative truncation error."""
    out = dict(state)
    num = den = 0.0
    for a_key, b_key in lora_pairs(state).values():
        a, b = np.asarray(state[a_key]), np.asarray(state[b_key])
        if a.shape[0] != rank:
            raise ValueError(f"{a_key}: rank {a.shape[0]} != the task's rank {rank}")
        dw = (alpha / rank) * (_matrix(b) @ _matrix(a))
        if site_rank == rank:
            continue
        if site_rank > rank:
            raise ValueError(f"{a_key}: site rank {site_rank} above the task's rank {rank}")
        if not np.any(dw):  # e.g. B still zero: keep A's first rows so the site can learn
            out[a_key], out[b_key] = a[:site_rank].copy(), b[:, :site_rank].copy()
            continue
        nb, na, err = factorise(dw, site_rank, alpha / site_rank)
        out[a_key], out[b_key] = _a_shaped(na, a), _b_shaped(nb, b)
        num += err**2
        den += float(np.sum(dw * dw))
    return out, float(np.sqrt(num / den)) if den > 0 else 0.0
