"""Red team, surface "dp": a researcher's run config against the site's differential privacy.

Each case failed before the fix (see ``docs/security.md``, "Sites: privacy the site controls").
Outcomes: ``private`` (the site's own floor, ledger folder or entropy applies, whatever the run
config says) and ``clear_error`` (a malformed floor is refused naming the key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import site_runner
from tests.server.fedtools import CLS_TASK, make_site, tiny_overrides
from unicon_core.federation.config import PrivacyConfig, site_privacy
from unicon_core.hydra_config import load_settings
from unicon_core.privacy import DPSGD

DP = "dp"
DEPLOYED = {"site-dir": "/data/site_a"}
SIMULATED = {"partition-id": 0, "num-partitions": 1}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


# ------------------------------------------------------------------------ the site's floor
@pytest.mark.redteam(surface=DP, outcome="private")
def test_a_run_config_cannot_lower_the_sites_noise() -> None:
    run = PrivacyConfig(enabled=True, noise_multiplier=0.1, epsilon_budget=1000.0)
    got, notes = site_privacy(run, {**DEPLOYED, "dp-min-noise": 1.2, "dp-max-epsilon": 8})
    assert (got.noise_multiplier, got.epsilon_budget) == (1.2, 8.0)
    assert any("floor" in n for n in notes) and any("maximum" in n for n in notes)


@pytest.mark.redteam(surface=DP, outcome="private")
def test_a_run_config_cannot_turn_off_dp_the_site_requires() -> None:
    got, notes = site_privacy(PrivacyConfig(enabled=False), {**DEPLOYED, "dp-max-epsilon": 3})
    assert got.enabled and got.epsilon_budget == 3.0
    assert "turns DP-SGD on" in notes[0]


@pytest.mark.redteam(surface=DP, outcome="private")
def test_a_stricter_run_config_still_tightens() -> None:
    run = PrivacyConfig(enabled=True, noise_multiplier=2.0, epsilon_budget=1.0)
    got, notes = site_privacy(run, {**DEPLOYED, "dp-min-noise": 1.0, "dp-max-epsilon": 8})
    assert (got.noise_multiplier, got.epsilon_budget, notes) == (2.0, 1.0, [])


@pytest.mark.redteam(surface=DP, outcome="clear_error")
@pytest.mark.parametrize("value", ["lots", -1, 0, True])
def test_a_malformed_floor_is_refused_naming_the_key(value: Any) -> None:
    with pytest.raises(ValueError, match="'dp-min-noise' must be a number > 0"):
        site_privacy(PrivacyConfig(enabled=True), {**DEPLOYED, "dp-min-noise": value})


@pytest.mark.redteam(surface=DP, outcome="private")
def test_reproducible_dp_is_ignored_outside_a_simulation() -> None:
    run = PrivacyConfig(enabled=True, reproducible=True)
    deployed, notes = site_privacy(run, DEPLOYED)
    simulated, _ = site_privacy(run, SIMULATED)
    assert not deployed.reproducible and "ignored" in notes[0]
    assert simulated.reproducible


# ------------------------------------------------------------------------ ledger folder
def _context(node_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config={})


@pytest.mark.redteam(surface=DP, outcome="private")
def test_the_researcher_cannot_choose_a_deployed_sites_ledger_folder(tmp_path: Path) -> None:
    settings = load_settings([f"federation.run_dir='{tmp_path / 'chosen'}'"])
    assert site_runner.ledger_dir(_context(DEPLOYED), settings, "site_a") is None
    own = {**DEPLOYED, "dp-ledger-dir": str(tmp_path / "ledger"), "state-dir": "/x"}
    assert site_runner.ledger_dir(_context(own), settings, "site_a") == tmp_path / "ledger"


# ------------------------------------------------------------------------ noise seed
def _noised_gradient(seed: int | None) -> np.ndarray:
    """One DP-SGD step on a fixed model and batch; the noise is all that can differ."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    data = torch.utils.data.TensorDataset(torch.ones(8, 3), torch.ones(8, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    dp = DPSGD(PrivacyConfig(enabled=True, noise_multiplier=1.0), seed=seed)
    module, optimizer, _ = dp(model, optimizer, loader)
    before = [p.detach().clone() for p in module.parameters()]
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(module(torch.ones(8, 3)), torch.ones(8, 1)).backward()
    optimizer.step()
    step = np.concatenate([(b - p.detach()).numpy().ravel()
                           for b, p in zip(before, module.parameters(), strict=True)])
    dp.close()
    return step


