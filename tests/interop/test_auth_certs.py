"""Client certificates end to end with curl --proxy-cert to the TLS listener: a
valid, an expired, a CRL-revoked and an unknown-CA certificate; optional
falling back to htpasswd, required refusing; a certificate user's table."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import trustme

from ..clientcerts import make_client_certs
from ..conftest import wait_until
from ..unit.test_auth import bcrypt_line

pytestmark = pytest.mark.timeout(90)

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(client_ca, tmp_path):
    return make_client_certs(client_ca, tmp_path)


def curl_cert(proxy, ca_file, url: str, cert: tuple[str, str] | None, *extra: str) -> subprocess.CompletedProcess:
    command = ["curl", "-sS", "--max-time", "20", "--proxy", f"https://127.0.0.1:{proxy.port}"]
    command += ["--proxy-cacert", str(ca_file), "--cacert", str(ca_file)]
    if cert is not None:
        command += ["--proxy-cert", cert[0], "--proxy-key", cert[1]]
    return subprocess.run([*command, *extra, url], capture_output=True, text=True, timeout=30)


@pytest.fixture
def htpasswd(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "pw") + "\n")
    return path


@needs_curl
def test_certificates_name_the_user_or_fail_the_handshake(start_tls_proxy, certs, htpasswd, tls_server, ca_file):
    proxy = start_tls_proxy(
        "--tls-client-ca", certs["ca"], "--tls-client-crl", certs["crl"], "--auth-file", str(htpasswd)
    )
    url = f"https://tls.test:{tls_server.port}/"
    ok = curl_cert(proxy, ca_file, url, certs["valid"])
    assert ok.returncode == 0 and ok.stdout == "hello over tls\n", ok.stderr
    line = proxy.wait_access("user=svc-a ")
    assert "status=200" in line and " auth=cert" in line
    for name in ("expired", "revoked", "unknown"):
        refused = curl_cert(proxy, ca_file, url, certs[name])
        assert refused.returncode != 0, (name, refused.stdout)
    assert tls_server.accepted == 1
    wait_until(lambda: sum("reason=tls_handshake" in line for line in proxy.access_lines()) == 3)
    # Without a certificate (optional): the next provider decides.
    fallback = curl_cert(proxy, ca_file, url, None, "--proxy-user", "alice:pw")
    assert fallback.returncode == 0 and fallback.stdout == "hello over tls\n", fallback.stderr
    assert " auth=htpasswd" in proxy.wait_access("user=alice ")
    denied = curl_cert(proxy, ca_file, url, None)
    assert denied.returncode != 0 and "407" in denied.stderr


@needs_curl
def test_required_refuses_a_client_without_a_certificate(start_tls_proxy, certs, tls_server, ca_file):
    proxy = start_tls_proxy("--tls-client-ca", certs["ca"], "--tls-client-cert", "required")
    url = f"https://tls.test:{tls_server.port}/"
    assert curl_cert(proxy, ca_file, url, None).returncode != 0
    ok = curl_cert(proxy, ca_file, url, certs["valid"])
    assert ok.returncode == 0 and ok.stdout == "hello over tls\n", ok.stderr
    assert tls_server.accepted == 1


@needs_curl
def test_a_certificate_users_table_applies_to_them(start_tls_proxy, certs, tls_server, ca_file, tmp_path):
    config = tmp_path / "gconnect.toml"
    config.write_text('[users.svc-a]\nallow-port = ["1"]\n')
    proxy = start_tls_proxy("--config", str(config), "--tls-client-ca", certs["ca"])
    refused = curl_cert(proxy, ca_file, f"https://tls.test:{tls_server.port}/", certs["valid"])
    assert refused.returncode != 0 and "403" in refused.stderr
    line = proxy.wait_access("status=403")
    assert "user=svc-a " in line and " auth=cert" in line
