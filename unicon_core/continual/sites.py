"""Sites as a simulation sees them: pooled data of several sites, or a site's data through a
channel view, under a site's interface (``name``, ``task_spec``, ``synthetic``, ``dataset``,
``split_rows``). Used by baselines and studies whose "site" is not one folder (the centralised
upper bound, the CT-only view of CT+PET patients); the federation itself is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from unicon_core.config import TaskSpec
from unicon_core.data.epochs import EpochConcatDataset


class SiteView:
    """A site under another name, task spec or data; everything else is the site's own.

    ``data(split, train)`` returns the dataset of a split (default: the site's).
    """

    def __init__(
        self, site: Any, *, name: str | None = None, task_spec: TaskSpec | None = None,
        data: Callable[[str, bool], Dataset] | None = None, synthetic: bool | None = None,
    ) -> None:
        self._site = site
        self._name = name
        self._spec = task_spec
        self._data = data
        self._synthetic = synthetic

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._site, attr)

    @property
    def name(self) -> str:
        """The view's name (the site's unless given)."""
        return self._name or str(self._site.name)

    @property
    def task_spec(self) -> TaskSpec:
        """The task the view serves (the site's unless given)."""
        return self._spec or self._site.task_spec

    @property
    def synthetic(self) -> bool:
        """Whether the data are synthetic."""
        return bool(self._site.synthetic if self._synthetic is None else self._synthetic)

    def dataset(self, split: str, train: bool = False, **kwargs: Any) -> Dataset:
        """The view's dataset of ``split``."""
        if self._data is None:
            return self._site.dataset(split, train=train, **kwargs)
        return self._data(split, train)

    def split_rows(self, split: str) -> list[int]:
        """One index per example of ``split`` in the view (its length is what counts)."""
        return list(range(len(self.dataset(split))))  # type: ignore[arg-type]


def pooled_site(sites: Sequence[Any], name: str = "pooled") -> SiteView:
    """One site holding the union of ``sites``' data (same task), split by split, in order."""
    if not sites:
        raise ValueError("a pooled site needs at least one site")
    tasks = {s.task_spec.name for s in sites}
    if len(tasks) != 1:
        raise ValueError(f"a pooled site holds one task, got {sorted(tasks)}")

    def data(split: str, train: bool) -> Dataset:
        return EpochConcatDataset([s.dataset(split, train=train) for s in sites])

    return SiteView(sites[0], name=name, data=data, synthetic=any(s.synthetic for s in sites))


def channel_site(site: Any, task_spec: TaskSpec, channels: list[int]) -> SiteView:
    """``site``'s patients through ``channels`` only, serving ``task_spec`` (e.g. CT of CT+PET)."""
    from unicon_core.continual.expansion import ChannelView

    return SiteView(site, task_spec=task_spec,
                    data=lambda split, train: ChannelView(site.dataset(split, train=train),
                                                          channels))
