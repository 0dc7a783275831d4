"""PROXY protocol v1/v2: the parser on bytes alone, the real CLI behind a
hand-written header, and a real HAProxy in front of two gconnect instances."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gconnect.errors import ProxyHeaderError
from gconnect.tunnel import proxyproto
from gconnect.tunnel.proxyproto import ProxyHeader, parse, render_v1, render_v2

from ..conftest import exchange, free_port, open_tunnel, read_head, recv_exactly, wait_listening, wait_until

pytestmark = pytest.mark.timeout(60)

SRC4, DST4 = ("203.0.113.7", 51234), ("192.0.2.1", 3128)
SRC6, DST6 = ("2001:db8::7", 443), ("2001:db8::1", 3128)


@pytest.mark.parametrize(
    "header,expected",
    [
        (render_v1(SRC4, DST4), ProxyHeader(1, SRC4, DST4)),
        (render_v1(SRC6, DST6), ProxyHeader(1, SRC6, DST6)),
        (b"PROXY UNKNOWN whatever\r\n", ProxyHeader(1, None, None)),
        (render_v2(SRC4, DST4), ProxyHeader(2, SRC4, DST4)),
        (render_v2(SRC6, DST6), ProxyHeader(2, SRC6, DST6)),
        (render_v2(None), ProxyHeader(2, None, None)),
    ],
)
def test_parse_whole_and_byte_by_byte(header, expected):
    data = header + b"CONNECT a:1 HTTP/1.1\r\n"
    assert parse(data) == (expected, len(header))
    for n in range(len(header)):
        assert parse(data[:n]) is None if n else parse(b"") is None


def test_v2_tlvs_are_skipped():
    base = render_v2(SRC4, DST4)
    tlv = bytes([0x04]) + (3).to_bytes(2, "big") + b"abc"  # PP2_TYPE_NOOP
    length = int.from_bytes(base[14:16], "big") + len(tlv)
    header = base[:14] + length.to_bytes(2, "big") + base[16:] + tlv
    assert parse(header + b"rest") == (ProxyHeader(2, SRC4, DST4), len(header))


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT a:1 HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 200,
        proxyproto.V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in a v2 header
        proxyproto.V2_SIGNATURE + b"\x23\x11\x00\x0c" + b"\x00" * 12,  # command 3
        proxyproto.V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # short address block
        proxyproto.V2_SIGNATURE + b"\x21\x11\xff\xff",  # over V2_MAX_BYTES
    ],
)
def test_malformed_headers_are_400(data):
    with pytest.raises(ProxyHeaderError) as info:
        parse(data)
    assert info.value.status == 400


def lb_proxy(start_proxy, trusted: str = "127.0.0.1/32"):
    return start_proxy("--proxy-protocol", "--proxy-protocol-from", trusted)


@pytest.mark.parametrize("render", [render_v1, render_v2])
def test_the_header_names_the_client_in_log_and_policy(start_proxy, echo, render):
    proxy = lb_proxy(start_proxy)
    header = render(SRC4, (proxy.host, proxy.port))
    # The header and the CONNECT in one write, as HAProxy often sends them.
    sock = proxy.connect()
    sock.sendall(header + f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\nearly".encode())
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest + recv_exactly(sock, 5 - len(rest)) == b"early"
    sock.close()
    assert "client=203.0.113.7:51234" in proxy.wait_access("client=203.0.113.7")


def test_local_command_keeps_the_connection_address(start_proxy, echo):
    proxy = lb_proxy(start_proxy)
    sock = proxy.connect()
    sock.sendall(render_v2(None) + f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    head, _ = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    port = sock.getsockname()[1]
    sock.close()
    proxy.wait_access(f"client=127.0.0.1:{port} ")


def test_trusted_source_without_a_header_is_400(start_proxy, echo):
    proxy = lb_proxy(start_proxy)
    status, _, body = exchange(proxy, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 400 and b"PROXY protocol header" in body
    assert "reason=bad_proxy_header" in proxy.wait_access("status=400")


def test_untrusted_source_cannot_claim_an_address(start_proxy, echo):
    proxy = lb_proxy(start_proxy, trusted="10.0.0.0/8")
    # Its header is not read as one: "PROXY" is just a method we do not serve.
    status, _, _ = exchange(proxy, render_v1(SRC4, DST4) + b"CONNECT a.test:1 HTTP/1.1\r\n\r\n")
    assert status == 405
    assert "203.0.113.7" not in "\n".join(proxy.access_lines())
    # A direct client from there is served as itself.
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"direct")
        assert recv_exactly(sock, 6) == b"direct"


def test_proxy_protocol_requires_trusted_sources():
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "serve", "--proxy-protocol"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "proxy_protocol needs proxy_protocol_from" in result.stderr


HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def test_haproxy_send_proxy_v2_in_front_of_two_instances(start_proxy, echo, tmp_path: Path):
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    backends = [lb_proxy(start_proxy), lb_proxy(start_proxy)]
    port = free_port()
    conf = tmp_path / "haproxy.cfg"
    servers = "\n".join(f"    server g{i} 127.0.0.1:{b.port} send-proxy-v2" for i, b in enumerate(backends))
    conf.write_text(
        "global\n    maxconn 100\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
        f"frontend proxy\n    bind 127.0.0.1:{port}\n    default_backend gconnect\n"
        f"backend gconnect\n    balance roundrobin\n{servers}\n"
    )
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", port)
        clients = []
        for _ in range(4):
            # A client address HAProxy sees and gconnect otherwise never would.
            sock = socket.socket()
            sock.bind(("127.0.0.5", 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\nping".encode())
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert rest + recv_exactly(sock, 4 - len(rest)) == b"ping"
            clients.append(sock.getsockname())
            sock.close()
    finally:
        proc.terminate()
        proc.wait(10)

    def logged() -> list[str]:
        return [line for b in backends for line in b.access_lines() if "client=127.0.0.5:" in line]

    wait_until(lambda: len(logged()) == len(clients))
    for host, client_port in clients:
        assert any(f"client={host}:{client_port} " in line for line in logged())
    # Round robin: both instances served someone, each one seeing 127.0.0.5.
    for backend in backends:
        assert any("client=127.0.0.5:" in line for line in backend.access_lines())
