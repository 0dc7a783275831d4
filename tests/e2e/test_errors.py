"""Every refusal, end to end: the right status, a one-line text/plain reason,
Connection: close, nothing relayed, and the proxy still serving afterwards."""

from __future__ import annotations

import threading

import dns.rcode
import http_sfv
import pytest

from ..conftest import exchange, open_tunnel, recv_exactly, silent_listener, wait_until

pytestmark = pytest.mark.timeout(60)


#: RFC 9209 error types for the statuses every request-level refusal shares.
REQUEST_ERRORS = {
    400: "http_request_error",
    405: "http_request_error",
    431: "http_request_error",
    501: "http_request_error",
    505: "http_request_error",
}


def proxy_status_error(value: str) -> str:
    """Our member's error type in a Proxy-Status value, parsed by http-sfv (RFC 8941)."""
    members = http_sfv.List()
    members.parse(value.encode())
    ours = members[-1]
    assert str(ours.value) == "gconnect", value
    assert str(ours.params["details"]), value
    return str(ours.params["error"])


def assert_refused(
    proxy, raw: bytes, status: int, *, reason_part: str = "", shut: bool = False, error: str = ""
) -> dict:
    code, headers, body = exchange(proxy, raw, shut=shut)
    assert code == status, body
    # RFC 9209: every refusal names gconnect and the error type.
    assert proxy_status_error(headers["proxy-status"]) == (error or REQUEST_ERRORS[status])
    assert headers["connection"] == "close"
    assert headers["content-type"].startswith("text/plain")
    assert int(headers["content-length"]) == len(body)
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body
    assert reason_part.encode() in body, body
    return headers


def still_serves(proxy, echo) -> None:
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"still here")
        assert recv_exactly(sock, 10) == b"still here"


def head(target: str, *lines: str, method: str = "CONNECT", version: str = "HTTP/1.1") -> bytes:
    text = f"{method} {target} {version}\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    return text.encode()


