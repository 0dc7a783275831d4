"""Signed tokens end to end with curl: ``-U user:<token>`` and ``--proxy-header
"Proxy-Authorization: Bearer …"``, refused (407) when expired, for another
audience, signed by another key or with ``alg=none``; the JWKS file reloaded on
SIGHUP; a token user's [users.NAME] table; the JSON access log's provider."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from ..conftest import wait_until
from ..unit.test_auth_tokens import AUDIENCE, ISSUER, Keys, unsigned

pytestmark = pytest.mark.timeout(90)

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")


def curl(proxy, ca_file, url: str, *extra: str) -> subprocess.CompletedProcess:
    command = ["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(ca_file)]
    return subprocess.run([*command, *extra, url], capture_output=True, text=True, timeout=30)


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path / "jwks.json")


@pytest.fixture
def jwt_proxy(start_proxy, keys):
    return start_proxy("--auth-jwks", str(keys.path), "--auth-jwt-issuer", ISSUER, "--auth-jwt-audience", AUDIENCE)


@needs_curl
def test_curl_with_a_token_as_basic_password_and_as_bearer(jwt_proxy, keys, tls_server, ca_file):
    url = f"https://tls.test:{tls_server.port}/"
    as_basic = curl(jwt_proxy, ca_file, url, "-U", f"apt:{keys.token()}")
    assert as_basic.returncode == 0 and as_basic.stdout == "hello over tls\n", as_basic.stderr
    as_bearer = curl(
        jwt_proxy, ca_file, url, "--proxy-header", f"Proxy-Authorization: Bearer {keys.token(sub='svc-b')}"
    )
    assert as_bearer.returncode == 0 and as_bearer.stdout == "hello over tls\n", as_bearer.stderr
    assert " auth=jwt" in jwt_proxy.wait_access("user=svc-a ")
    assert " auth=jwt" in jwt_proxy.wait_access("user=svc-b ")


@needs_curl
@pytest.mark.parametrize(
    "make",
    [
        lambda k: k.token(exp=int(time.time()) - 120),
        lambda k: k.token(aud="another-proxy"),
        lambda k: k.token(k.other),
        lambda k: unsigned(),
    ],
    ids=["expired", "wrong-audience", "wrong-key", "alg-none"],
)
def test_curl_with_a_bad_token_gets_407(jwt_proxy, keys, tls_server, ca_file, make):
    url = f"https://tls.test:{tls_server.port}/"
    token = make(keys)
    for extra in (["-U", f"apt:{token}"], ["--proxy-header", f"Proxy-Authorization: Bearer {token}"]):
        result = curl(jwt_proxy, ca_file, url, *extra)
        assert result.returncode != 0 and "407" in result.stderr, result.stderr
    assert tls_server.accepted == 0


@needs_curl
def test_sighup_reloads_the_jwks_file(jwt_proxy, keys, tls_server, ca_file):
    url = f"https://tls.test:{tls_server.port}/"
    rotated = keys.token(keys.other, kid="rsa-2")
    assert "407" in curl(jwt_proxy, ca_file, url, "-U", f"apt:{rotated}").stderr
    keys.write(("rsa-2", keys.other))
    jwt_proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("reloaded: 1 keys" in line for line in jwt_proxy.lines))
    result = curl(jwt_proxy, ca_file, url, "-U", f"apt:{rotated}")
    assert result.returncode == 0 and result.stdout == "hello over tls\n", result.stderr


@needs_curl
def test_a_token_users_table_applies_to_them(start_proxy, keys, tls_server, ca_file, tmp_path):
    config = tmp_path / "gconnect.toml"
    config.write_text('[users.svc-b]\nallow-port = ["1"]\n')
    proxy = start_proxy(
        "--config",
        str(config),
        "--auth-jwks",
        str(keys.path),
        "--auth-jwt-issuer",
        ISSUER,
        "--auth-jwt-audience",
        AUDIENCE,
        "--log-format",
        "json",
    )
    url = f"https://tls.test:{tls_server.port}/"
    assert curl(proxy, ca_file, url, "-U", f"apt:{keys.token()}").returncode == 0
    refused = curl(proxy, ca_file, url, "-U", f"apt:{keys.token(sub='svc-b')}")
    assert refused.returncode != 0 and "403" in refused.stderr
    wait_until(lambda: len([json.loads(x) for x in proxy.access_lines() if '"event":"close"' in x]) == 2)
    records = [json.loads(line) for line in proxy.access_lines() if '"event":"close"' in line]
    assert {(r["user"], r["status"], r["auth"]) for r in records} == {("svc-a", 200, "jwt"), ("svc-b", 403, "jwt")}
