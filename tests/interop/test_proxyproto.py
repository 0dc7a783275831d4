"""The PROXY protocol from a real sender: HAProxy's send-proxy-v2 in front of two instances."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from gconnect.testing.process import free_port

from ..conftest import read_head, recv_exactly, wait_listening, wait_until
from ..e2e.test_proxyproto import lb_proxy

pytestmark = pytest.mark.timeout(60)

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
