"""The command line end to end: options from the environment, a port that cannot be bound,
SIGTERM's drain."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from ..conftest import open_tunnel, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(60)


def test_environment_variables_configure_serve(start_proxy, echo):
    # No --allow-port / --allow-dest flags: they come from the environment.
    proxy = start_proxy(
        "--listen",
        "127.0.0.1:0",
        "--hosts-file",
        "",
        "--dns-server",
        "127.0.0.1:9",
        defaults=False,
        env={"GCONNECT_ALLOW_PORT": f"{echo.port}", "GCONNECT_ALLOW_DEST": "127.0.0.0/8 ::1/128"},
    )
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"env")
        assert recv_exactly(sock, 3) == b"env"


def test_cannot_bind_is_a_clear_error(proxy):
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "serve", "--listen", f"127.0.0.1:{proxy.port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_drains_open_tunnels_then_exits_0(start_proxy, echo):
    proxy = start_proxy("--drain-timeout", "20")
    sock = open_tunnel(proxy, echo.target)
    proxy.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: any("draining 1 open tunnels" in line for line in proxy.lines))
    # No new clients once stopping ...
    with pytest.raises(OSError):
        proxy.connect().sendall(b"x" * 10)
        raise AssertionError("listener still accepting")
    # ... but the open tunnel still carries bytes, and its end lets the proxy exit.
    sock.sendall(b"still open")
    assert recv_exactly(sock, 10) == b"still open"
    sock.close()
    assert proxy.proc.wait(10) == 0


def test_drain_timeout_closes_leftover_tunnels(start_proxy, echo):
    proxy = start_proxy("--drain-timeout", "0.2")
    sock = open_tunnel(proxy, echo.target)
    proxy.proc.send_signal(signal.SIGINT)
    assert proxy.proc.wait(10) == 0
    sock.settimeout(5)
    try:
        assert sock.recv(10) == b""
    except ConnectionResetError:
        pass
    assert "reason=shutdown" in proxy.wait_access(f"target={echo.target}")