BAD_REQUESTS = [
    (b"garbage\r\n\r\n", 400, ""),
    (b"CONNECT a.test:443 HTTP/1.1\nHost: a.test:443\n\n", 400, ""),  # bare LF
    (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nX: a\r\n b\r\n\r\n", 400, ""),  # obs-fold
    (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\x00:443\r\n\r\n", 400, ""),  # NUL
    (head("a.test"), 400, "no port"),
    (head("a.test:0", "Host: a.test:0"), 400, "port"),
    (head("a.test:65536", "Host: a.test:65536"), 400, "port"),
    (head("a.test:+443", "Host: a.test:+443"), 400, "port"),
    (head("a.test:0x1bb", "Host: a.test:0x1bb"), 400, "port"),
    (head("http://a.test:443/", "Host: a.test:443"), 400, "authority-form"),
    (head("/", "Host: a.test:443"), 400, "authority-form"),
    (head("a.test:443"), 400, "Host"),  # no Host in HTTP/1.1
    (head("a.test:443", "Host: a.test:443", "Host: a.test:443"), 400, "Host"),
    (head("a.test:443", "Host: b.test:443"), 400, "Host"),
    (head("a.test:443", "Host: a.test:443", "Content-Length: 5") + b"hello", 400, "body"),
    (head("a.test:443", "Host: a.test:443", "Transfer-Encoding: chunked") + b"0\r\n\r\n", 400, "body"),
    (head("a.test:443", "Host: a.test:443", "Content-Length: 5", "Transfer-Encoding: chunked"), 400, ""),
    (head("127.1:443", "Host: 127.1:443"), 400, "ambiguous"),
    (head("a" * 300 + ".test:443", "Host: " + "a" * 300 + ".test:443"), 400, "host"),
    ("CONNECT bücher.test:443 HTTP/1.1\r\nHost: xn--bcher-kva.test:443\r\n\r\n".encode(), 400, ""),
    # Methods are case-sensitive (RFC 9110 §9.1): not CONNECT, and not one gconnect forwards.
    (head("a.test:443", "Host: a.test:443", method="connect"), 501, "connect"),
    # RFC 9112 §3: a request line without a version is malformed, not a 505 (Squid answers 400 too).
    (b"CONNECT a.test:443\r\n\r\n", 400, "no HTTP version"),
]


@pytest.mark.parametrize("raw,status,reason_part", BAD_REQUESTS)
def test_bad_requests_get_4xx_and_nothing_is_relayed(proxy, echo, raw, status, reason_part):
    assert_refused(proxy, raw, status, reason_part=reason_part)
    still_serves(proxy, echo)
    assert echo.accepted == 1  # only still_serves reached the upstream


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS", "PUT"])
def test_other_methods_get_405_with_allow_when_forwarding_is_off(start_proxy, method):
    proxy = start_proxy("--forward-http", "off")
    headers = assert_refused(proxy, head("http://a.test/", "Host: a.test", method=method), 405, reason_part=method)
    assert headers["allow"] == "CONNECT"


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2"])
def test_an_unsupported_version_gets_505(proxy, version):
    assert_refused(proxy, head("a.test:443", "Host: a.test:443", version=version), 505, reason_part="only HTTP/1.1")


def test_denied_port_gets_403(start_proxy, echo):
    proxy = start_proxy()  # allows 1-65535: build a narrower one below
    strict = start_proxy(
        "--listen",
        "127.0.0.1:0",
        "--allow-dest",
        "127.0.0.0/8",
        "--hosts-file",
        "",
        "--dns-server",
        "127.0.0.1:9",
        defaults=False,
    )
    assert_refused(
        strict,
        head(echo.target, f"Host: {echo.target}"),
        403,
        reason_part=f"port {echo.port}",
        error="http_request_denied",
    )
    assert echo.accepted == 0
    still_serves(proxy, echo)


def default_destinations(start_proxy, dns: str):
    """A proxy with the built-in destination policy (any port, but no loopback)."""
    return start_proxy(
        "--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--hosts-file", "", "--dns-server", dns, defaults=False
    )  # fmt: skip


def test_private_destination_denied_by_default(start_proxy, echo):
    proxy = default_destinations(start_proxy, "127.0.0.1:9")
    for target in (
        echo.target,
        f"10.1.2.3:{echo.port}",
        f"169.254.169.254:{echo.port}",
        f"[::1]:{echo.port}",
        f"[::ffff:127.0.0.1]:{echo.port}",
        f"0.0.0.0:{echo.port}",
    ):
        assert_refused(
            proxy, head(target, f"Host: {target}"), 403, reason_part="denied", error="destination_ip_prohibited"
        )
    assert echo.accepted == 0


def test_name_resolving_to_loopback_is_denied_on_the_dialled_address(start_proxy, dns_server, echo):
    # The name looks harmless; the address it leads to is not. 403, not a tunnel.
    dns_server.add("rebind.test", a=["127.0.0.1"])
    dns_server.add("metadata.test", a=["169.254.169.254"])
    proxy = default_destinations(start_proxy, dns_server.address)
    for name in ("rebind.test", "metadata.test"):
        target = f"{name}:{echo.port}"
        assert_refused(
            proxy,
            head(target, f"Host: {target}"),
            403,
            reason_part="not a public address",
            error="destination_ip_prohibited",
        )
    assert echo.accepted == 0


def test_deny_dest_wins_over_allow_dest(start_proxy, echo):
    proxy = start_proxy("--deny-dest", "127.0.0.0/8")
    assert_refused(
        proxy,
        head(echo.target, f"Host: {echo.target}"),
        403,
        reason_part="denied network",
        error="destination_ip_prohibited",
    )
    assert echo.accepted == 0


def test_tunnel_to_the_proxy_itself_is_refused(proxy):
    target = f"127.0.0.1:{proxy.port}"
    assert_refused(proxy, head(target, f"Host: {target}"), 403, reason_part="proxy itself", error="proxy_loop_detected")


def test_header_timeout_gives_408(start_proxy, echo):
    proxy = start_proxy("--header-timeout", "0.3")
    with proxy.connect() as sock:
        sock.sendall(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n")
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 408 ")
    status_line = next(line for line in data.split(b"\r\n") if line.lower().startswith(b"proxy-status:"))
    assert proxy_status_error(status_line.split(b":", 1)[1].strip().decode()) == "http_request_error"
    still_serves(proxy, echo)


def test_trickling_client_is_cut_at_the_deadline(start_proxy, echo):
    # One byte at a time keeps a per-read timeout alive forever; ours is one deadline.
    proxy = start_proxy("--header-timeout", "0.5")
    sock = proxy.connect()
    answer = {}

    def read() -> None:
        answer["data"] = sock.recv(4096)

    reader = threading.Thread(target=read)
    reader.start()
    for byte in b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nX-Slow: " + b"a" * 200:
        if "data" in answer:
            break
        try:
            sock.send(bytes([byte]))
        except OSError:
            break
        threading.Event().wait(0.02)  # the trickle's pace; 200 bytes would take 4 s
    reader.join(10)
    sock.close()
    assert answer["data"].startswith(b"HTTP/1.1 408 ")


def test_head_too_large_gives_431(start_proxy, echo):
    proxy = start_proxy("--max-header-bytes", "1024")
    raw = head(echo.target, f"Host: {echo.target}", "X-Big: " + "a" * 2000)
    assert_refused(proxy, raw, 431)
    still_serves(proxy, echo)
    assert echo.accepted == 1


def test_connection_refused_gives_502(proxy):
    # Port 1 on loopback: nothing listens there.
    assert_refused(
        proxy, head("127.0.0.1:1", "Host: 127.0.0.1:1"), 502, reason_part="refused", error="connection_refused"
    )


def test_connect_timeout_gives_504(start_proxy):
    proxy = start_proxy("--connect-timeout", "0.3")
    with silent_listener() as port:
        raw = head(f"127.0.0.1:{port}", f"Host: 127.0.0.1:{port}")
        assert_refused(proxy, raw, 504, reason_part="timed out", error="connection_timeout")
    line = proxy.wait_access(f"target=127.0.0.1:{port}")
    assert "reason=connect_timeout" in line


def test_nxdomain_gives_502(proxy, dns_server):
    assert_refused(
        proxy,
        head("missing.test:443", "Host: missing.test:443"),
        502,
        reason_part="does not exist",
        error="destination_not_found",
    )


def test_servfail_gives_502(proxy, dns_server):
    dns_server.add("broken.test", rcode=dns.rcode.SERVFAIL)
    assert_refused(
        proxy, head("broken.test:443", "Host: broken.test:443"), 502, reason_part="failed", error="dns_error"
    )


def test_dns_timeout_gives_504(start_proxy, dns_server, echo):
    hold = threading.Event()
    dns_server.add("slow504.test", a=["127.0.0.1"], hold=hold)
    proxy = start_proxy("--dns-timeout", "0.3")
    try:
        target = f"slow504.test:{echo.port}"
        assert_refused(proxy, head(target, f"Host: {target}"), 504, reason_part="timed out", error="dns_timeout")
    finally:
        hold.set()
    assert echo.accepted == 0


def test_client_closing_mid_head_is_logged_not_fatal(proxy, echo):
    with proxy.connect() as sock:
        sock.sendall(b"CONNECT 127.0.0.1:")
    proxy.wait_access("reason=client_closed")
    still_serves(proxy, echo)


def test_bytes_after_a_rejected_head_go_nowhere(proxy, echo):
    # GET with an authority-form target: neither a CONNECT nor a request to forward.
    raw = head(echo.target, f"Host: {echo.target}", method="GET") + b"smuggled bytes"
    assert_refused(proxy, raw, 400)
    wait_until(lambda: len(proxy.access_lines()) >= 1)
    assert echo.accepted == 0
