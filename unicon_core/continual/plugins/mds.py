"""Maximum Data Similarity (MDS) selection, after MedSeqFT (arXiv 2509.06096).

MedSeqFT keeps, for each downstream task, the ``K`` samples most representative of the
pre-training distribution (a buffer used for distillation in later stages). The paper scores a
sample by the foundation's self-supervised loss; unicon has no SSL head at the sites, so a
sample is scored by the distance of its foundation features to the pre-training **feature
distribution**, which travels as summary statistics (mean, covariance, count), never as samples.
Selection runs at each site on that site's own features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from unicon_core.continual.plugins.base import ContinualPlugin

if TYPE_CHECKING:
    from unicon_core.continual.runner import RunContext, Strategy
    from unicon_core.continual.stages import StagePlan

Metric = Literal["mahalanobis", "cosine"]


@dataclass(frozen=True)
class FeatureStats:
    """Summary statistics of a feature distribution: what may leave the pre-training data."""

    mean: torch.Tensor  # (D,)
    cov: torch.Tensor  # (D, D)
    count: int

    @classmethod
    def from_features(cls, features: torch.Tensor) -> FeatureStats:
        """Mean and (unbiased) covariance of ``(N, D)`` features."""
        if features.ndim != 2 or len(features) < 2:
            raise ValueError("need (N, D) features with N >= 2")
        f = features.detach().double()
        return cls(f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1]), len(f))

    @classmethod
    def merge(cls, parts: Sequence[FeatureStats]) -> FeatureStats:
        """The statistics of the union of several sites' features, from their statistics
        alone (pooled mean and unbiased covariance; equal to :meth:`from_features` of the
        concatenated features)."""
        if not parts:
            raise ValueError("need at least one FeatureStats to merge")
        n = sum(p.count for p in parts)
        mean = sum(p.count * p.mean.double() for p in parts) / n
        scatter = sum((p.count - 1) * p.cov.double()
                      + p.count * torch.outer(p.mean.double() - mean, p.mean.double() - mean)
                      for p in parts)
        return cls(mean, scatter / (n - 1), n)

    def precision(self, shrinkage: float = 1e-3) -> torch.Tensor:
        """Inverse of the covariance shrunk towards its mean variance (always invertible)."""
        d = self.cov.shape[0]
        scale = float(torch.diagonal(self.cov).mean().clamp_min(1e-12))
        cov = (1 - shrinkage) * self.cov + shrinkage * scale * torch.eye(d, dtype=self.cov.dtype)
        return torch.linalg.inv(cov)


def distances(
    features: torch.Tensor, stats: FeatureStats, metric: Metric = "mahalanobis",
    shrinkage: float = 1e-3,
) -> torch.Tensor:
    """Distance of each ``(N, D)`` feature row to the distribution ``stats`` describes.

    ``mahalanobis``: ``sqrt((f - mu)^T S^-1 (f - mu))``; ``cosine``: ``1 - cos(f, mu)``.
    """
    f = features.detach().double()
    mean = stats.mean.to(f)
    if metric == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(f, mean[None], dim=1)
    if metric != "mahalanobis":
        raise ValueError(f"unknown metric {metric!r}: mahalanobis or cosine")
    diff = f - mean
    return torch.einsum("nd,de,ne->n", diff, stats.precision(shrinkage).to(f), diff).clamp_min(
        0).sqrt()


def mds_select(
    features: torch.Tensor, stats: FeatureStats, k: int, metric: Metric = "mahalanobis",
) -> torch.Tensor:
    """Indices of the ``k`` samples closest to the pre-training distribution (closest first;
    ties broken by index)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    d = distances(features, stats, metric)
    order = sorted(range(len(d)), key=lambda i: (float(d[i]), i))
    return torch.tensor(order[: min(k, len(d))], dtype=torch.long)


#: ``(strategy, plan, ctx) -> {site: (N, D) features of that site's training samples}``
SiteFeatures = Callable[["Strategy", "StagePlan", "RunContext"], dict[str, torch.Tensor]]


