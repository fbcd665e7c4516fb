"""The deploy scripts: secure by default, insecure only by an explicit flag with a warning.

Flower's commands are replaced by stubs that print their arguments (``FLWR_BIN``), so these
tests start no server; ``make_test_pki.sh`` runs for real (openssl, ssh-keygen).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture
def stub_bin(tmp_path: Path) -> Path:
    """A FLWR_BIN whose flower-superlink / flower-supernode / flwr echo their arguments."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("flower-superlink", "flower-supernode", "flwr"):
        path = folder / name
        path.write_text(f'#!/usr/bin/env bash\necho "{name} $*"\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def _run(args: list[str], stub_bin: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "FLWR_BIN": str(stub_bin), **env}
    return subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=120,
                          check=False)


def test_test_pki_makes_a_ca_a_server_certificate_and_p384_site_keys(tmp_path: Path) -> None:
    # Execute
    res = subprocess.run([str(DEPLOY / "make_test_pki.sh"), str(tmp_path / "pki"), "a", "b"],
                         capture_output=True, text=True, timeout=120, check=False)

    # Assert
    assert res.returncode == 0, res.stderr
    pki = tmp_path / "pki"
    cert = subprocess.run(["openssl", "x509", "-in", str(pki / "server.crt"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in cert and "TLS Web Server Authentication" in cert
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(pki / "ca.crt"),
                             str(pki / "server.crt")], capture_output=True, text=True,
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for site in ("a", "b"):
        key = pki / "sites" / site / "node_key"
        info = subprocess.run(["ssh-keygen", "-l", "-f", str(key.with_suffix(".pub"))],
                              capture_output=True, text=True, check=True).stdout
        assert info.startswith("384 ") and "(ECDSA)" in info
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600


def test_superlink_is_tls_and_auth_by_default(tmp_path: Path, stub_bin: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        (certs / name).write_text("x")
    res = _run([str(DEPLOY / "start_superlink.sh"), "--certs", str(certs), "--state",
                str(tmp_path / "state")], stub_bin)
    assert res.returncode == 0, res.stderr
    assert "--enable-supernode-auth" in res.stdout and "--ssl-certfile" in res.stdout
    assert f"--database {tmp_path / 'state'}/superlink.db" in res.stdout
    assert "--disable-runtime-dependency-installation" in res.stdout
    assert "--insecure" not in res.stdout and "WARNING" not in res.stderr


def test_superlink_refuses_to_start_without_certificates(tmp_path: Path, stub_bin: Path) -> None:
    res = _run([str(DEPLOY / "start_superlink.sh"), "--state", str(tmp_path / "s")], stub_bin)
    assert res.returncode == 2 and "--certs DIR is required" in res.stderr


@pytest.mark.parametrize("script", ["start_superlink.sh", "start_site.sh"])
def test_insecure_mode_needs_the_flag_and_warns(tmp_path: Path, stub_bin: Path,
                                                script: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    args = (["--state", str(tmp_path / "s")] if script == "start_superlink.sh" else
            ["--superlink", "127.0.0.1:1", "--site-dir", str(site), "--executor", "flower"])
    res = _run([str(DEPLOY / script), *args, "--insecure"], stub_bin)
    assert res.returncode == 0, res.stderr
    assert "WARNING: INSECURE MODE" in res.stderr and " --insecure" in res.stdout


def test_site_uses_its_key_the_ca_and_its_site_folder(tmp_path: Path, stub_bin: Path) -> None:
    site = tmp_path / "hospital a"  # a space in the path survives
    site.mkdir()
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "node_key").write_text("x")
    res = _run([str(DEPLOY / "start_site.sh"), "--superlink", "127.0.0.1:1", "--ca",
                str(tmp_path / "ca.crt"), "--key", str(tmp_path / "node_key"), "--site-dir",
                str(site), "--executor", "flower"], stub_bin)
    assert res.returncode == 0, res.stderr
    assert f"--root-certificates {tmp_path}/ca.crt" in res.stdout
    assert f"--auth-supernode-private-key {tmp_path}/node_key" in res.stdout
    assert f"site-dir='{site}'" in res.stdout and "--insecure" not in res.stdout
    missing = _run([str(DEPLOY / "start_site.sh"), "--superlink", "127.0.0.1:1", "--site-dir",
                    str(site)], stub_bin)
    assert missing.returncode == 2 and "--ca and --key are required" in missing.stderr


def test_researcher_config_names_the_ca(tmp_path: Path, stub_bin: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    res = _run([str(DEPLOY / "flwr_home.sh"), str(tmp_path / "home"), "hospitals",
                "127.0.0.1:9092", str(tmp_path / "ca.crt")], stub_bin)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "home" / "config.toml").read_text()
    assert 'address = "127.0.0.1:9092"' in text
    assert f'root-certificates = "{tmp_path}/ca.crt"' in text and "insecure" not in text


def test_site_names_its_own_device(tmp_path: Path, stub_bin: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    base = [str(DEPLOY / "start_site.sh"), "--insecure", "--superlink", "127.0.0.1:1",
            "--site-dir", str(site), "--executor", "flower"]
    res = _run([*base, "--device", "cuda:1"], stub_bin)
    assert res.returncode == 0, res.stderr
    assert "device='cuda:1'" in res.stdout
    bad = _run([*base, "--device", "gpu"], stub_bin)
    assert bad.returncode != 0 and "--device must be" in bad.stderr


def test_trusted_entities_need_the_sites_executor_and_an_existing_file(
    tmp_path: Path, stub_bin: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "trusted.yaml").write_text("k: 'ssh-ed25519 AAAA'\n")
    base = [str(DEPLOY / "start_site.sh"), "--insecure", "--superlink", "127.0.0.1:1",
            "--site-dir", str(site)]
    flower = _run([*base, "--executor", "flower", "--trusted-entities",
                   str(tmp_path / "trusted.yaml")], stub_bin)
    assert flower.returncode == 2 and "needs the site's executor" in flower.stderr
    missing = _run([*base, "--trusted-entities", str(tmp_path / "nope.yaml")], stub_bin)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
