"""HTTP/2 on the TLS listener with real clients: Chromium and curl --proxy-http2."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile

import pytest

from ..conftest import read_head

pytestmark = pytest.mark.timeout(90)


def _curl_has_proxy_http2() -> bool:
    try:
        return "--proxy-http2" in subprocess.run(["curl", "--help", "all"], capture_output=True, text=True).stdout
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_chromium_loads_a_page_through_h2_tunnels(start_tls_proxy, upstream_factory, ca, tmp_path):
    cert = ca.issue_cert("tls.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    pages: dict[str, bytes] = {}

    def handler(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            request, _ = read_head(tls)
            if not request:
                return
            path = request.split(b" ")[1].decode()
            body = pages.get(path, b"")  # /favicon.ico: 404
            kind = "text/javascript" if path.endswith(".js") else "text/html"
            status = "200 OK" if path in pages else "404 Not Found"
            head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            tls.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)

    web, scripts = upstream_factory(handler), upstream_factory(handler)
    # Two origins: two tunnels, which Chromium opens as two streams of one connection.
    pages["/app.js"] = b'document.write("<p id=script>script through a second tunnel</p>");'
    script = f"https://tls.test:{scripts.port}/app.js"
    pages["/"] = (
        f'<html><head><script src="{script}"></script></head><body><p>hello through h2</p></body></html>'.encode()
    )
    proxy = start_tls_proxy()
    # tls.test is in the proxy's hosts file: Chromium resolves nothing itself behind a proxy.
    command = [
        *("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
        f"--proxy-server=https://127.0.0.1:{proxy.port}",
        "--ignore-certificate-errors",
        "--dump-dom",
        f"https://tls.test:{web.port}/",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert "hello through h2" in result.stdout, result.stderr[-2000:]
    assert "script through a second tunnel" in result.stdout, result.stdout
    html_line = proxy.wait_access(f"target=tls.test:{web.port}")
    js_line = proxy.wait_access(f"target=tls.test:{scripts.port}")
    for line in (html_line, js_line):
        assert "status=200" in line and " proto=h2 stream=" in line
    assert html_line.split()[1] == js_line.split()[1]  # client=IP:PORT: one connection for both tunnels


@pytest.mark.skipif(not _curl_has_proxy_http2(), reason="curl older than 8.1 has no --proxy-http2")
def test_curl_proxy_http2(start_tls_proxy, tls_server, ca_file):
    proxy = start_tls_proxy()
    command = ["curl", "-sS", "--max-time", "20", "--proxy", f"https://127.0.0.1:{proxy.port}", "--proxy-http2"]
    command += ["--proxy-cacert", str(ca_file), "--cacert", str(ca_file), f"https://tls.test:{tls_server.port}/"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "hello over tls\n", result.stderr
    assert " proto=h2 " in proxy.wait_access(f"target=tls.test:{tls_server.port}")
