"""systemd socket activation: LISTEN_FDS / LISTEN_PID set by the test the way
systemd does (the socket moved to descriptor 3, the variables naming the PID
that exec()s gconnect), alone and with a supervisor."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from gconnect.testing.procfs import children, environ

from ..conftest import connect_over, open_tunnel, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(90)


#: What systemd does between fork and exec: the socket on descriptor 3
#: (SD_LISTEN_FDS_START), LISTEN_FDS=1 and LISTEN_PID=the PID that execs.
LAUNCH = """
import os, sys
fd, pid = int(sys.argv[1]), sys.argv[2]
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=pid or str(os.getpid()))
os.execvp(sys.argv[3], sys.argv[3:])
"""


def systemd_launcher(sock: socket.socket, listen_pid: str = "") -> tuple[list[str], tuple[int, ...]]:
    """A command prefix that hands *sock* over the way systemd does (LISTEN_PID: ours unless given)."""
    fd = sock.fileno()
    assert fd > 3
    return [sys.executable, "-c", LAUNCH, str(fd), listen_pid], (fd,)


@pytest.fixture
def systemd_socket():
    """The listening socket systemd would hold (deploy/gconnect.socket)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["alone", "supervised"])
def test_serves_the_socket_it_was_handed(start_proxy, echo, systemd_socket, workers):
    launcher, fds = systemd_launcher(systemd_socket)
    # The fixture's --listen 127.0.0.1:0 is not bound: the handed socket is served instead.
    proxy = start_proxy(*workers, prefix=launcher, pass_fds=fds)
    port = systemd_socket.getsockname()[1]
    assert proxy.addresses == [("127.0.0.1", port)]
    assert any("socket(s) passed by systemd" in line for line in proxy.lines)
    for _ in range(6):
        with open_tunnel(proxy, echo.target) as sock:
            sock.sendall(b"activated")
            assert recv_exactly(sock, 9) == b"activated"
    for pid in children(proxy.pid) if workers else []:
        assert not environ(pid).keys() & {"LISTEN_FDS", "LISTEN_PID"}  # they are for the process systemd started


def test_a_restart_refuses_nothing(start_proxy, echo, systemd_socket):
    launcher, fds = systemd_launcher(systemd_socket)
    first = start_proxy("--workers", "2", prefix=launcher, pass_fds=fds)
    assert first.stop() == 0
    # Down: the socket (held by "systemd") still completes handshakes into its queue.
    waiting = socket.create_connection(systemd_socket.getsockname(), timeout=10)
    start_proxy("--workers", "2", prefix=launcher, pass_fds=fds)
    with connect_over(waiting, echo.target) as sock:
        sock.sendall(b"queued")
        assert recv_exactly(sock, 6) == b"queued"


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["alone", "supervised"])
def test_a_drain_leaves_the_socket_queueing_for_the_next_start(start_proxy, echo, systemd_socket, workers):
    launcher, fds = systemd_launcher(systemd_socket)
    first = start_proxy(*workers, "--drain-timeout", "10", prefix=launcher, pass_fds=fds)
    held = open_tunnel(first, echo.target)
    first.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: any(f"[{first.pid}]: signal {int(signal.SIGTERM)}: " in line for line in first.lines))
    # Draining, and the socket is systemd's: unlike a socket of our own, it still
    # completes handshakes, and the client waits for whoever starts next.
    waiting = socket.create_connection(systemd_socket.getsockname(), timeout=10)
    held.sendall(b"draining")
    assert recv_exactly(held, 8) == b"draining"
    start_proxy(*workers, prefix=launcher, pass_fds=fds)
    with connect_over(waiting, echo.target) as sock:
        sock.sendall(b"queued")
        assert recv_exactly(sock, 6) == b"queued"
    held.close()
    assert first.proc.wait(5) == 0


def test_listen_fds_for_another_process_are_not_ours(start_proxy, echo, systemd_socket):
    launcher, fds = systemd_launcher(systemd_socket, listen_pid="1")
    proxy = start_proxy(prefix=launcher, pass_fds=fds)
    assert proxy.port != systemd_socket.getsockname()[1]  # it bound --listen instead
    assert any("LISTEN_FDS is meant for process 1" in line for line in proxy.lines)
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"own")
        assert recv_exactly(sock, 3) == b"own"


def test_a_handed_descriptor_that_is_not_a_listening_socket_is_refused():
    not_listening = socket.socket()
    try:
        launcher, fds = systemd_launcher(not_listening)
        result = subprocess.run(
            [*launcher, sys.executable, "-m", "gconnect", "serve"],
            pass_fds=fds,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ),
        )
    finally:
        not_listening.close()
    assert result.returncode == 1
    assert "cannot start: descriptor 3 is a socket that is not listening" in result.stderr