@pytest.mark.redteam(surface=DP, outcome="private")
def test_deployment_noise_cannot_be_replayed() -> None:
    # The same inputs twice: with OS entropy the noise differs; a seed reproduces it exactly
    assert not np.array_equal(_noised_gradient(None), _noised_gradient(None))
    np.testing.assert_array_equal(_noised_gradient(7), _noised_gradient(7))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("dp")
    site = make_site(root / "sites", "site_a", CLS_TASK)  # 24 rows: 12 train
    return site, tiny_overrides([site], root / "run", 1, "privacy=dp",
                                "privacy.reproducible=true")


def _train_instruction(
    tiny: tuple[Path, list[str]], node_config: dict[str, Any]
) -> tuple[Message, Any, Any]:
    """A round-3 train instruction for the tiny site's task, its node context and settings."""
    _, overrides = tiny
    settings = load_settings(overrides)
    context = _context(node_config)
    site = site_runner.open_node_site(context, settings)
    model = site_runner.build_model(settings, site)
    msg = Message(RecordDict({
        "config": ConfigRecord({"task": CLS_TASK, "server-round": 3,
                                "foundation-hash": model.foundation_hash}),
        "skill": site_runner.skill_record(model, CLS_TASK),
    }), dst_node_id=1, message_type="train")
    return msg, context, settings


def _train_seed(tiny: tuple[Path, list[str]], node_config: dict[str, Any],
                monkeypatch: pytest.MonkeyPatch) -> Any:
    """The seed handle_train gives DPSGD (the test stops training there)."""
    site_dir, _ = tiny
    msg, context, settings = _train_instruction(
        tiny, {**node_config, "site-dir": str(site_dir)} if "site-dir" in node_config
        else node_config)
    seen: dict[str, Any] = {}

    class StopError(Exception):
        pass

    def capture(cfg: PrivacyConfig, *, seed: int | None = None) -> None:
        seen["seed"], seen["noise"] = seed, cfg.noise_multiplier
        raise StopError

    monkeypatch.setattr("unicon_core.privacy.DPSGD", capture)
    with pytest.raises(StopError):
        site_runner.handle_train(msg, context, settings)
    return seen


@pytest.mark.redteam(surface=DP, outcome="private")
def test_a_deployed_site_never_seeds_dp_from_what_the_server_knows(
    tiny: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = str(tiny[0].parent / "ledger")
    deployed = _train_seed(tiny, {"site-dir": "", "dp-min-noise": 1.5, "dp-ledger-dir": ledger},
                           monkeypatch)
    simulated = _train_seed(tiny, {"partition-id": 0, "num-partitions": 1}, monkeypatch)
    assert deployed == {"seed": None, "noise": 1.5}  # OS entropy, the site's floor
    assert isinstance(simulated["seed"], int)  # reproducible: simulation and asked for


@pytest.mark.redteam(surface=DP, outcome="clear_error")
def test_a_deployed_site_without_a_ledger_folder_does_not_train_under_dp(
    tiny: tuple[Path, list[str]]
) -> None:
    # An in-memory ledger would restart at epsilon 0 with the SuperNode: no budget could hold.
    msg, context, settings = _train_instruction(
        tiny, {"site-dir": str(tiny[0]), "dp-min-noise": 1.5})
    reply = site_runner.handle_train(msg, context, settings)
    info = reply.content.config_records["info"]
    assert info["status"] == "budget-exhausted" and "--state-dir" in str(info["reason"])
    assert "skill" not in reply.content.array_records


# ------------------------------------------------------------------------ router statistics
def _query_summary(tiny: tuple[Path, list[str]], node_config: dict[str, Any],
                   *extra: str) -> tuple[dict[str, Any], int]:
    site_dir, overrides = tiny
    settings = load_settings([*overrides, *extra])
    context = _context({**node_config, "site-dir": str(site_dir)})
    site = site_runner.open_node_site(context, settings)
    model = site_runner.build_model(settings, site)
    return site_runner.router_statistics(context, settings, site, model)


@pytest.mark.redteam(surface=DP, outcome="private")
def test_router_statistics_need_twenty_examples(tiny: tuple[Path, list[str]]) -> None:
    arrays, count = _query_summary(tiny, {}, "privacy=disabled")
    assert (arrays, count) == ({}, 12)


@pytest.mark.redteam(surface=DP, outcome="private")
def test_router_statistics_are_off_under_dp_unless_the_site_allows(
    tiny: tuple[Path, list[str]]
) -> None:
    off, _ = _query_summary(tiny, {"router-min-count": 5})
    allowed, _ = _query_summary(tiny, {"router-min-count": 5, "router-stats-with-dp": True})
    assert off == {} and allowed
