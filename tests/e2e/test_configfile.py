"""The configuration file end to end: ``serve --config``, SIGHUP reloads, ``check-config`` from the real CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import exchange, open_tunnel, recv_exactly, wait_until
from ..unit.test_configfile import write

pytestmark = pytest.mark.timeout(60)


def serve_with_file(start_proxy, path: Path):
    return start_proxy("--listen", "127.0.0.1:0", "--config", str(path), defaults=False)


def policy_file(path: Path, hosts_file: Path, dns: str, port: int) -> None:
    path.write_text(
        f'allow-port = ["{port}"]\nallow-dest = ["127.0.0.0/8"]\n'
        f'hosts-file = "{hosts_file}"\ndns-server = ["{dns}"]\nheader-timeout = 5\ndrain-timeout = 2\n'
    )


def test_serve_reads_the_file(start_proxy, echo, tmp_path, hosts_file, dns_server):
    path = tmp_path / "gconnect.toml"
    policy_file(path, hosts_file, dns_server.address, echo.port)
    proxy = serve_with_file(start_proxy, path)
    with open_tunnel(proxy, f"echo.test:{echo.port}") as sock:
        sock.sendall(b"from file")
        assert recv_exactly(sock, 9) == b"from file"


def test_sighup_reloads_policy_and_keeps_open_tunnels(start_proxy, echo, tmp_path, hosts_file, dns_server):
    path = tmp_path / "gconnect.toml"
    policy_file(path, hosts_file, dns_server.address, echo.port)
    proxy = serve_with_file(start_proxy, path)
    old = open_tunnel(proxy, echo.target)

    policy_file(path, hosts_file, dns_server.address, echo.port + 1)  # the echo port no longer allowed
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("policy reloaded (generation 1)" in line for line in proxy.lines))
    status, _, body = exchange(proxy, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 403 and f"port {echo.port} is not allowed".encode() in body
    # The tunnel opened under the old policy still works, and the listener was never closed.
    old.sendall(b"still here")
    assert recv_exactly(old, 10) == b"still here"
    old.close()

    # A broken file is refused with its reason and the running policy stays.
    path.write_text("allow-port = [0]\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any("keeping the current configuration" in line and "allow-port" in line for line in proxy.lines)
    )
    status, _, _ = exchange(proxy, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 403

    # Back to the echo port: allowed again.
    policy_file(path, hosts_file, dns_server.address, echo.port)
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("policy reloaded (generation 2)" in line for line in proxy.lines))
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"


def test_sighup_keeps_command_line_options_and_names_restart_only_changes(
    start_proxy, echo, tmp_path, hosts_file, dns_server
):
    path = tmp_path / "gconnect.toml"
    policy_file(path, hosts_file, dns_server.address, echo.port + 1)
    # --allow-port on the command line wins over the file, before and after reload.
    proxy = start_proxy(
        "--listen", "127.0.0.1:0", "--config", str(path), "--allow-port", str(echo.port), defaults=False
    )
    path.write_text(path.read_text() + "max-clients = 7\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("policy reloaded" in line for line in proxy.lines))
    assert any("need a restart" in line and "max_clients" in line for line in proxy.lines)
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"cli")
        assert recv_exactly(sock, 3) == b"cli"


def test_sighup_without_a_file_is_logged(proxy):
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("nothing to reload" in line for line in proxy.lines))


def test_check_config_from_the_real_cli(tmp_path):
    path = write(tmp_path, 'listen = "127.0.0.1:3999"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert 'listen = ["127.0.0.1:3999"]' in result.stdout
