"""Ready means ready: the listening line and systemd's READY=1 only once every
worker accepts; RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on drain; and no
signal gconnect does not use can end it.

systemd is played by a unix datagram socket the test binds and names in
NOTIFY_SOCKET, as systemd does for Type=notify services.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gconnect.ops.signals import unused
from gconnect.testing.connections import accepting
from gconnect.testing.procfs import children, environ

from ..conftest import exchange, open_tunnel, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(90)


class NotifySocket:
    """The service manager's end of sd_notify."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout: float = 20.0) -> dict[str, str]:
        """The next message, as KEY -> VALUE."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.partition("=")[::2] for line in data.splitlines())

    def until(self, key: str, timeout: float = 20.0) -> list[dict[str, str]]:
        """Messages up to and including the first with *key*."""
        seen = []
        while not seen or key not in seen[-1]:
            seen.append(self.next(timeout))
        return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def test_ready_only_once_every_worker_accepts(start_proxy, notify):
    proxy = start_proxy("--workers", "2", env={"NOTIFY_SOCKET": notify.path})
    # The listening line has been read: by then every worker is accepting.
    workers = children(proxy.pid)
    assert len(workers) == 2 and all(accepting(pid, proxy.port) for pid in workers)
    assert sum("gconnect listening on" in line for line in proxy.lines) == 1
    message = notify.next()
    assert message["READY"] == "1" and "2 workers serving" in message["STATUS"]
    # Workers do not talk to systemd (NotifyAccess=main would drop it anyway).
    for pid in workers:
        assert "NOTIFY_SOCKET" not in environ(pid)


def test_no_ready_and_no_listening_line_when_a_worker_never_gets_ready(tmp_path, notify):
    fifo = tmp_path / "users"
    os.mkfifo(fifo)  # opening it blocks: the workers never get ready
    args = ["--listen", "127.0.0.1:0", "--workers", "2", "--auth-file", str(fifo), "--ready-timeout", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NOTIFY_SOCKET": notify.path},
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "was not ready within 1 s" in result.stderr
    assert "listening on" not in result.stderr and "Traceback" not in result.stderr
    notify.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        notify.sock.recv(4096)


def test_sighup_is_reloading_then_ready_once_every_worker_reloaded(start_proxy, notify, echo, tmp_path, hosts_file):
    from .test_configfile import policy_file

    path = tmp_path / "gconnect.toml"
    policy_file(path, hosts_file, "127.0.0.1:9", echo.port)
    proxy = start_proxy(
        "--listen", "127.0.0.1:0", "--config", str(path), "--workers", "2", defaults=False,
        env={"NOTIFY_SOCKET": notify.path},
    )  # fmt: skip
    assert notify.next()["READY"] == "1"
    policy_file(path, hosts_file, "127.0.0.1:9", echo.port + 1)  # the echo port no longer allowed
    proxy.proc.send_signal(signal.SIGHUP)
    reloading = notify.next()
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert notify.next()["READY"] == "1"
    # READY=1 came after every worker reloaded: whichever the kernel picks, the new policy holds.
    for _ in range(20):
        status, _, _ = exchange(proxy, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
        assert status == 403


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["alone", "supervised"])
def test_stopping_is_sent_when_the_drain_begins(start_proxy, notify, echo, workers):
    proxy = start_proxy("--drain-timeout", "20", *workers, env={"NOTIFY_SOCKET": notify.path})
    assert notify.next()["READY"] == "1"
    sock = open_tunnel(proxy, echo.target)
    proxy.proc.send_signal(signal.SIGTERM)
    assert notify.next()["STOPPING"] == "1"
    assert proxy.proc.poll() is None  # still draining the open tunnel
    sock.sendall(b"draining")
    assert recv_exactly(sock, 8) == b"draining"
    sock.close()
    assert proxy.proc.wait(15) == 0


def test_signals_gconnect_does_not_use_are_not_fatal(start_proxy, echo):
    alone = start_proxy()
    supervised = start_proxy("--workers", "2")
    workers = children(supervised.pid)
    strays = [*unused(), signal.SIGUSR2]
    assert signal.SIGALRM in strays and signal.SIGRTMIN in strays and signal.SIGRTMAX in strays
    for pid in (alone.pid, workers[0]):
        for signum in strays:
            os.kill(pid, signum)
    for signum in unused():  # SIGUSR2 would start an upgrade: test_supervisor's business
        os.kill(supervised.pid, signum)
    for proxy in (alone, supervised):
        with open_tunnel(proxy, echo.target) as sock:
            sock.sendall(b"still here")
            assert recv_exactly(sock, 10) == b"still here"
    assert alone.proc.poll() is None and supervised.proc.poll() is None
    assert children(supervised.pid) == workers  # no worker died and was replaced


def test_sigquit_drains_like_sigterm(start_proxy, echo):
    proxy = start_proxy()
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"q")
        assert recv_exactly(sock, 1) == b"q"
    assert proxy.stop(signal.SIGQUIT) == 0
    wait_until(lambda: any("signal 3: stopping" in line for line in proxy.lines))
