"""Real clients nobody here wrote, through the real proxy: curl, http.client,
urllib3, httpx, and a TLS handshake over a raw tunnel."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess

import httpx
import pytest
import urllib3

from ..conftest import echo_handler, open_tunnel

pytestmark = pytest.mark.timeout(60)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")
def test_curl_fetches_https_page_through_proxy(proxy, tls_server, ca_file):
    url = f"https://tls.test:{tls_server.port}/"
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(ca_file), "-x", f"http://127.0.0.1:{proxy.port}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello over tls\n"
    line = proxy.wait_access(f"target=tls.test:{tls_server.port}")
    assert "status=200" in line and f"addr=127.0.0.1:{tls_server.port}" in line


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")
def test_curl_proxytunnel_plain_http(proxy, upstream_factory):
    def http_handler(conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nplain\n")

    web = upstream_factory(http_handler)
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-p", "-x", f"127.0.0.1:{proxy.port}", f"http://web.test:{web.port}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "plain\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")
def test_curl_sees_403_for_denied_port(start_proxy, tls_server, ca_file, dns_server):
    # Default policy: only port 443, and loopback only because we allow it here.
    strict = start_proxy(
        "--listen",
        "127.0.0.1:0",
        "--allow-dest",
        "127.0.0.0/8",
        "--dns-server",
        dns_server.address,
        defaults=False,
    )
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            str(ca_file),
            "-x",
            f"http://127.0.0.1:{strict.port}",
            f"https://127.0.0.1:{tls_server.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "403" in out.stderr
    assert tls_server.accepted == 0


def test_http_client_set_tunnel(proxy, tls_server, ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=20)
    conn.set_tunnel("tls.test", tls_server.port)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b"hello over tls\n"
    conn.close()


def test_urllib3_proxy_manager(proxy, tls_server, ca_file):
    manager = urllib3.ProxyManager(f"http://127.0.0.1:{proxy.port}", ca_certs=str(ca_file), timeout=20, retries=False)
    response = manager.request("GET", f"https://tls.test:{tls_server.port}/")
    assert response.status == 200
    assert response.data == b"hello over tls\n"


def test_httpx_through_proxy(proxy, tls_server, ca_file):
    context = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy.port}", verify=context, timeout=20) as client:
        response = client.get(f"https://tls.test:{tls_server.port}/")
    assert response.status_code == 200
    assert response.text == "hello over tls\n"


def test_tls_handshake_over_raw_tunnel(proxy, tls_server, ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    sock = open_tunnel(proxy, f"tls.test:{tls_server.port}")
    with context.wrap_socket(sock, server_hostname="tls.test") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: tls.test\r\n\r\n")
        data = b""
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.endswith(b"hello over tls\n")


def test_tunnel_to_ipv6_literal(proxy, upstream_factory):
    from ..conftest import HAVE_IPV6

    if not HAVE_IPV6:
        pytest.skip("no IPv6 loopback")
    server = upstream_factory(echo_handler, host="::1")
    with open_tunnel(proxy, f"[::1]:{server.port}") as sock:
        sock.sendall(b"over v6")
        assert sock.recv(100) == b"over v6"
    proxy.wait_access(f"addr=[::1]:{server.port}")
