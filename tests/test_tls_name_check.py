"""The TLS name check end to end: the real CLI, an HTTPS origin on loopback
(a trustme certificate), and real clients (openssl s_client, curl, Python's
ssl) whose ClientHello names the CONNECT host, another name or none. A TLS
handshake that completes proves the ClientHello reached the origin unchanged:
both ends hash every handshake byte into their Finished messages."""

from __future__ import annotations

import base64
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest

from gconnect.tunnel.namecheck import UNRECOGNIZED_NAME_ALERT

from .conftest import chromium_command, connect_over, open_tunnel, read_head, recv_all, wait_until
from .h2client import H2Client
from .test_metrics import metrics_url, scrape

pytestmark = pytest.mark.timeout(60)

NEEDS_OPENSSL = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
NEEDS_CURL = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")


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


def s_client(proxy, target: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "s_client", "-proxy", f"127.0.0.1:{proxy.port}", "-connect", target, *args],
        input=stdin,
        capture_output=True,
        timeout=30,
    )


def fetch(sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> bytes:
    """A GET over TLS inside the tunnel *sock*; the response."""
    with context.wrap_socket(sock, server_hostname=server_hostname) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return recv_all(tls)


@NEEDS_OPENSSL
def test_openssl_other_name_is_closed_with_an_alert(start_proxy, names, origin, ca_file):
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
def test_openssl_without_server_name_is_closed(start_proxy, names, origin, ca_file):
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    done = s_client(proxy, f"allowed.test:{origin.port}", "-noservername", "-CAfile", str(ca_file))
    assert done.returncode != 0
    assert " sni=- sni_check=no_sni" in proxy.wait_access("sni_check=")


@NEEDS_OPENSSL
def test_openssl_matching_name_passes(start_proxy, names, origin, ca_file):
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


def test_python_ssl_mismatch_closed_and_match_served(start_proxy, names, origin, client_context):
    proxy = check_proxy(start_proxy, origin.port, "enforce")
    target = f"allowed.test:{origin.port}"
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        fetch(open_tunnel(proxy, target), client_context, "other.test")
    assert fetch(open_tunnel(proxy, target), client_context, "allowed.test").endswith(b"origin")
    assert "reason=tls_name_refused" in proxy.wait_access("sni=other.test sni_check=mismatch")
    assert "reason=tls_name_refused" not in proxy.wait_access("sni=allowed.test sni_check=match")


@NEEDS_CURL
def test_curl_through_the_check(start_proxy, names, origin, ca_file):
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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
@pytest.mark.parametrize("listener", ["http", "https"])
def test_chromium_passes_the_check(start_proxy, start_tls_proxy, names, origin, tmp_path, listener):
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
