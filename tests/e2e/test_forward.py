"""Plain http:// forwarding end to end: the CLI in a subprocess, real clients
(curl, urllib3, httpx, raw sockets) and origins on loopback that parse with
h11 or record the exact bytes they were sent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import h11
import httpx
import pytest
import urllib3

from ..conftest import ProxyProcess, exchange
from ..origins import Seen, h11_origin, recording_handler

pytestmark = pytest.mark.timeout(60)

# The tests' proxies allow loopback destinations on any port, for CONNECT and forwarding alike.
FORWARD_ANY_PORT = ("--forward-port", "1-65535")


@pytest.fixture
def fwd(start_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    return start_proxy(*FORWARD_ANY_PORT)


def curl(proxy: ProxyProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    cmd = ["curl", "-sS", "--max-time", "20", "-x", f"http://{proxy.host}:{proxy.port}", *args]
    return subprocess.run(cmd, capture_output=True, check=check, env=env, timeout=30)


def read_responses(sock: socket.socket, methods: list[bytes]) -> list[tuple[h11.Response, bytes]]:
    """Read one response per request method from *sock*, with h11."""
    conn = h11.Connection(h11.CLIENT)
    out = []
    for method in methods:
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        response, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        out.append((response, body))
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    return out


# --- real clients ------------------------------------------------------------------


def test_curl_get_head_post_chunked_and_expect(fwd: ProxyProcess, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    url = f"http://127.0.0.1:{origin.port}/path?q=1"
    got = json.loads(curl(fwd, url).stdout)
    assert got["method"] == "GET" and got["target"] == "/path?q=1"
    names = [name.lower() for name, _ in got["headers"]]
    assert "proxy-connection" not in names and ["via", "1.1 gconnect"] in [[n.lower(), v] for n, v in got["headers"]]
    head = curl(fwd, "-I", url).stdout
    assert head.startswith(b"HTTP/1.1 200 \r\n") and b"Content-Length: " in head
    body = os.urandom(300_000)
    got = json.loads(_post(fwd, url, body))
    assert got["length"] == len(body) and got["sha256"] == hashlib.sha256(body).hexdigest()
    # A chunked upload, and Expect: 100-continue (curl sends it for bodies over 1 MiB).
    big = os.urandom(1_500_000)
    got = json.loads(_post(fwd, url, big, "-H", "Transfer-Encoding: chunked"))
    assert got["length"] == len(big) and ["transfer-encoding", "chunked"] in [[n.lower(), v] for n, v in got["headers"]]
    result = _post(fwd, url, big, "-H", "Expect: 100-continue", "-v", raw=True)
    assert b"< HTTP/1.1 100 \r\n" in result.stderr, result.stderr
    assert json.loads(result.stdout)["sha256"] == hashlib.sha256(big).hexdigest()
    assert not origin.errors


def _post(proxy: ProxyProcess, url: str, body: bytes, *args: str, raw: bool = False):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    cmd = [
        "curl",
        "-sS",
        "--max-time",
        "20",
        "-x",
        f"http://{proxy.host}:{proxy.port}",
        "--data-binary",
        "@-",
        *args,
        url,
    ]
    result = subprocess.run(cmd, input=body, capture_output=True, check=True, env=env, timeout=30)
    return result if raw else result.stdout


def test_urllib3_and_httpx(fwd: ProxyProcess, upstream_factory) -> None:
    origin, seen = h11_origin(upstream_factory)
    url = f"http://127.0.0.1:{origin.port}/x"
    with urllib3.ProxyManager(f"http://{fwd.host}:{fwd.port}") as manager:
        for _ in range(3):
            response = manager.request("POST", url, body=b"abc")
            assert response.status == 200 and response.json()["length"] == 3
    with httpx.Client(proxy=f"http://{fwd.host}:{fwd.port}") as client:
        response = client.get(f"http://127.0.0.1:{origin.port}/bytes/1000000")
        assert response.status_code == 200 and response.content == (bytes(range(256)) * 256 * 16)[:1_000_000]
        assert response.headers["via"] == "1.1 gconnect"
    # urllib3's three requests shared one client connection, and one origin connection.
    assert [r["request_on_connection"] for r in seen.requests[:3]] == [1, 2, 3]


def test_pipelined_requests_answered_in_order(fwd: ProxyProcess, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    host = f"127.0.0.1:{origin.port}"
    raw = b"".join(
        f"{method} http://{host}/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        for i, method in enumerate(["GET", "HEAD", "GET", "GET"])
    )
    with fwd.connect() as sock:
        sock.settimeout(10)
        sock.sendall(raw)
        responses = read_responses(sock, [b"GET", b"HEAD", b"GET", b"GET"])
    assert [json.loads(body)["target"] for _, body in (responses[0], responses[2], responses[3])] == ["/0", "/2", "/3"]
    assert responses[1][1] == b""


def test_connect_after_forwarded_request_on_one_connection(start_proxy, upstream_factory, echo) -> None:
    proxy = start_proxy(*FORWARD_ANY_PORT, "--header-timeout", "1")
    origin, _ = h11_origin(upstream_factory)
    host = f"127.0.0.1:{origin.port}"
    with proxy.connect() as sock:
        sock.settimeout(10)
        sock.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert read_responses(sock, [b"GET"])[0][0].status_code == 200
        # Past the first head's deadline: the CONNECT's head has a deadline of its own.
        time.sleep(1.2)
        sock.sendall(f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\nping".encode())
        data = b""
        while not data.endswith(b"ping"):
            data += sock.recv(100)
        assert data.startswith(b"HTTP/1.1 200 ")


def test_forwarding_off_is_405(start_proxy, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    proxy = start_proxy("--forward-http", "off")
    status, headers, _ = exchange(proxy, f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 405 and headers["allow"] == "CONNECT" and origin.accepted == 0


def test_origin_form_is_404(fwd: ProxyProcess) -> None:
    status, headers, _ = exchange(fwd, b"GET /anything HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert status == 404 and "proxy-status" in headers


def test_proxy_pac(start_proxy) -> None:
    proxy = start_proxy(*FORWARD_ANY_PORT, "--proxy-pac", "--allow-host", ".corp.test")
    status, headers, body = exchange(
        proxy, b"GET /proxy.pac HTTP/1.1\r\nHost: proxy.test:3128\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and headers["content-type"] == "application/x-ns-proxy-autoconfig"
    assert b'"PROXY proxy.test:3128"' in body and b'dnsDomainIs(host, ".corp.test")' in body


# --- the exact bytes an origin receives ----------------------------------------------


def test_hop_by_hop_fields_removed_and_host_from_the_uri(fwd: ProxyProcess, upstream_factory) -> None:
    seen = Seen()
    origin = upstream_factory(recording_handler(seen, b"HTTP/1.1 204 No Content\r\n\r\n"))
    host = f"127.0.0.1:{origin.port}"
    raw = (
        f"GET http://{host}/a%20b?c HTTP/1.1\r\nHost: {host}\r\n"
        "Connection: keep-alive, Connection, X-Hop, Content-Length\r\nX-Hop: secret\r\nKeep-Alive: 300\r\n"
        "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic dTpw\r\nTE: trailers\r\nTrailer: X-T\r\n"
        "X-End: 1\r\n\r\n"
    ).encode()
    status, _, _ = _one(fwd, raw)
    assert status == 204
    assert seen.raw == [f"GET /a%20b?c HTTP/1.1\r\nHost: {host}\r\nX-End: 1\r\nVia: 1.1 gconnect\r\n\r\n".encode()]


def _one(proxy: ProxyProcess, raw: bytes) -> tuple[int, dict, bytes]:
    with proxy.connect() as sock:
        sock.settimeout(10)
        sock.sendall(raw)
        response, body = read_responses(sock, [b"GET"])[0]
    return response.status_code, dict(response.headers), body


def test_forwarded_for_and_via_name(start_proxy, upstream_factory) -> None:
    proxy = start_proxy(*FORWARD_ANY_PORT, "--forwarded-for", "--via-name", "edge-7")
    seen = Seen()
    origin = upstream_factory(recording_handler(seen, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    host = f"127.0.0.1:{origin.port}"
    status, headers, body = _one(proxy, f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert (status, body) == (200, b"ok") and headers[b"via"] == b"1.1 edge-7"
    assert seen.raw[0].endswith(b"Via: 1.1 edge-7\r\nForwarded: for=127.0.0.1\r\n\r\n")


SMUGGLING = {
    "te_and_cl": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "te_not_final": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "cl_space_before_colon": b"Content-Length : 4\r\n\r\nabcd",
    "cl_twice": b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "obs_fold": b"X-A: 1\r\n folded\r\n\r\n",
    "bare_lf": b"X-A: 1\n\r\n",
    "two_hosts": b"Host: other.test\r\n\r\n",
    "nul": b"X-A: a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_request_refused_and_nothing_sent(fwd: ProxyProcess, upstream_factory, case: str) -> None:
    seen = Seen()
    origin = upstream_factory(recording_handler(seen, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    host = f"127.0.0.1:{origin.port}"
    raw = f"POST http://{host}/ HTTP/1.1\r\nHost: {host}\r\n".encode() + SMUGGLING[case]
    status, headers, _ = exchange(fwd, raw)
    assert status == 400 and headers["proxy-status"].startswith("gconnect; error=http_request_error")
    assert origin.accepted == 0


def test_chunked_any_case_is_recognised_and_rechunked(fwd: ProxyProcess, upstream_factory) -> None:
    seen = Seen()
    origin = upstream_factory(
        recording_handler(seen, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", until=b"0\r\n\r\n")
    )
    host = f"127.0.0.1:{origin.port}"
    raw = (
        f"POST http://{host}/ HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: ChUnKeD\r\n\r\n"
        "3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
        f"GET http://{host}/smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
    ).encode()
    with fwd.connect() as sock:
        sock.settimeout(10)
        sock.sendall(raw)
        assert read_responses(sock, [b"POST"])[0][0].status_code == 200
    assert (
        seen.raw[0]
        == (
            f"POST / HTTP/1.1\r\nHost: {host}\r\nVia: 1.1 gconnect\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n0\r\n\r\n"
        ).encode()
    )


BAD_RESPONSES = {
    "te_and_cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "cl_space_before_colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "cl_twice": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    "obs_fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
    "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "te_gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(BAD_RESPONSES))
def test_malformed_response_is_502(fwd: ProxyProcess, upstream_factory, case: str) -> None:
    origin = upstream_factory(recording_handler(Seen(), BAD_RESPONSES[case]))
    host = f"127.0.0.1:{origin.port}"
    status, headers, _ = exchange(fwd, f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert status == 502 and "error=http_protocol_error" in headers["proxy-status"]
    assert "reason=bad_response" in fwd.wait_access(f"target={host}")


# --- policy --------------------------------------------------------------------------


def test_private_address_refused_by_default(start_proxy, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    proxy = start_proxy("--listen", "127.0.0.1:0", "--forward-port", "1-65535", defaults=False)
    target = f"127.0.0.1:{origin.port}"
    status, headers, _ = exchange(proxy, f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert status == 403 and "destination_ip_prohibited" in headers["proxy-status"] and origin.accepted == 0


def test_port_80_only_by_default(start_proxy, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    proxy = start_proxy()
    target = f"127.0.0.1:{origin.port}"
    status, _, body = exchange(proxy, f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert status == 403 and b"--forward-port" in body and origin.accepted == 0


def test_name_rules_before_dns_and_report_mode(start_proxy, upstream_factory, dns_server) -> None:
    origin, _ = h11_origin(upstream_factory)
    proxy = start_proxy(*FORWARD_ANY_PORT, "--deny-host", "web.test")
    target = f"web.test:{origin.port}"
    status, _, _ = exchange(proxy, f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert status == 403 and origin.accepted == 0
    report = start_proxy(*FORWARD_ANY_PORT, "--deny-host", "web.test", "--host-rules-mode", "report")
    status, _, _ = exchange(
        report, f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()
    )
    assert status == 200
    assert "would_deny=host_denied" in report.wait_access(f"target={target}")


def test_users_authenticated_and_connections_not_shared(start_proxy, upstream_factory, tmp_path) -> None:
    import bcrypt

    users = tmp_path / "users"
    users.write_text("".join(f"{u}:{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}\n" for u in ("ann", "bob")))
    proxy = start_proxy(*FORWARD_ANY_PORT, "--auth-file", str(users))
    origin, seen = h11_origin(upstream_factory)
    url = f"http://127.0.0.1:{origin.port}/"
    assert curl(proxy, "-o", "/dev/null", "-w", "%{http_code}", url).stdout == b"407"
    for user in ("ann", "ann", "bob", "ann"):
        got = json.loads(curl(proxy, "-U", f"{user}:pw", url).stdout)
        assert "proxy-authorization" not in [name.lower() for name, _ in got["headers"]]
    # ann's three requests rode one origin connection; bob's needed its own.
    assert origin.accepted == 2
    assert [r["request_on_connection"] for r in seen.requests] == [1, 2, 1, 3]
    assert "user=bob" in proxy.wait_access("user=bob")


def test_a_users_own_forward_port(start_proxy, upstream_factory, tmp_path) -> None:
    import bcrypt

    users = tmp_path / "users"
    users.write_text("".join(f"{u}:{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}\n" for u in ("ann", "bob")))
    origin, seen = h11_origin(upstream_factory)
    other, _ = h11_origin(upstream_factory)
    config = tmp_path / "gconnect.toml"
    # The global forward-port stays the default (80); ann's table opens the origin's port.
    config.write_text(f'[users.ann]\nforward-port = ["{origin.port}"]\n')
    proxy = start_proxy("--config", str(config), "--auth-file", str(users))

    def status(user: str, port: int) -> bytes:
        url = f"http://127.0.0.1:{port}/{user}"
        return curl(proxy, "-U", f"{user}:pw", "-o", "/dev/null", "-w", "%{http_code}", url).stdout

    assert status("ann", origin.port) == b"200"
    assert status("ann", other.port) == b"403"  # her table replaces the global list, it does not add to it
    assert status("bob", origin.port) == b"403"  # no table: the global --forward-port
    assert [r["target"] for r in seen.requests] == ["/ann"] and other.accepted == 0
    assert "status=403" in proxy.wait_access("user=bob") and "reason=denied" in proxy.wait_access("user=bob")


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_reused_connection_found_closed_is_retried_once_if_idempotent(fwd, upstream_factory, method) -> None:
    connections = []

    def handler(conn: socket.socket) -> None:
        connections.append(conn)
        first = len(connections) == 1
        while _read_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if first:
                # Keep-alive promised, then the next request is dropped unanswered.
                _read_head(conn)
                return

    origin = upstream_factory(handler)
    url = f"http://127.0.0.1:{origin.port}/"
    assert curl(fwd, url).stdout == b"ok"
    args = ["-X", "POST", "-H", "Content-Length: 0"] if method == "POST" else []
    result = curl(fwd, "-o", "/dev/null", "-w", "%{http_code}", *args, url)
    if method == "GET":
        assert result.stdout == b"200" and origin.accepted == 2
    else:
        # Not idempotent: never sent twice; the client is told.
        assert result.stdout == b"502" and origin.accepted == 1


# --- listeners, parents, logs and limits ---------------------------------------------


def test_forwarding_on_the_tls_listener(start_tls_proxy, upstream_factory, ca_file) -> None:
    proxy = start_tls_proxy(*FORWARD_ANY_PORT)
    origin, _ = h11_origin(upstream_factory)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    cmd = ["curl", "-sS", "--max-time", "20", "--proxy-cacert", str(ca_file)]
    cmd += ["-x", f"https://localhost:{proxy.port}", f"http://127.0.0.1:{origin.port}/over-tls"]
    result = subprocess.run(cmd, capture_output=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"] == "/over-tls"


def test_a_parent_gets_the_absolute_form(start_proxy, upstream_factory) -> None:
    parent = start_proxy(*FORWARD_ANY_PORT, "--log-format", "json", "--log-path")
    child = start_proxy(*FORWARD_ANY_PORT, "--upstream", f"http://127.0.0.1:{parent.port}")
    origin, _ = h11_origin(upstream_factory)
    got = json.loads(curl(child, f"http://127.0.0.1:{origin.port}/via-parent").stdout)
    assert got["target"] == "/via-parent"
    vias = [value for name, value in got["headers"] if name.lower() == "via"]
    assert vias == ["1.1 gconnect", "1.1 gconnect"]  # the child's, then the parent's
    record = json.loads(parent.wait_access('"path":"/via-parent"'))
    assert record["method"] == "GET" and record["target"] == f"127.0.0.1:{origin.port}"
    # A JSON log reads the step times, so a forwarded request keeps them.
    assert record["dns"] >= 0 and record["connect"] >= 0
    assert record["dns"] + record["connect"] <= record["first_byte"] <= record["duration"]
    assert f"via=http://127.0.0.1:{parent.port}" in child.wait_access("method=GET")


def test_forwarding_fails_over_between_parents_and_counts_their_health(start_proxy, upstream_factory) -> None:
    from gconnect.testing.process import free_port

    from .test_metrics import metrics_url, scrape

    alive = start_proxy(*FORWARD_ANY_PORT)
    dead, alive_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{alive.port}"
    # A pool's failover and health are the tunnel's own (the same Pool.open): the dead parent is tried
    # first, counted, and the request goes on through the live one.
    child = start_proxy(
        *FORWARD_ANY_PORT, "--metrics-listen", "127.0.0.1:0", "--upstream", dead, "--upstream", alive_url
    )
    origin, _ = h11_origin(upstream_factory)
    url = f"http://127.0.0.1:{origin.port}/"
    for _ in range(3):
        assert curl(child, "-o", "/dev/null", "-w", "%{http_code}", url).stdout == b"200"
    values = scrape(metrics_url(child))
    assert values[f'gconnect_upstream_tunnels_total{{outcome="connect_error",pool="default",url="{dead}"}}'] >= 1
    assert values[f'gconnect_upstream_tunnels_total{{outcome="ok",pool="default",url="{alive_url}"}}'] >= 1
    assert f"via={alive_url}" in child.wait_access("method=GET")


def test_path_logged_only_when_asked(fwd: ProxyProcess, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    curl(fwd, f"http://127.0.0.1:{origin.port}/secret-token")
    line = fwd.wait_access("method=GET")
    assert "secret-token" not in line and "path=" not in line


def test_request_metrics(start_proxy, upstream_factory) -> None:
    pytest.importorskip("prometheus_client")
    from .test_metrics import metrics_url, scrape

    proxy = start_proxy(*FORWARD_ANY_PORT, "--metrics-listen", "127.0.0.1:0")
    origin, _ = h11_origin(upstream_factory)
    for path in ("/a", "/b", "/status/404"):
        curl(proxy, f"http://127.0.0.1:{origin.port}{path}")
    values = scrape(metrics_url(proxy))
    assert values['gconnect_requests_total{reason="complete",status="200"}'] == 2
    assert values['gconnect_requests_total{reason="complete",status="404"}'] == 1
    assert values["gconnect_request_seconds_count"] == 3


def test_stalled_request_body_is_408(start_proxy, upstream_factory) -> None:
    proxy = start_proxy(*FORWARD_ANY_PORT, "--idle-timeout", "0.5")
    origin, _ = h11_origin(upstream_factory)
    host = f"127.0.0.1:{origin.port}"
    raw = f"POST http://{host}/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\nabc".encode()
    status, _, _ = exchange(proxy, raw)
    assert status == 408
    assert "reason=idle_timeout" in proxy.wait_access(f"target={host}")


def test_http10_client_gets_a_chunked_body_unwrapped(fwd: ProxyProcess, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    result = curl(fwd, "--http1.0", "-i", f"http://127.0.0.1:{origin.port}/bytes/100000")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"\r\nConnection: close" in head
    assert body == (bytes(range(256)) * 256 * 2)[:100_000]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_back_pressure_a_slow_client_holds_the_origin(fwd: ProxyProcess, upstream_factory) -> None:
    size = 256 * 1024 * 1024
    sent = [0]

    def big(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * 65536
        while sent[0] < size:
            conn.sendall(block)
            sent[0] += len(block)

    origin = upstream_factory(big)
    baseline = _rss_bytes(fwd.pid)
    host = f"127.0.0.1:{origin.port}"
    with fwd.connect() as sock:
        sock.settimeout(20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        # The client reads nothing: the origin must stall once the socket buffers on both legs are full.
        deadline = time.monotonic() + 10
        while not _settled(sent) and time.monotonic() < deadline:
            pass
        assert sent[0] < size // 4, sent[0]
        assert _rss_bytes(fwd.pid) - baseline < 32 * 1024 * 1024
        received = 0
        while received < size:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
    assert received >= size


def _settled(sent: list[int]) -> bool:
    """True once the origin has sent nothing more for 0.3 s."""
    before = sent[0]
    time.sleep(0.3)
    return sent[0] == before and before > 0


def test_sigterm_closes_an_idle_kept_connection_at_once(start_proxy, upstream_factory) -> None:
    proxy = start_proxy(*FORWARD_ANY_PORT, "--drain-timeout", "30")
    origin, _ = h11_origin(upstream_factory)
    host = f"127.0.0.1:{origin.port}"
    with proxy.connect() as sock:
        sock.settimeout(10)
        sock.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert read_responses(sock, [b"GET"])[0][0].status_code == 200
        # The connection is kept, idle: shutdown need not wait the 30 s drain for it.
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert sock.recv(100) == b""
        assert proxy.proc.wait(10) == 0
        assert time.monotonic() - started < 5


def test_a_parents_407_is_our_502(start_proxy, upstream_factory, tmp_path) -> None:
    import bcrypt

    users = tmp_path / "users"
    users.write_text("u:" + bcrypt.hashpw(b"p", bcrypt.gensalt(4)).decode() + "\n")
    parent = start_proxy(*FORWARD_ANY_PORT, "--auth-file", str(users))
    child = start_proxy(*FORWARD_ANY_PORT, "--upstream", f"http://127.0.0.1:{parent.port}")
    origin, _ = h11_origin(upstream_factory)
    host = f"127.0.0.1:{origin.port}"
    status, headers, body = exchange(child, f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert status == 502 and "proxy-authenticate" not in headers and b"answered 407" in body
    assert origin.accepted == 0


def test_bind_address_is_the_source_of_forwarded_requests(start_proxy, upstream_factory) -> None:
    proxy = start_proxy(*FORWARD_ANY_PORT, "--bind-address", "127.0.0.2")
    peers: list[str] = []

    def record_peer(conn: socket.socket) -> None:
        peers.append(conn.getpeername()[0])
        recording_handler(Seen(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")(conn)

    origin = upstream_factory(record_peer)
    assert curl(proxy, f"http://127.0.0.1:{origin.port}/").stdout == b"ok"
    assert peers == ["127.0.0.2"]


def test_options_with_max_forwards_zero_is_answered_here(fwd: ProxyProcess, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    host = f"127.0.0.1:{origin.port}"
    raw = f"OPTIONS http://{host}/ HTTP/1.1\r\nHost: {host}\r\nMax-Forwards: 0\r\n\r\n".encode()
    status, _, _ = _one(fwd, raw)
    assert status == 200 and origin.accepted == 0
    assert "reason=max_forwards" in fwd.wait_access("method=OPTIONS")
    raw = raw.replace(b"Max-Forwards: 0", b"Max-Forwards: 5")
    status, _, body = _one(fwd, raw)
    assert status == 200 and ["Max-Forwards", "4"] in json.loads(body)["headers"]


def test_an_early_answer_ends_the_upload_and_the_connection(fwd: ProxyProcess, upstream_factory) -> None:
    def refuse_at_once(conn: socket.socket) -> None:
        _read_head(conn)
        conn.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
        conn.shutdown(socket.SHUT_WR)

    origin = upstream_factory(refuse_at_once)
    host = f"127.0.0.1:{origin.port}"
    with fwd.connect() as sock:
        sock.settimeout(10)
        sock.sendall(f"POST http://{host}/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000000\r\n\r\n".encode())
        sock.sendall(b"x" * 65536)  # the upload has begun; the rest never comes
        response, body = read_responses(sock, [b"POST"])[0]
        assert (response.status_code, body) == (413, b"big!")
        assert (b"connection", b"close") in list(response.headers)
    assert "status=413" in fwd.wait_access("method=POST")


def test_a_response_cut_short_is_cut_short_for_the_client(fwd: ProxyProcess, upstream_factory) -> None:
    def cut(conn: socket.socket) -> None:
        _read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        conn.close()

    origin = upstream_factory(cut)
    host = f"127.0.0.1:{origin.port}"
    with fwd.connect() as sock:
        sock.settimeout(10)
        sock.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # The client got what came, and no last chunk: it can tell the body is incomplete.
    assert data.endswith(b"5\r\nhello\r\n") and b"0\r\n\r\n" not in data
    assert "reason=upstream_reset" in fwd.wait_access("method=GET")


def test_a_request_to_the_proxy_itself_is_a_loop(fwd: ProxyProcess) -> None:
    target = f"127.0.0.1:{fwd.port}"
    status, headers, _ = exchange(fwd, f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert status == 403 and "error=proxy_loop_detected" in headers["proxy-status"]
