"""``--workers N``: worker processes on one port, supervised."""

from __future__ import annotations

import os
import signal

import pytest

from gconnect.testing.procfs import children, gone, open_fds

from ..conftest import exchange, open_tunnel, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(90)


def sockets(pid: int) -> int:
    return sum(link.startswith("socket:") for link in open_fds(pid).values())


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
        assert gone(pid)


def test_sighup_reloads_the_config_file_in_every_worker(start_proxy, echo, tmp_path, hosts_file, dns_server):
    from .test_configfile import policy_file

    path = tmp_path / "gconnect.toml"
    policy_file(path, hosts_file, dns_server.address, echo.port)
    proxy = start_proxy("--listen", "127.0.0.1:0", "--config", str(path), "--workers", "2", defaults=False)
    workers = children(proxy.pid)
    policy_file(path, hosts_file, dns_server.address, echo.port + 1)  # the echo port no longer allowed
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: sum("policy reloaded (generation 1)" in line for line in proxy.lines) == len(workers))
    # Whichever worker the kernel picks, the new policy holds.
    for _ in range(20):
        status, _, _ = exchange(proxy, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
        assert status == 403


def test_workers_stop_when_the_supervisor_dies(start_proxy, echo):
    proxy = start_proxy("--workers", "2")
    workers = children(proxy.pid)
    proxy.expected_exit = -signal.SIGKILL
    proxy.proc.kill()  # no chance to pass anything on
    proxy.proc.wait()

    wait_until(lambda: all(gone(pid) for pid in workers), timeout=15)
