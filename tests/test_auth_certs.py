"""Client certificates on the TLS listener: the name read from a verified
certificate (CN, OU, SAN URI), and end to end with curl --proxy-cert (valid,
expired, revoked by the CRL, from an unknown CA; none at all, optional and
required) and with an HTTP/2 client whose every stream carries the identity."""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gconnect.auth.certs import CertProvider, user_from_cert
from gconnect.config import Config

from .conftest import wait_until
from .h2client import H2Client
from .test_auth import bcrypt_line

pytestmark = pytest.mark.timeout(90)

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")

PEER = {
    "subject": (
        (("countryName", "XX"),),
        (("organizationName", "Corp"),),
        (("organizationalUnitName", "staff"),),
        (("organizationalUnitName", "second"),),
        (("commonName", "svc-a"),),
    ),
    "subjectAltName": (("DNS", "svc-a.test"), ("URI", "spiffe://corp.test/ns/web/sa/svc-a"), ("URI", "https://x")),
}


# Reading the name


@pytest.mark.parametrize(
    ("how", "user"), [("cn", "svc-a"), ("ou", "staff"), ("uri", "spiffe://corp.test/ns/web/sa/svc-a")]
)
def test_the_user_comes_from_the_configured_part(how, user):
    assert user_from_cert(PEER, how) == user


def test_no_certificate_or_no_such_name_is_none():
    assert user_from_cert(None, "cn") is None
    assert user_from_cert({}, "cn") is None
    assert user_from_cert({"subject": ((("commonName", "x"),),)}, "uri") is None
    assert user_from_cert({"subject": ((("organizationName", "Corp"),),)}, "ou") is None


def test_the_ou_is_the_group_unless_it_is_the_user(tmp_path):
    base = {"tls_cert": "c", "tls_key": "k", "tls_client_ca": "ca"}
    identity = CertProvider(Config(**base, tls_client_identity="uri")).identify_peer(PEER)
    assert (identity.user, identity.provider, identity.group) == ("spiffe://corp.test/ns/web/sa/svc-a", "cert", "staff")
    identity = CertProvider(Config(**base, tls_client_identity="ou")).identify_peer(PEER)
    assert (identity.user, identity.group) == ("staff", None)
    assert CertProvider(Config(**base)).identify_peer({}) is None


# End to end


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


def write_leaf(leaf: trustme.LeafCert, path) -> tuple[str, str]:
    cert, key = path.with_suffix(".pem"), path.with_suffix(".key")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture
def certs(client_ca, tmp_path):
    """The client CA bundle, a CRL revoking one certificate, and client certificates."""
    now = datetime.datetime.now(datetime.timezone.utc)
    made = {
        "valid": client_ca.issue_cert("svc-a.test", common_name="svc-a", organization_unit_name="staff"),
        "revoked": client_ca.issue_cert("svc-r.test", common_name="svc-r"),
        "expired": client_ca.issue_cert(
            "svc-e.test",
            common_name="svc-e",
            not_before=now - datetime.timedelta(days=10),
            not_after=now - datetime.timedelta(days=1),
        ),
        "unknown": trustme.CA().issue_cert("svc-u.test", common_name="svc-u"),
    }
    paths = {name: write_leaf(leaf, tmp_path / name) for name, leaf in made.items()}
    ca_path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    ca_key = serialization.load_pem_private_key(client_ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(client_ca.cert_pem.bytes())
    revoked_serial = x509.load_pem_x509_certificate(made["revoked"].cert_chain_pems[0].bytes()).serial_number
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(revoked_serial).revocation_date(now).build()
        )
        .sign(ca_key, hashes.SHA256())
    )
    crl_path = tmp_path / "client-ca.crl"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return {"ca": str(ca_path), "crl": str(crl_path), **paths}


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


def test_every_http2_stream_carries_the_connections_certificate(start_tls_proxy, certs, ca, echo):
    proxy = start_tls_proxy("--tls-client-ca", certs["ca"], "--tls-client-identity", "ou")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.load_cert_chain(*certs["valid"])
    client = H2Client((proxy.host, proxy.port), context)
    try:
        streams = [client.connect(echo.target) for _ in range(3)]
        client.wait(lambda: all(s in client.responses for s in streams))
        assert [client.status(s) for s in streams] == [200, 200, 200]
    finally:
        client.close()
    lines = [proxy.wait_access(f"stream={s}") for s in streams]
    assert all("user=staff " in line and " auth=cert" in line for line in lines), lines


@needs_curl
def test_a_certificate_users_table_applies_to_them(start_tls_proxy, certs, tls_server, ca_file, tmp_path):
    config = tmp_path / "gconnect.toml"
    config.write_text('[users.svc-a]\nallow-port = ["1"]\n')
    proxy = start_tls_proxy("--config", str(config), "--tls-client-ca", certs["ca"])
    refused = curl_cert(proxy, ca_file, f"https://tls.test:{tls_server.port}/", certs["valid"])
    assert refused.returncode != 0 and "403" in refused.stderr
    line = proxy.wait_access("status=403")
    assert "user=svc-a " in line and " auth=cert" in line
