"""The TLS name check with clients that are programs of their own, through
the real CLI to an HTTPS origin on loopback: openssl s_client naming another
server, none, or the CONNECT host; curl, also with --connect-to sending
another name; Chromium over a plain proxy and over an HTTPS proxy (HTTP/2)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ..conftest import chromium_command
from ..e2e.test_tls_name_check import check_proxy, names, origin  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.timeout(90)

NEEDS_OPENSSL = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
NEEDS_CURL = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")


def s_client(proxy, target: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "s_client", "-proxy", f"127.0.0.1:{proxy.port}", "-connect", target, *args],
        input=stdin,
        capture_output=True,
        timeout=30,
    )


@NEEDS_OPENSSL
def test_openssl_other_name_is_closed_with_an_alert(start_proxy, names, origin, ca_file):  # noqa: F811
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    target = f"allowed.test:{origin.port}"
    done = s_client(proxy, target, "-servername", "other.test", "-CAfile", str(ca_file))
    assert done.returncode != 0
    assert b"unrecognized name" in done.stderr + done.stdout
    line = proxy.wait_access("sni_check=")
    assert "status=200" in line and "reason=tls_name_refused" in line
    assert " sni=other.test sni_check=mismatch" in line
    assert origin.accepted == 1  # dialled before the 200, then closed without a byte


@NEEDS_OPENSSL
def test_openssl_without_server_name_is_closed(start_proxy, names, origin, ca_file):  # noqa: F811
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    done = s_client(proxy, f"allowed.test:{origin.port}", "-noservername", "-CAfile", str(ca_file))
    assert done.returncode != 0
    assert " sni=- sni_check=no_sni" in proxy.wait_access("sni_check=")


@NEEDS_OPENSSL
def test_openssl_matching_name_passes(start_proxy, names, origin, ca_file):  # noqa: F811
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    target = f"allowed.test:{origin.port}"
    done = s_client(
        proxy,
        target,
        "-servername",
        "Allowed.Test.",
        "-CAfile",
        str(ca_file),
        "-quiet",
        stdin=b"GET / HTTP/1.0\r\n\r\n",
    )
    assert done.stdout.endswith(b"origin"), done
    assert " sni=allowed.test sni_check=match" in proxy.wait_access("sni_check=")


@NEEDS_CURL
def test_curl_through_the_check(start_proxy, names, origin, ca_file):  # noqa: F811
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    url = f"https://allowed.test:{origin.port}/"
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(ca_file), "-x", f"http://127.0.0.1:{proxy.port}", url],
        capture_output=True,
        timeout=30,
    )
    assert done.stdout == b"origin", done.stderr
    assert "sni=allowed.test sni_check=match" in proxy.wait_access("sni_check=")
    # --connect-to: CONNECT allowed.test, while the ClientHello names other.test.
    other = f"https://other.test:{origin.port}/"
    command = ["curl", "-sS", "--max-time", "20", "--cacert", str(ca_file), "-x", f"http://127.0.0.1:{proxy.port}"]
    done = subprocess.run(
        [*command, "--connect-to", f"other.test:{origin.port}:allowed.test:{origin.port}", other],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 35 and b"unrecognized name" in done.stderr, done.stderr
    assert "target=allowed.test" in proxy.wait_access("sni=other.test sni_check=mismatch")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
@pytest.mark.parametrize("listener", ["http", "https"])
def test_chromium_passes_the_check(start_proxy, start_tls_proxy, names, origin, tmp_path, listener):  # noqa: F811
    # Chromium's own ClientHello: GREASE, an X25519MLKEM768 key share, a GREASE ECH extension;
    # over an HTTPS proxy it opens its tunnels as HTTP/2 streams.
    start = start_tls_proxy if listener == "https" else start_proxy
    proxy = check_proxy(start, origin.port, "enforce")
    command = chromium_command(
        tmp_path / "profile",
        f"--proxy-server={listener}://127.0.0.1:{proxy.port}",
        "--ignore-certificate-errors",
        "--dump-dom",
        f"https://allowed.test:{origin.port}/",
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert "origin" in result.stdout, result.stderr[-2000:]
    line = proxy.wait_access("sni=allowed.test sni_check=match")
    assert "status=200" in line and "reason=tls_name_refused" not in line
    assert (" proto=h2 " in line) == (listener == "https")
