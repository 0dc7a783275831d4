"""The supervisor under load: a worker killed with SIGKILL, an upgrade in place
(SIGUSR2 through ``gconnect upgrade``), and upgrades that must roll back.

Each load test holds 200 echo tunnels exchanging a message every 100 ms and
opens new tunnels one after another throughout (tests/traffic.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gconnect.testing.connections import accepting, client_ports_held_by
from gconnect.testing.procfs import children, gone, state

from ..conftest import exchange, open_tunnel, recv_exactly, wait_until
from ..traffic import HeldTunnels, NewTunnels

pytestmark = pytest.mark.timeout(180)

HELD = 200
DRAIN_SECONDS = 4.0


def upgrade(pid: int) -> subprocess.CompletedProcess:
    """``gconnect upgrade PID``, the real CLI."""
    return subprocess.run(
        [sys.executable, "-m", "gconnect", "upgrade", str(pid)], capture_output=True, text=True, timeout=90
    )


def config_file(path: Path, hosts_file: Path, dns: str, port: int, extra: str = "") -> None:
    path.write_text(
        f'allow-port = ["{port}"]\nallow-dest = ["127.0.0.0/8"]\nhosts-file = "{hosts_file}"\n'
        f'dns-server = ["{dns}"]\nheader-timeout = 5\ndrain-timeout = {DRAIN_SECONDS}\n{extra}'
    )


def big_head(target: str) -> bytes:
    """A CONNECT whose head is about 2,000 bytes."""
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Pad: {'p' * 2000}\r\n\r\n".encode()


def test_kill_9_of_a_worker_fails_no_new_connection(start_proxy, echo):
    proxy = start_proxy("--workers", "2")
    victim, survivor = children(proxy.pid)
    held = HeldTunnels(proxy, echo.target, HELD)
    stream = NewTunnels(proxy, echo.target)
    try:
        wait_until(lambda: stream.ok >= 20 and min(held.rounds) >= 3, timeout=30)
        # Frozen first, so that which connections it holds is exact when it dies.
        os.kill(victim, signal.SIGSTOP)
        wait_until(lambda: state(victim) == "T")
        theirs = client_ports_held_by(victim, proxy.port)
        # While it is frozen the other worker takes every new client: the queue is shared, not the victim's.
        ok = stream.ok
        wait_until(lambda: stream.ok >= ok + 10, timeout=15)
        os.kill(victim, signal.SIGKILL)
        mine = [i for i, port in enumerate(held.ports) if port not in theirs]
        lost = [i for i, port in enumerate(held.ports) if port in theirs]
        assert mine and lost, "the kernel gave every held tunnel to one worker"
        rounds = list(held.rounds)
        ok = stream.ok

        def replaced() -> bool:
            now = children(proxy.pid)
            return len(now) == 2 and victim not in now and all(accepting(pid, proxy.port) for pid in now)

        wait_until(replaced, timeout=15)
        wait_until(lambda: set(lost) <= set(held.ended), timeout=15)
        wait_until(lambda: stream.ok >= ok + 50 and all(held.rounds[i] >= rounds[i] + 10 for i in mine), timeout=30)
    finally:
        stream.stop()
        held.stop()
    assert not held.errors, held.errors[:5]
    # Only the tunnels the dead worker held ended; the survivor's kept every byte.
    assert set(held.ended) == set(lost)
    assert survivor in children(proxy.pid)
    # No new client saw a refused or reset connection, except one the dead worker had accepted.
    assert [f for f in stream.failures if f[1] not in theirs] == []
    assert any(f"pid {victim}, generation 1) exited: killed by SIGKILL; restarting it" in line for line in proxy.lines)


def test_usr2_upgrades_in_place_under_load(start_proxy, echo, tmp_path, hosts_file, dns_server):
    path = tmp_path / "gconnect.toml"
    config_file(path, hosts_file, dns_server.address, echo.port, "max-header-bytes = 16384\n")
    proxy = start_proxy("--listen", "127.0.0.1:0", "--config", str(path), "--workers", "2", defaults=False)
    old = children(proxy.pid)
    assert exchange(proxy, big_head(echo.target), shut=True)[0] == 200
    held = HeldTunnels(proxy, echo.target, HELD)
    stream = NewTunnels(proxy, echo.target)
    try:
        wait_until(lambda: stream.ok >= 20 and min(held.rounds) >= 3, timeout=30)
        # Observably new: max-header-bytes needs a restart (SIGHUP leaves it), so only a new generation has it.
        config_file(path, hosts_file, dns_server.address, echo.port, "max-header-bytes = 1024\n")
        sent = time.monotonic()
        result = upgrade(proxy.pid)
        assert result.returncode == 0, result.stderr
        assert "upgraded to generation 2" in result.stderr
        new = [pid for pid in children(proxy.pid) if pid not in old]
        assert len(new) == 2 and all(accepting(pid, proxy.port) for pid in new)
        wait_until(lambda: all(any(f"[{pid}]: draining" in line for line in proxy.lines) for pid in old))
        assert exchange(proxy, big_head(echo.target), shut=True)[0] == 431
        ok, rounds = stream.ok, list(held.rounds)
        # Old tunnels keep flowing: half end when we close them, the rest at the drain deadline.
        wait_until(lambda: all(held.rounds[i] >= rounds[i] + 5 for i in range(HELD)), timeout=DRAIN_SECONDS - 1)
        ours, theirs = list(range(HELD // 2)), list(range(HELD // 2, HELD))
        held.close(ours)
        wait_until(lambda: set(theirs) <= set(held.ended), timeout=DRAIN_SECONDS + 15)
        wait_until(lambda: all(gone(pid) for pid in old), timeout=15)
        wait_until(lambda: stream.ok >= ok + 50, timeout=30)
    finally:
        stream.stop()
        held.stop()
    assert not held.errors, held.errors[:5]
    assert stream.failures == []
    assert set(held.ended) == set(theirs)
    assert min(held.ended[i][0] for i in theirs) - sent >= DRAIN_SECONDS
    # Same supervisor, new workers only.
    assert proxy.proc.poll() is None and sorted(children(proxy.pid)) == sorted(new)
    assert proxy.wait_access("reason=shutdown")


def test_a_new_generation_that_fails_leaves_the_old_serving(start_proxy, echo, tmp_path, hosts_file, dns_server):
    path = tmp_path / "gconnect.toml"
    config_file(path, hosts_file, dns_server.address, echo.port)
    proxy = start_proxy("--listen", "127.0.0.1:0", "--config", str(path), "--workers", "2", defaults=False)
    old = sorted(children(proxy.pid))
    stream = NewTunnels(proxy, echo.target)
    try:
        wait_until(lambda: stream.ok >= 10)
        path.write_text("allow-port = [0]\n")  # no longer loads
        result = upgrade(proxy.pid)
        assert result.returncode == 1
        assert "generation 1 keeps serving" in result.stderr
        assert "exited with code 2 before it was ready" in result.stderr
        wait_until(lambda: sorted(children(proxy.pid)) == old)
        ok = stream.ok
        wait_until(lambda: stream.ok >= ok + 20)
    finally:
        stream.stop()
    assert stream.failures == []
    assert any("upgrade to generation 2 failed" in line for line in proxy.lines)


def test_a_new_generation_not_ready_in_time_is_stopped_and_one_worker_upgrades(
    start_proxy, echo, tmp_path, hosts_file, dns_server
):
    path = tmp_path / "gconnect.toml"
    config_file(path, hosts_file, dns_server.address, echo.port)
    # --supervise: a supervisor for a single worker, so that it can be upgraded.
    proxy = start_proxy("--listen", "127.0.0.1:0", "--config", str(path), "--supervise", defaults=False)
    (first,) = children(proxy.pid)
    # The new worker hangs at start: opening a FIFO no one writes to (an auth file on a hung mount).
    fifo = tmp_path / "users"
    os.mkfifo(fifo)
    config_file(path, hosts_file, dns_server.address, echo.port, f'auth-file = "{fifo}"\nready-timeout = 1\n')
    result = upgrade(proxy.pid)
    assert result.returncode == 1 and "was not ready within 1 s" in result.stderr, result.stderr
    wait_until(lambda: children(proxy.pid) == [first])
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"old")
        assert recv_exactly(sock, 3) == b"old"

    config_file(path, hosts_file, dns_server.address, echo.port)
    result = upgrade(proxy.pid)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(children(proxy.pid)) == 1 and first not in children(proxy.pid), timeout=DRAIN_SECONDS + 15)
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"new")
        assert recv_exactly(sock, 3) == b"new"


def test_upgrade_needs_a_supervisor(proxy, echo):
    result = upgrade(proxy.pid)
    assert result.returncode == 1 and "needs the supervisor" in result.stderr
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"alive")
        assert recv_exactly(sock, 5) == b"alive"


def test_upgrade_refuses_a_process_that_is_not_gconnect():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        result = upgrade(sleeper.pid)
        assert result.returncode == 1 and "is not gconnect" in result.stderr
        assert sleeper.poll() is None  # no signal was sent
    finally:
        sleeper.kill()
        sleeper.wait()
