"""``--workers N``: worker processes on one port, supervised."""

from __future__ import annotations

import os
import signal

import pytest

from .conftest import open_tunnel, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(90)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count


def test_two_workers_share_the_port_and_both_serve(start_proxy, echo):
    proxy = start_proxy("--workers", "2")
    workers = children(proxy.pid)
    assert len(workers) == 2
    baseline = {pid: sockets(pid) for pid in workers}
    held = []
    for i in range(40):
        sock = open_tunnel(proxy, echo.target)
        sock.sendall(b"%02d" % i)
        assert recv_exactly(sock, 2) == b"%02d" % i
        held.append(sock)
    # SO_REUSEPORT hashes connections over the workers: each holds some tunnels.
    for pid in workers:
        assert sockets(pid) > baseline[pid], "a worker served no tunnel"
    for sock in held:
        sock.close()
    wait_until(lambda: len(proxy.access_lines()) >= 40)
    assert all("status=200" in line for line in proxy.access_lines())


def test_dead_worker_is_restarted(start_proxy, echo):
    proxy = start_proxy("--workers", "2")
    first = children(proxy.pid)
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: len(children(proxy.pid)) == 2 and first[0] not in children(proxy.pid))
    for _ in range(10):
        with open_tunnel(proxy, echo.target) as sock:
            sock.sendall(b"ok")
            assert recv_exactly(sock, 2) == b"ok"
    assert any("exited" in line and "restarting" in line for line in proxy.lines)


def test_sigterm_stops_workers_and_parent(start_proxy, echo):
    proxy = start_proxy("--workers", "2")
    workers = children(proxy.pid)
    assert proxy.stop() == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_config_to_args_round_trips_every_field():
    # Workers rebuild the parent's configuration from arguments: nothing may be lost.
    from gconnect.cli import build_config, config_to_args, serve

    argv = [
        "--allow-port",
        "443",
        "--allow-port",
        "8000-8999",
        "--allow-dest",
        "10.0.0.0/8",
        "--deny-dest",
        "10.1.0.0/16",
        "--dns-server",
        "127.0.0.1:5353",
        "--dns-server",
        "[::1]:53",
        "--idle-timeout",
        "12.5",
        "--hosts-file",
        "",
        "--relay",
        "copy",
        "--log-format",
        "json",
        "--upstream",
        "http://us%40er:p%3Ass@127.0.0.1:3129",
        "--upstream-for",
        "*.corp.example",
        "--proxy-protocol",
        "--proxy-protocol-from",
        "127.0.0.0/8",
        "--metrics-listen",
        "127.0.0.1:9100",
    ]
    config = build_config(**serve.make_context("serve", argv).params)
    rebuilt = build_config(**serve.make_context("serve", config_to_args(config)).params)
    assert rebuilt == config


def test_workers_stop_when_the_supervisor_dies(start_proxy, echo):
    proxy = start_proxy("--workers", "2")
    workers = children(proxy.pid)
    proxy.expected_exit = -signal.SIGKILL
    proxy.proc.kill()  # no chance to pass anything on
    proxy.proc.wait()

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(pid) for pid in workers), timeout=15)
