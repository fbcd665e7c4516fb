"""Experiment tracking: wandb, offline unless configured, writing inside the run folder.

The mode is passed to ``wandb.init`` (no environment variable is changed); ``disabled`` makes
every call a no-op without importing wandb. An explicit ``WANDB_MODE`` in the environment still
wins, as wandb documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class Tracker:
    """A thin wandb run: ``log(step, flat metrics)`` and ``finish(summary)``."""

    def __init__(
        self,
        run_dir: Path,
        *,
        mode: str = "offline",
        project: str = "unicon",
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb mode {mode!r} is not offline, online or disabled")
        self.mode = mode
        self._run: Any = None
        if mode == "disabled":
            return
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project,
            name=name or run_dir.name,
            dir=str(run_dir),
            mode=mode,  # type: ignore[arg-type]
            config=dict(config or {}),
            reinit="finish_previous",
        )

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log flat numeric metrics at ``step`` (None/NaN values are skipped)."""
        if self._run is None:
            return
        clean = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and v == v
        }
        self._run.log(clean, step=step)

    def finish(self, summary: Mapping[str, Any] | None = None) -> None:
        """Write the summary and close the run (flushes the offline files)."""
        if self._run is None:
            return
        for key, value in (summary or {}).items():
            self._run.summary[key] = value
        self._run.finish()
        self._run = None


def flatten(prefix: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>a/b": 1}`` for wandb keys."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(name + "/", value))
        else:
            out[name] = value
    return out
