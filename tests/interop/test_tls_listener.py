"""The TLS listener with a real client: curl's --proxy https://."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.timeout(90)


def curl_via(proxy, ca_file, url: str, *extra: str) -> subprocess.CompletedProcess:
    """curl *url* through *proxy* spoken to over TLS (curl --proxy https://)."""
    command = ["curl", "-sS", "--max-time", "20", "--proxy", f"https://127.0.0.1:{proxy.port}"]
    command += ["--proxy-cacert", str(ca_file), "--cacert", str(ca_file), *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_curl_through_an_https_proxy(start_tls_proxy, tls_server, ca_file):
    proxy = start_tls_proxy()
    result = curl_via(proxy, ca_file, f"https://tls.test:{tls_server.port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello over tls\n"
    line = proxy.wait_access(f"target=tls.test:{tls_server.port}")
    assert "status=200" in line


def test_curl_https_proxy_with_auth(start_proxy, proxy_cert, tls_server, ca_file, tmp_path):
    import bcrypt

    path = tmp_path / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    proxy = start_proxy("--tls-cert", proxy_cert[0], "--tls-key", proxy_cert[1], "--auth-file", str(path))
    url = f"https://tls.test:{tls_server.port}/"
    ok = curl_via(proxy, ca_file, url, "--proxy-user", "alice:pw")
    assert ok.returncode == 0 and ok.stdout == "hello over tls\n", ok.stderr
    denied = curl_via(proxy, ca_file, url)
    assert denied.returncode != 0 and "407" in denied.stderr
    assert "user=alice " in proxy.wait_access("status=200")
