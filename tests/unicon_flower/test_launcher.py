"""The `flwr run` launcher: simulation size on the command line, a SuperLink per run or kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from unicon_flower import launcher


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """``run_logged`` and ``stop_superlink`` replaced by recorders (no Flower process runs)."""
    seen: dict[str, list] = {"cmds": [], "envs": [], "stopped": []}

    def fake_run_logged(cmd: list[str], env: dict[str, str], *args: object, **kw: object) -> int:
        seen["cmds"].append(cmd)
        seen["envs"].append(env)
        return 0

    monkeypatch.setattr(launcher, "run_logged", fake_run_logged)
    monkeypatch.setattr(launcher, "stop_superlink",
                        lambda flwr_home: seen["stopped"].append(flwr_home) or [])
    return seen


def test_each_run_gets_its_own_superlink_and_stops_it(recorded: dict, tmp_path: Path) -> None:
    # Execute: two runs without a kept SuperLink
    for name in ("one", "two"):
        launcher.launch_flower_run(tmp_path / name, ["federation.rounds=1"], 3)

    # Assert: fresh ports and FLWR_HOME per run, each stopped; the size on the command line
    ports = [(e["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"], e["FLWR_LOCAL_CONTROL_API_PORT"])
             for e in recorded["envs"]]
    assert ports[0] != ports[1]
    assert recorded["stopped"] == [tmp_path / n / launcher.FLWR_HOME_DIR for n in ("one", "two")]
    cmd = recorded["cmds"][0]
    config = cmd[cmd.index("--federation-config") + 1]
    assert "num-supernodes=3" in config and "client-resources-num-gpus=0.0" in config
    home = (tmp_path / "one" / launcher.FLWR_HOME_DIR / "config.toml").read_text()
    assert 'address = ":local:"' in home and "options" not in home  # no deprecated fields


def test_a_kept_superlink_serves_every_run_and_stops_once(recorded: dict, tmp_path: Path) -> None:
    # Execute: two runs on one kept SuperLink, then its end
    with launcher.KeptSuperLink(tmp_path / "suite_home") as link:
        for name in ("one", "two"):
            launcher.launch_flower_run(tmp_path / name, ["federation.rounds=1"], 2,
                                       superlink=link)
        stopped_during = list(recorded["stopped"])

    # Assert: same ports and FLWR_HOME for both runs, not stopped between them, stopped at the end
    envs = recorded["envs"]
    assert {e["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] for e in envs} == {str(link.ports[0])}
    assert {e["FLWR_LOCAL_CONTROL_API_PORT"] for e in envs} == {str(link.ports[1])}
    assert {e["FLWR_HOME"] for e in envs} == {str(tmp_path / "suite_home")}
    assert stopped_during == [] and recorded["stopped"] == [tmp_path / "suite_home"]
