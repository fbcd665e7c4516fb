"""The ``batches`` research hook: a simulated site trains on the batches its sampler draws,
and never under DP-SGD (whose accounting assumes its own Poisson sampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tests.server.fedtools import CLS_TASK, make_sites, tiny_overrides
from unicon_core.data.site_batches import SiteBlockBatchSampler

TWO_SITES = [("site_a", CLS_TASK, 24), ("site_b", CLS_TASK, 36)]


class _Recording(SiteBlockBatchSampler):
    """Records every batch it hands the loader."""

    drawn: ClassVar[list[list[int]]] = []

    def _batch(self, part: int) -> list[int]:
        out = super()._batch(part)
        self.drawn.append(out)
        return out


def test_a_site_trains_on_exactly_the_batches_its_sampler_draws(tmp_path: Path) -> None:
    # Prepare: two sites; each trains 3 steps a round on a sampler of one part (itself)
    from client.site_runner import SiteHooks
    from unicon_flower.runner import run_overrides

    made: list[tuple[int, int, int]] = []

    def batches(data: Any, size: int, seed: int) -> SiteBlockBatchSampler:
        made.append((len(data), size, seed))
        return _Recording([len(data)], size, 1, seed)

    _Recording.drawn = []
    dirs = make_sites(tmp_path / "sites", TWO_SITES)
    # Execute
    run_overrides(tiny_overrides(dirs, tmp_path / "run", 2), 2, research=True,
                  hooks=SiteHooks(batches=batches))
    # Assert: one sampler per site and round, at the run's batch size, each used for the
    # round's steps (one pass of the sampler, at most max_steps 3: 2 for 12 rows, 3 for 18),
    # every batch full (the loader's own shuffle draws a short last batch)
    assert sorted(n for n, _, _ in made) == [12, 12, 18, 18]  # the train splits (half)
    assert {size for _, size, _ in made} == {8}
    assert len({seed for *_, seed in made}) == 4  # a seed per site and round
    assert len(_Recording.drawn) == 2 * (2 + 3) and all(len(b) == 8 for b in _Recording.drawn)


def test_a_batch_order_is_refused_under_dp(tmp_path: Path) -> None:
    # Prepare
    import json

    from client.site_runner import SiteHooks
    from unicon_flower.runner import run_overrides

    dirs = make_sites(tmp_path / "sites", TWO_SITES)
    hooks = SiteHooks(batches=lambda data, size, seed: SiteBlockBatchSampler([len(data)], size,
                                                                             1, seed))
    # Execute
    run_overrides(tiny_overrides(dirs, tmp_path / "run", 1, "privacy=dp"), 2, research=True,
                  hooks=hooks)
    # Assert: neither site trained; each said why
    first = json.loads((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()[0])
    for site in ("site_a", "site_b"):
        entry = first["sites"][site]
        assert entry["status"] == "error", entry
        assert "batch order is not combined with DP-SGD" in entry["reason"]
