"""Loopback deployment: SuperLink + 3 SuperNodes with TLS and node authentication, 2 rounds.

Everything is started through the scripts of ``deploy/`` (via ``unicon_flower.loopback``),
exactly as a coordinator, three hospitals and a researcher would; an unregistered node and a
plaintext client are refused. The sites run only apps the consortium signed
(``--trusted-entities``): an unsigned FAB and an altered one are refused by every site, the
signed one runs, every reply through the site's own egress check. Every process a test starts
is stopped by PID in the fixture's ``finally``, also when the test fails.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.fedtools import THREE_SITES, make_sites
from unicon_flower.loopback import HOST, LoopbackFederation, alive, free_port

pytestmark = pytest.mark.slow

FLWR = str(Path(__import__("sys").executable).parent / "flower-supernode")


def deployment_overrides(run_dir: Path, rounds: int, *extra: str) -> list[str]:
    """A tiny experiment whose sites are whoever connects (no site folders on the server)."""
    return [
        "~experiment", "federation.min_sites=3",
        "federation.node_wait_s=120", "federation.round_timeout_s=300",
        f"federation.rounds={rounds}", f"federation.run_dir='{run_dir}'",
        "federation.wandb=disabled", "federation.plots=false",
        "backbone.hidden_size=32", "backbone.num_layers=2", "backbone.num_heads=2",
        "backbone.mlp_dim=64", "train.max_steps=3", "train.batch_size=8", *extra,
    ]


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LoopbackFederation]:
    dirs = make_sites(tmp_path / "data", THREE_SITES)
    fed = LoopbackFederation(tmp_path / "deploy", {d.name: d for d in dirs})
    started: list[int] = []
    try:
        yield fed
    finally:
        started = [p.pid for p in fed.procs.values()]
        fed.stop()
        assert not [pid for pid in started if alive(pid)], "a started process survived"


def test_tls_authenticated_federation_runs_two_rounds_and_refuses_intruders(
    federation: LoopbackFederation,
) -> None:
    fed = federation
    # Prepare: PKI, SuperLink (TLS + auth + database), the 3 sites registered and started
    fed.make_pki(extra_sites=["rogue"])
    fed.start_superlink()
    registered = fed.register()
    assert registered.count("registered successfully") == 3
    fed.make_signing_key()  # the sites trust the consortium's key only
    for site in fed.sites:
        fed.start_site(site)

    # Execute / Assert 1: a node with an unregistered key is refused, and so is a plaintext
    # client (a SuperNode without TLS, or a bare HTTP request); both tried at once
    intruder = ["--superlink", f"{HOST}:{fed.port}", "--max-retries", "1", "--isolation",
                "process", "--node-config", f"site-dir='{fed.sites['site_a']}'"]
    fed.start("rogue", [FLWR, *intruder, "--port", str(free_port()),
                        "--root-certificates", str(fed.pki / "ca.crt"),
                        "--auth-supernode-private-key", str(fed.pki / "sites/rogue/node_key")],
              FLWR_HOME=str(fed.root / "rogue_home"))
    fed.start("plain", [FLWR, *intruder, "--port", str(free_port()), "--insecure"],
              FLWR_HOME=str(fed.root / "plain_home"))
    assert fed.wait("rogue", 90) not in (0, None)
    assert "Failed to activate SuperNode" in fed.log("rogue"), fed.log("rogue")[-2000:]
    assert fed.wait("plain", 90) not in (0, None)
    assert "could not establish a connection" in fed.log("plain"), fed.log("plain")[-2000:]
    conn = http.client.HTTPConnection(HOST, fed.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/health")
        conn.getresponse()
    conn.close()

    # Execute / Assert 2: an unsigned FAB, and one whose signature was made for other bytes
    # (an app altered after signing), are refused by every site; no round runs
    from deploy.sign_fab import fab_bytes

    fed.snapshot_app()  # what is signed is what runs, while others edit the checkout
    for label, signature in [("unsigned", ""), ("altered", fed.sign(fab_bytes(fed.app) + b" "))]:
        refused_dir = fed.root / f"run-{label}"
        refused = fed.flwr_run(deployment_overrides(refused_dir, 1), timeout_s=300,
                               signature=signature)
        assert not (refused_dir / "results.json").exists(), refused.stdout[-3000:]
        assert not (refused_dir / "rounds.jsonl").exists()
    site_logs = "".join(fed.log(f"site-{s}") for s in fed.sites)
    assert site_logs.count("site guard: refusing run") >= 2 * len(fed.sites), site_logs[-3000:]
    assert "the app is not signed" in site_logs and "does not match this FAB" in site_logs

    # Execute 3: the researcher runs 2 rounds of the signed FAB
    run_dir = fed.root / "run"
    result = fed.flwr_run(deployment_overrides(run_dir, 2), timeout_s=600,
                          signature=fed.sign())

    # Assert 3: the run completed with every registered site in every round, and no reply was
    # refused by a site's egress check
    assert result.returncode == 0, result.stdout[-4000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rounds"] == 2 and results["excluded"] == {}
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert {s: e["status"] for s, e in row["sites"].items()} == {
            name: "trained" for name, _, _ in THREE_SITES}
        assert all(e["train"]["answer_s"] > 0 for e in row["sites"].values())
    assert "site guard refused" not in "".join(fed.log(f"site-{s}") for s in fed.sites)
    assert "No SuperNode found with the given public key" in fed.log("superlink") + (
        fed.root / "superlink" / "superlink.log").read_text()
