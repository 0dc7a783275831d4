"""Proxy authentication with a real client: curl's --proxy-user."""

from __future__ import annotations

import subprocess

import pytest

from ..e2e.test_auth import auth_proxy, htpasswd  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.timeout(90)


def test_curl_proxy_user(auth_proxy, tls_server, ca_file):  # noqa: F811
    url = f"https://tls.test:{tls_server.port}/"
    common = [
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        str(ca_file),
        "--proxy",
        f"http://127.0.0.1:{auth_proxy.port}",
    ]
    ok = subprocess.run([*common, "--proxy-user", "alice:wonderland", url], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "hello over tls\n"
    refused = subprocess.run([*common, "--proxy-user", "alice:x", url], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "407" in refused.stderr