class MDSPlugin(ContinualPlugin):
    """Before each stage, each joining site selects its ``k`` MDS samples (indices, kept at the
    site); later plugins (:class:`~unicon_core.continual.plugins.kd.KDPlugin`) distil on them.

    ``site_features`` computes a site's features with the current foundation (at the site).
    ``stats_from_first_stage``: without given ``stats``, the reference distribution is the
    first stage's sites' features after that stage (each site's :class:`FeatureStats`, merged:
    summary statistics only), i.e. the data the shared foundation was first fitted to; the
    shipped random tiny transformer has no pre-training data of its own.
    """

    name = "mds"

    def __init__(
        self, stats: FeatureStats | None = None, k: int = 16, metric: Metric = "mahalanobis",
        site_features: SiteFeatures | None = None, stats_from_first_stage: bool = False,
        enabled: bool = True,
    ) -> None:
        super().__init__(enabled)
        self.stats, self.k, self.metric = stats, k, metric
        self.stats_from_first_stage = stats_from_first_stage
        self.site_features = site_features
        #: site -> selected sample indices (never leaves the site in a deployment)
        self.selected: dict[str, torch.Tensor] = {}
        #: site -> distance of its k-th selected sample: a batch sample at most this far is "MDS"
        self.threshold: dict[str, float] = {}

    def select(self, site: str, features: torch.Tensor) -> torch.Tensor:
        """Select and remember ``site``'s MDS samples; returns their indices."""
        if self.stats is None:
            raise ValueError("MDSPlugin needs the pre-training feature statistics")
        idx = mds_select(features, self.stats, self.k, self.metric)
        self.selected[site] = idx
        self.threshold[site] = float(distances(features[idx], self.stats, self.metric).max())
        return idx

    def mask(self, site: str | None, features: torch.Tensor) -> torch.Tensor:
        """Which rows of ``features`` are within ``site``'s MDS threshold (bool ``(N,)``)."""
        if self.stats is None or site not in self.threshold:
            return torch.ones(len(features), dtype=torch.bool)
        return distances(features, self.stats, self.metric) <= self.threshold[site] + 1e-9

    def mask_any(self, features: torch.Tensor) -> torch.Tensor:
        """Rows within the largest site threshold (when the training site is unknown); every
        row when nothing was selected yet."""
        if self.stats is None or not self.threshold:
            return torch.ones(len(features), dtype=torch.bool)
        limit = max(self.threshold.values()) + 1e-9
        return distances(features, self.stats, self.metric).to(features.device) <= limit

    def _features(self, strategy: Strategy, plan: StagePlan,
                  ctx: RunContext) -> dict[str, torch.Tensor] | None:
        """Each joining site's features (``site_features``, else the strategy's own)."""
        if self.site_features is not None:
            return self.site_features(strategy, plan, ctx)
        if callable(getattr(strategy, "site_features", None)):
            return strategy.site_features(plan, ctx)  # type: ignore[attr-defined,no-any-return]
        return None

    def on_before_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Select at every joining site; nothing without pre-training statistics."""
        if self.stats is None:
            return
        for site, feats in (self._features(strategy, plan, ctx) or {}).items():
            self.select(site, feats)

    def on_after_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """With ``stats_from_first_stage``: after stage 0, the merged statistics of its sites'
        features become the reference distribution."""
        if self.stats is not None or not self.stats_from_first_stage or plan.index != 0:
            return
        features = self._features(strategy, plan, ctx)
        if not features:
            raise ValueError("mds: stats_from_first_stage needs the strategy's site_features")
        self.stats = FeatureStats.merge([FeatureStats.from_features(f)
                                         for f in features.values()])


def stats_of(batches: Sequence[torch.Tensor] | Any) -> FeatureStats:
    """:class:`FeatureStats` of concatenated ``(B, D)`` feature batches."""
    return FeatureStats.from_features(torch.cat(list(batches)))
