"""The site's own guard (``deploy/site_guard.py``): signed apps, the site's rules, isolation."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from deploy import sign_fab as cli
from deploy.site_guard import (
    AppOutcome,
    SiteGuardError,
    guarded_reply,
    load_trusted_entities,
    run_isolated,
    sign_fab,
    site_layout,
    site_rules_for,
    verify_fab_signature,
)
from tests.deploy.sitetools import RUN_CONFIG, TASK, make_site_json

FAB = b"PK\x03\x04 a pretend FAB"
REPO = Path(__file__).resolve().parents[2]


def _key_files(root: Path) -> tuple[ed25519.Ed25519PrivateKey, Path, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = root / "consortium_key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public = root / "consortium_key.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return key, private, public


@pytest.fixture
def trusted(tmp_path: Path) -> tuple[ed25519.Ed25519PrivateKey, dict[str, str]]:
    key, _, public = _key_files(tmp_path)
    return key, {"consortium": public.read_text()}


def test_a_signed_fab_verifies_and_flower_agrees(trusted) -> None:
    # Prepare
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    key, entities = trusted
    signature = sign_fab(FAB, key, "consortium", signed_at=1_700_000_000)
    key_id, signed_at, sig = signature.split(":")

    # Execute / Assert: our check accepts it, and so does Flower's own verifier given the same
    # record as Flower Hub would send it (same message, key type and encoding)
    assert verify_fab_signature(FAB, signature, entities) == ""
    record = {"valid_license": "Valid",
              key_id: json.dumps({"signature": sig, "signed_at": int(signed_at)})}
    assert _verify_fab(Fab(hashlib.sha256(FAB).hexdigest(), FAB, record), entities)


@pytest.mark.parametrize(
    ("case", "match"),
    [("unsigned", "not signed"), ("altered", "does not match this FAB"),
     ("stranger", "does not trust"), ("garbled", "is not '<key id>")],
)
@pytest.mark.redteam(surface="signed-apps", outcome="clear_error")
def test_an_unsigned_altered_or_foreign_fab_is_refused(trusted, case: str, match: str) -> None:
    key, entities = trusted
    signature = {
        "unsigned": "",
        "altered": sign_fab(FAB + b"!", key, "consortium"),
        "stranger": sign_fab(FAB, ed25519.Ed25519PrivateKey.generate(), "someone"),
        "garbled": "consortium:abc",
    }[case]
    assert match in verify_fab_signature(FAB, signature, entities)


@pytest.mark.redteam(surface="signed-apps", outcome="clear_error")
def test_a_key_of_another_signer_under_a_trusted_id_is_refused(trusted) -> None:
    _, entities = trusted
    forged = sign_fab(FAB, ed25519.Ed25519PrivateKey.generate(), "consortium")
    assert "does not match" in verify_fab_signature(FAB, forged, entities)


def test_trusted_entities_file_is_checked(tmp_path: Path) -> None:
    _, _, public = _key_files(tmp_path)
    good = tmp_path / "good.yaml"
    good.write_text(f"consortium: '{public.read_text().strip()}'\n")
    assert list(load_trusted_entities(good)) == ["consortium"]
    ecdsa = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    for text, match in [(f"k: '{ecdsa}'", "not Ed25519"), ("k: 'nonsense'", "not an OpenSSH"),
                        ("- a list", "expected a mapping")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text + "\n")
        with pytest.raises(SiteGuardError, match=match):
            load_trusted_entities(bad)


def test_sign_fab_command_signs_what_the_site_verifies(tmp_path: Path) -> None:
    # Prepare: a consortium key and a built FAB file
    _, private, public = _key_files(tmp_path)
    fab = tmp_path / "app.fab"
    fab.write_bytes(FAB)

    # Execute: the two commands a consortium runs, as scripts
    script = str(REPO / "deploy" / "sign_fab.py")
    line = subprocess.run([sys.executable, script, "entity", "--key-id", "consortium",
                           "--public-key", str(public)], check=True, capture_output=True,
                          text=True).stdout
    (tmp_path / "trusted.yaml").write_text(line)
    out = tmp_path / "signature.toml"
    subprocess.run([sys.executable, script, "sign", "--key", str(private), "--key-id",
                    "consortium", "--fab", str(fab), "--out", str(out)], check=True)

    # Assert: the run-config line verifies against the trusted-entities file
    import tomllib

    signature = tomllib.loads(out.read_text())["fab-signature"]
    entities = load_trusted_entities(tmp_path / "trusted.yaml")
    assert verify_fab_signature(FAB, signature, entities) == ""
    assert verify_fab_signature(FAB + b"x", signature, entities) != ""


def test_sign_fab_refuses_a_non_ed25519_key(tmp_path: Path) -> None:
    key = tmp_path / "ecdsa"
    key.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    assert cli.main(["sign", "--key", str(key), "--key-id", "k", "--fab", str(key)]) == 2


def test_fab_built_from_an_app_is_what_flwr_run_submits(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    assert cli.fab_bytes(app=app) == build_fab_from_disk(app) == build_fab_from_disk(app)


def test_layout_is_the_sites_own_model_for_its_own_task(tmp_path: Path) -> None:
    # Prepare
    from unicon_core.federation.config import overrides_from_run_config
    from unicon_core.hydra_config import load_settings
    from unicon_core.model import UniconModel

    site = make_site_json(tmp_path)

    # Execute
    layout, metadata = site_layout({"site-dir": str(site)}, RUN_CONFIG)

    # Assert: exactly the skill of the task in site.json, at the run's architecture (the
    # layout is built on the meta device: the same shapes as a real model's)
    model = UniconModel(load_settings(overrides_from_run_config(RUN_CONFIG)).backbone)
    model.add_task(metadata.task)
    assert layout == {k: tuple(v.shape) for k, v in model.skill_state_dict(TASK).items()}
    assert metadata.task.name == TASK and any(k.startswith("adapter.") for k in layout)


def test_rules_need_the_site_folder_and_valid_node_config(tmp_path: Path) -> None:
    site = make_site_json(tmp_path)
    with pytest.raises(SiteGuardError, match="site-dir"):
        site_rules_for({}, RUN_CONFIG)
    with pytest.raises(SiteGuardError, match=r"site\.json"):
        site_rules_for({"site-dir": str(tmp_path / "nowhere")}, RUN_CONFIG)
    with pytest.raises(SiteGuardError, match="max_metrics"):
        site_rules_for({"site-dir": str(site), "egress-max-metrics": 0}, RUN_CONFIG)
    rules = site_rules_for({"site-dir": str(site), "egress-extra-metrics": "f1, mcc"},
                           RUN_CONFIG)
    assert {"f1", "mcc"} <= rules.metric_names and rules.site_names == {"site_a"}
    named = site_rules_for({"site-dir": str(site), "site-name": "hospital_a"}, RUN_CONFIG)
    assert named.site_names == {"site_a", "hospital_a"}  # site.json's name and the node's


def _message() -> Message:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    return Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=1,
                   message_type="train")


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_isolated_app_hands_back_its_reply_and_state() -> None:
    def app(msg: Message, ctx: Context) -> Message:
        ctx.state["memory"] = ConfigRecord({"rounds": 1})
        return Message(RecordDict({
            "skill": ArrayRecord({"head.w": Array(np.arange(4, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": 3})}), reply_to=msg)

    ran_meanwhile = []
    outcome = run_isolated(app, _message(), _context(), after_fork=lambda: ran_meanwhile.append(1))
    assert outcome.error == "" and ran_meanwhile == [1]
    np.testing.assert_array_equal(outcome.content["skill"]["head.w"].numpy(), np.arange(4))
    assert outcome.state["memory"]["rounds"] == 1


def test_isolated_app_that_raises_or_dies_is_an_error_not_a_crash() -> None:
    def raises(msg: Message, ctx: Context) -> Message:
        raise ValueError("patient P-0042 has value 17.3")

    def dies(msg: Message, ctx: Context) -> Message:
        import os

        os._exit(3)

    outcome = run_isolated(raises, _message(), _context())
    assert outcome.content is None and "P-0042" in outcome.error  # for the site's log only
    outcome = run_isolated(dies, _message(), _context())
    assert outcome.content is None and "status" in outcome.error


@pytest.mark.slow
def test_the_real_client_apps_replies_pass_the_sites_guard(tmp_path: Path) -> None:
    """Every honest reply of unicon's own ClientApp (query, train with each codec and FFA,
    evaluate) leaves a site; catches an allow-list that lags behind a new metric or record."""
    # Prepare: a classification and a survival site, the loopback test's run config
    import shlex

    from client.client_app import make_client_app
    from tests.deploy.test_deployment import deployment_overrides
    from tests.server.fedtools import THREE_SITES, make_sites

    dirs = make_sites(tmp_path / "data", [THREE_SITES[0], THREE_SITES[2]])
    overrides = deployment_overrides(tmp_path / "run", 2)
    run_config = {"experiment": "", "overrides": " ".join(shlex.quote(o) for o in overrides)}
    app = make_client_app()
    variants = [("train", {}), ("evaluate", {}),
                ("train", {"delta-codec": "topk", "topk-fraction": 0.5}),
                ("train", {"delta-codec": "int8", "codec-per-row": True, "lora-rule": "ffa"}),
                ("train", {"lora-rule": "ffa"})]
    refused: list[str] = []
    for site in dirs:
        node = {"site-dir": str(site)}
        rules = site_rules_for(node, run_config)
        ctx = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(),
                      run_config=run_config)

        def ask(kind: str, content: RecordDict, ctx: Context = ctx, rules=rules,
                site: Path = site) -> AppOutcome:
            TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
            msg = Message(content, dst_node_id=1, message_type=kind)
            outcome = run_isolated(lambda m, c: app(m, c), msg, ctx)
            if outcome.state is not None:
                ctx.state = outcome.state
            reply = guarded_reply(msg, outcome, rules, lambda _, fmt, *a: refused.append(
                f"{site.name} {kind}: " + fmt % a))
            assert reply.has_error() == bool(refused)
            assert outcome.content is not None, outcome.error
            return outcome

        # Execute: the query, then each train/evaluate variant with the skill the query named
        info = ask("query", RecordDict({"config": ConfigRecord({"server-round": 0})})
                   ).content["info"]
        skill = {k: Array(np.zeros(s, np.float32)) for k, s in rules.allowed.items()}
        for kind, extra in variants:
            config = ConfigRecord({"server-round": 1, "task": info["task"],
                                   "foundation-hash": info["foundation-hash"], **extra})
            ask(kind, RecordDict({"config": config, "skill": ArrayRecord(dict(skill))}))

    # Assert: nothing honest was refused
    assert refused == []


def test_a_research_site_allows_the_runs_plan_and_nobody_else_does(tmp_path: Path) -> None:
    # Prepare: the run asks for full fine-tuning (backbone tensors travel)
    site = make_site_json(tmp_path)
    run = dict(RUN_CONFIG, overrides=RUN_CONFIG["overrides"] + " federation.plan=full_finetune")

    # Execute
    plain = site_rules_for({"site-dir": str(site)}, run)
    research = site_rules_for({"site-dir": str(site), "allow-research-plans": True}, run)

    # Assert: only the site whose node config allows research plans lets backbone tensors out
    assert not any(k.startswith("backbone.") for k in plain.allowed) and plain.exact
    assert any(k.startswith("backbone.") for k in research.allowed) and not research.exact
    assert "backbone." in research.prefixes
    # a modality's own backbone (e.g. the CT foundation serving CT tasks) is research data too
    assert "modality_backbones." in research.prefixes
    assert not {"backbone.", "modality_backbones."} & set(plain.prefixes)


def test_the_executor_refuses_to_start_with_an_unusable_trust_file(tmp_path: Path) -> None:
    bad = tmp_path / "trusted.yaml"
    bad.write_text("consortium: 'ssh-rsa AAAA'\n")
    res = subprocess.run([sys.executable, str(REPO / "deploy" / "warm_executor.py"),
                          "--runtime-api-address", "127.0.0.1:1", "--trusted-entities", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and f"trusted entities {bad}" in res.stderr, res.stderr[-2000:]


def test_every_info_key_of_the_protocol_has_a_limit_at_the_site() -> None:
    # A key added to the protocol without a limit here would make every honest reply refused
    from unicon_core.federation.egress import INFO_LIMITS
    from unicon_core.federation.protocol import InfoKey

    assert set(INFO_LIMITS) == {k.value for k in InfoKey}
