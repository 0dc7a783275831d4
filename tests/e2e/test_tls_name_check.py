"""The TLS name check end to end: the real CLI, an HTTPS origin on loopback
(a trustme certificate), and Python's ssl and h2 as clients whose ClientHello
names the CONNECT host, another name or none (openssl s_client, curl and
Chromium: tests/interop/test_tls_name_check_clients.py). A TLS
handshake that completes proves the ClientHello reached the origin unchanged:
both ends hash every handshake byte into their Finished messages."""

from __future__ import annotations

import base64
import signal
import socket
import ssl
import time
from pathlib import Path

import bcrypt
import pytest

from gconnect.tunnel.namecheck import UNRECOGNIZED_NAME_ALERT

from ..conftest import connect_over, open_tunnel, read_head, recv_all, wait_until
from ..h2client import H2Client
from .test_metrics import metrics_url, scrape

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def names(hosts_file: Path) -> Path:
    hosts_file.write_text(hosts_file.read_text() + "127.0.0.1 allowed.test other.test\n")
    return hosts_file


@pytest.fixture
def origin(ca, upstream_factory):
    """An HTTPS origin for allowed.test and tls.test (and other.test), answering one GET."""
    cert = ca.issue_cert("allowed.test", "tls.test", "other.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    def handler(conn: socket.socket) -> None:
        try:
            tls = context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the proxy closed a refused tunnel: nothing reached us
        with tls:
            request, _ = read_head(tls)
            if request:
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin")

    return upstream_factory(handler)


def check_proxy(start_proxy, origin_port: int, mode: str, *extra: str):
    return start_proxy("--tls-name-check", mode, "--tls-name-check-ports", str(origin_port), *extra)


def fetch(sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> bytes:
    """A GET over TLS inside the tunnel *sock*; the response."""
    with context.wrap_socket(sock, server_hostname=server_hostname) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return recv_all(tls)


def test_python_ssl_mismatch_closed_and_match_served(start_proxy, names, origin, client_context):
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    target = f"allowed.test:{origin.port}"
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        fetch(open_tunnel(proxy, target), client_context, "other.test")
    assert fetch(open_tunnel(proxy, target), client_context, "allowed.test").endswith(b"origin")
    assert "reason=tls_name_refused" in proxy.wait_access("sni=other.test sni_check=mismatch")
    assert "reason=tls_name_refused" not in proxy.wait_access("sni=allowed.test sni_check=match")


def test_report_mode_lets_a_mismatch_through_and_counts_it(start_proxy, names, origin, client_context):
    proxy = check_proxy(start_proxy, origin.port, "report", "--metrics-listen", "127.0.0.1:0", "--log-format", "json")
    target = f"allowed.test:{origin.port}"
    assert fetch(open_tunnel(proxy, target), client_context, "other.test").endswith(b"origin")
    line = proxy.wait_access('"event":"close"')
    assert '"sni":"other.test","sni_check":"mismatch"' in line and '"status":200' in line
    values = scrape(metrics_url(proxy))
    assert values['gconnect_tls_name_checks_total{action="pass",outcome="mismatch"}'] == 1


def test_ip_literal_target_judged_by_the_name_rules(start_proxy, names, origin, client_context):
    rules = ("--allow-host", "127.0.0.1", "--allow-host", "allowed.test")
    proxy = check_proxy(start_proxy, origin.port, "enforce", *rules)
    target = f"127.0.0.1:{origin.port}"
    assert fetch(open_tunnel(proxy, target), client_context, "allowed.test").endswith(b"origin")
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        fetch(open_tunnel(proxy, target), client_context, "other.test")
    assert "reason=tls_name_refused" in proxy.wait_access("sni=other.test sni_check=ip_literal_denied")
    assert "reason=tls_name_refused" not in proxy.wait_access("sni=allowed.test sni_check=ip_literal_allowed")


def test_not_tls_on_a_listed_port(start_proxy, echo):
    enforce = check_proxy(start_proxy, echo.port, "enforce")
    with open_tunnel(enforce, echo.target) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_all(sock) == b""  # closed, not relayed
    assert "sni=- sni_check=not_tls" in enforce.wait_access("sni_check=")
    report = check_proxy(start_proxy, echo.port, "report")
    with open_tunnel(report, echo.target) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        assert sock.recv(100) == b"GET / HTTP/1.1\r\n"
    # Not listed: not read at all.
    unlisted = start_proxy("--tls-name-check", "enforce")
    with open_tunnel(unlisted, echo.target) as sock:
        sock.sendall(b"plain")
        assert sock.recv(100) == b"plain"
    unlisted.stop()
    assert "sni_check" not in unlisted.wait_access("target=")


def banner_handler(conn: socket.socket) -> None:
    """A server that speaks first (SMTP-like), then echoes one line."""
    conn.sendall(b"220 ready\r\n")
    conn.sendall(conn.recv(100))


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_server_speaks_first_the_deadline_decides(start_proxy, upstream_factory, mode):
    server = upstream_factory(banner_handler)
    proxy = check_proxy(start_proxy, server.port, mode, "--header-timeout", "1")
    with open_tunnel(proxy, server.target) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        first = sock.recv(100)
        waited = time.monotonic() - started
    assert 0.8 < waited < 5
    assert first == (b"" if mode == "enforce" else b"220 ready\r\n")
    assert "sni=- sni_check=timeout" in proxy.wait_access("sni_check=")


def get_over(
    sock: socket.socket, context: ssl.SSLContext, server_hostname: str, step: int = 0, record: int = 0
) -> bytes:
    """A GET over TLS with memory BIOs inside *sock* (which may itself be TLS):
    the ClientHello written *step* bytes at a time (0: at once), re-fragmented
    into TLS records of *record* bytes (0: as the client made it); the response."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        session.do_handshake()
    hello = outgoing.read()
    if record:
        # RFC 8446 §5.1: a handshake message may span records; the server's transcript is the message's.
        pieces = [hello[at : at + record] for at in range(5, len(hello), record)]
        hello = b"".join(b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece for piece in pieces)
    for at in range(0, len(hello), step or len(hello)):
        sock.sendall(hello[at : at + (step or len(hello))])
        if step:
            time.sleep(0.0005)  # pacing, so the pieces go out in separate segments
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            incoming.write_eof()
        incoming.write(chunk)
        try:
            session.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
    session.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.sendall(outgoing.read())
    got = b""
    while not got.endswith(b"origin"):
        incoming.write(sock.recv(65536))
        try:
            got += session.read(65536)
        except ssl.SSLWantReadError:
            pass
    return got


def test_client_hello_one_byte_at_a_time(start_proxy, names, origin, client_context):
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    with open_tunnel(proxy, f"allowed.test:{origin.port}") as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert get_over(sock, client_context, "allowed.test", step=1).endswith(b"origin")
    assert "sni=allowed.test sni_check=match" in proxy.wait_access("sni_check=")


def test_client_hello_split_across_records(start_proxy, names, origin, client_context):
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    with open_tunnel(proxy, f"allowed.test:{origin.port}") as sock:
        assert get_over(sock, client_context, "allowed.test", step=150, record=64).endswith(b"origin")
    assert "sni=allowed.test sni_check=match" in proxy.wait_access("sni_check=")


def test_https_proxy_alert_inside_the_proxy_tls(start_tls_proxy, names, origin, client_context):
    proxy = start_tls_proxy("--tls-name-check", "enforce", "--tls-name-check-ports", str(origin.port))
    client_context.set_alpn_protocols(["http/1.1"])
    target = f"allowed.test:{origin.port}"
    with client_context.wrap_socket(proxy.connect(), server_hostname="127.0.0.1") as outer:
        connect_over(outer, target)
        assert get_over(outer, client_context, "allowed.test", step=50).endswith(b"origin")
    with client_context.wrap_socket(proxy.connect(), server_hostname="127.0.0.1") as outer:
        connect_over(outer, target)
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            get_over(outer, client_context, "other.test")
    assert "reason=tls_name_refused" in proxy.wait_access("sni=other.test sni_check=mismatch")
    assert "reason=tls_name_refused" not in proxy.wait_access("sni=allowed.test sni_check=match")


def test_sighup_turns_enforce_on(start_proxy, names, origin, client_context, tmp_path):
    config = tmp_path / "gconnect.toml"
    config.write_text(f'tls-name-check = "report"\ntls-name-check-ports = [{origin.port}]\n')
    proxy = start_proxy("--config", str(config))
    target = f"allowed.test:{origin.port}"
    assert fetch(open_tunnel(proxy, target), client_context, "other.test").endswith(b"origin")
    config.write_text(f'tls-name-check = "enforce"\ntls-name-check-ports = [{origin.port}]\n')
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "policy reloaded" in proxy.stderr)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        fetch(open_tunnel(proxy, target), client_context, "other.test")


# --- HTTP/2 CONNECT streams (the TLS listener) ------------------------------------------


def test_h2_streams_are_checked_on_their_first_data(start_tls_proxy, names, origin, client_context):
    proxy = start_tls_proxy(
        *("--tls-name-check", "enforce", "--tls-name-check-ports", str(origin.port), "--header-timeout", "2"),
        *("--metrics-listen", "127.0.0.1:0"),
    )
    hello = python_hello("allowed.test", client_context)
    other = python_hello("other.test", client_context)
    client = H2Client((proxy.host, proxy.port), client_context)
    try:
        h2_streams(proxy, client, f"allowed.test:{origin.port}", hello, other)
    finally:
        client.close()


def h2_streams(proxy, client: H2Client, target: str, hello: bytes, other: bytes) -> None:
    good, bad, silent = client.connect(target), client.connect(target), client.connect(target)
    assert [client.status(s) for s in (good, bad, silent)] == [200, 200, 200]
    # The matching ClientHello in two DATA frames: the origin's ServerHello comes back.
    client.send(good, hello[:100])
    client.pump()
    client.send(good, hello[100:])
    client.send(bad, other)
    client.wait(lambda: bad in client.ended and client.data[good][:1] == b"\x16")
    assert bytes(client.data[bad]) == UNRECOGNIZED_NAME_ALERT
    client.wait(lambda: silent in client.resets)  # the deadline: no ClientHello
    line = proxy.wait_access(f"stream={bad} ")
    assert "sni=other.test sni_check=mismatch" in line and "reason=tls_name_refused" in line
    assert "sni=- sni_check=timeout" in proxy.wait_access(f"stream={silent} ")
    client.reset(good)
    assert "sni=allowed.test sni_check=match" in proxy.wait_access(f"stream={good} ")
    # A stream reset while the check waits for its ClientHello: closed once, counted as it was opened.
    waiting = client.connect(target)
    assert client.status(waiting) == 200
    client.reset(waiting)
    line = wait_until(lambda: next((x for x in proxy.access_lines() if x.endswith(f" stream={waiting}")), None))
    assert "status=200" in line and "reason=client_reset" in line  # type: ignore[operator]
    assert scrape(metrics_url(proxy))["gconnect_tunnels_open"] == 0


def python_hello(server_hostname: str, context: ssl.SSLContext) -> bytes:
    session = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        session.do_handshake()
    return outgoing.read()


def test_per_user_mode(start_proxy, names, origin, client_context, tmp_path):
    auth = tmp_path / "htpasswd"
    auth.write_text("".join(f"{u}:{bcrypt.hashpw(u.encode(), bcrypt.gensalt(4)).decode()}\n" for u in ("ci", "ops")))
    config = tmp_path / "gconnect.toml"
    config.write_text(
        f'auth-file = "{auth}"\ntls-name-check = "report"\ntls-name-check-ports = [{origin.port}]\n\n'
        '[users.ci]\ntls-name-check = "enforce"\n'
    )
    proxy = start_proxy("--config", str(config))
    target = f"allowed.test:{origin.port}"

    def tunnel(user: str) -> socket.socket:
        login = base64.b64encode(f"{user}:{user}".encode())
        headers = b"Host: " + target.encode() + b"\r\nProxy-Authorization: Basic " + login + b"\r\n"
        return open_tunnel(proxy, target, headers=headers)

    assert fetch(tunnel("ops"), client_context, "other.test").endswith(b"origin")  # the global report
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        fetch(tunnel("ci"), client_context, "other.test")  # the user's enforce
    assert "reason=tls_name_refused" in proxy.wait_access("user=ci ")
    assert "sni_check=mismatch" in proxy.wait_access("user=ops ")
