"""One state across workers, restarts and a fleet, end to end with the real CLI:
--max-clients-per-ip and the failed-login limiter hold across the workers of
--workers 2 (whichever worker accepts), totals survive a restart through
--state-dir, and two instances share their counts through a real redis-server,
which may stop and come back under load without changing any tunnel's outcome."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from gconnect.testing import procfs
from gconnect.testing.connections import client_ports_held_by
from gconnect.testing.process import free_port

from ..conftest import connect_over, open_tunnel, read_head, recv_exactly, wait_until
from .test_auth import auth_header
from .test_bandwidth import bulk_handler, curl_heads
from .test_metrics import metrics_url, scrape
from .test_supervisor import upgrade

pytestmark = pytest.mark.timeout(120)


def connect_head(target: str, headers: bytes = b"") -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + headers + b"\r\n"


def status_of(sock: socket.socket, head: bytes) -> int:
    sock.sendall(head)
    return int(read_head(sock)[0].split(b" ", 2)[1])


def workers_of(proxy) -> list[int]:
    pids = wait_until(lambda: len(procfs.children(proxy.pid)) == 2 and procfs.children(proxy.pid))
    return list(pids)  # type: ignore[arg-type]


def idle_connections_on_each(proxy, workers: list[int], each: int) -> dict[int, list[socket.socket]]:
    """Connections that *each* worker has accepted (and waits on for a request head)."""
    held: dict[int, list[socket.socket]] = {pid: [] for pid in workers}
    spare = []
    for _ in range(200):
        if all(len(socks) >= each for socks in held.values()):
            break
        sock = proxy.connect()
        pid = owner(proxy, workers, sock)
        (held[pid] if len(held[pid]) < each else spare).append(sock)
    for sock in spare:
        sock.close()
    assert all(len(socks) >= each for socks in held.values()), "both workers accept some connections"
    return held


def alternate(held: dict[int, list[socket.socket]]) -> list[tuple[int, socket.socket]]:
    """The connections in turn, one worker's then the other's."""
    (a, first), (b, second) = held.items()
    return [pair for both in zip(((a, s) for s in first), ((b, s) for s in second), strict=True) for pair in both]


def owner(proxy, workers: list[int], sock: socket.socket) -> int:
    port = sock.getsockname()[1]
    return wait_until(lambda: next((pid for pid in workers if port in client_ports_held_by(pid, proxy.port)), 0))  # type: ignore[return-value]


def test_per_address_limit_holds_across_two_workers(start_proxy, echo):
    # A client counts from its accept: hold 3 tunnels, both workers holding some.
    proxy = start_proxy("--workers", "2", "--max-clients-per-ip", "3", "--metrics-listen", "127.0.0.1:0")
    workers = workers_of(proxy)
    held: list[tuple[int, socket.socket]] = []
    for _ in range(100):
        if len(held) == 3 and len({pid for pid, _ in held}) == 2:
            break
        if len(held) == 3:
            held.pop()[1].close()  # all on one worker: try again for the other
            continue
        sock = open_when_room(proxy, echo.target)  # a closed one's slot is freed when its worker notices
        held.append((owner(proxy, workers, sock), sock))
    assert len({pid for pid, _ in held}) == 2, "both workers hold some tunnels"
    # Neither worker holds 3 itself: whichever accepts counts the other's too.
    assert [exchange_status(proxy, echo.target) for _ in range(10)] == [429] * 10
    # The supervisor's /metrics reads the shared table: one key in each worker's row.
    figures = scrape(metrics_url(proxy))
    assert figures['gconnect_state_keys{table="gauges"}'] == 2
    assert figures['gconnect_state_full_total{table="gauges"}'] == 0
    for _, sock in held:
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"
    held.pop()[1].close()
    # The slot comes back whichever worker held it.
    wait_until(lambda: exchange_status(proxy, echo.target) == 200)
    for _, sock in held:
        sock.close()


def open_when_room(proxy, target: str) -> socket.socket:
    def attempt() -> socket.socket | None:
        sock = proxy.connect()
        if status_of(sock, connect_head(target)) == 200:
            return sock
        sock.close()
        return None

    return wait_until(attempt)  # type: ignore[return-value]


def exchange_status(proxy, target: str) -> int:
    with proxy.connect() as sock:
        return status_of(sock, connect_head(target))


def test_failed_login_limit_holds_across_two_workers(start_proxy, htpasswd, echo):
    # Idle connections wait while the others are sorted out: a header timeout longer than that.
    proxy = start_proxy(
        "--workers", "2", "--auth-file", str(htpasswd), "--auth-failures-per-minute", "3", "--header-timeout", "60"
    )
    held = idle_connections_on_each(proxy, workers_of(proxy), 3)
    wrong = connect_head(echo.target, auth_header("alice", "guess") + b"\r\n")
    outcomes = [(pid, status_of(sock, wrong)) for pid, sock in alternate(held)]
    assert [status for _, status in outcomes] == [407, 407, 407, 429, 429, 429]
    assert {pid for pid, status in outcomes if status == 429} == set(held)
    for socks in held.values():
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_totals_survive_a_restart(start_proxy, htpasswd, echo, tmp_path, workers):
    state = tmp_path / "state"
    args = ("--workers", workers, "--state-dir", str(state), "--auth-file", str(htpasswd))
    args += ("--auth-failures-per-minute", "1")
    wrong = connect_head(echo.target, auth_header("alice", "guess") + b"\r\n")
    first = start_proxy(*args)
    with first.connect() as sock:
        assert status_of(sock, wrong) == 407
    with first.connect() as sock:
        assert status_of(sock, wrong) == 429
    assert first.stop() == 0
    assert (state / "totals.sqlite3").exists()
    # The failure counted before the restart is still counted (within its minute).
    second = start_proxy(*args)
    with second.connect() as sock:
        assert status_of(sock, wrong) == 429
    assert "totals loaded" in second.stderr


# --- a fleet through a real Redis ---------------------------------------------------


class RedisServer:
    """redis-server on a loopback port, with no persistence (a restart loses its data)."""

    def __init__(self, tmp_path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(64).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(answers)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    pytest.importorskip("redis", reason="the redis package is not installed (pip install 'gconnect[redis]')")
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def fleet_member(start_proxy, redis_server, *extra: str):
    proxy = start_proxy("--shared-state", redis_server.url, "--shared-state-period", "0.2", *extra)
    return proxy


def totals_known(proxy) -> float:
    return scrape(metrics_url(proxy)).get('gconnect_state_keys{table="totals"}', 0)


def refused(proxy, head: bytes) -> bool:
    with proxy.connect() as sock:
        return status_of(sock, head) == 429


def test_two_instances_share_the_per_address_limit(start_proxy, redis_server, echo):
    a = fleet_member(start_proxy, redis_server, "--max-clients-per-ip", "2")
    b = fleet_member(start_proxy, redis_server, "--max-clients-per-ip", "2")
    held = [open_tunnel(proxy, echo.target) for proxy in (a, b)]
    # Each instance holds one tunnel; within a period both see two.
    hello = connect_head(echo.target)
    wait_until(lambda: refused(a, hello) and refused(b, hello))
    held.pop().close()
    wait_until(lambda: not refused(a, hello))
    held.pop().close()


def test_two_instances_share_the_failed_login_limit(start_proxy, redis_server, htpasswd, echo):
    extra = ("--auth-file", str(htpasswd), "--auth-failures-per-minute", "2")
    a = fleet_member(start_proxy, redis_server, *extra)
    b = fleet_member(start_proxy, redis_server, *extra, "--metrics-listen", "127.0.0.1:0")
    wrong = connect_head(echo.target, auth_header("alice", "guess") + b"\r\n")
    for _ in range(2):
        with a.connect() as sock:
            assert status_of(sock, wrong) == 407
    # Once b knows of a's two failures, its first try from that address is refused.
    wait_until(lambda: totals_known(b) >= 1)
    assert refused(b, wrong)


def test_redis_stopped_and_restarted_under_load_changes_no_tunnel(start_proxy, redis_server, htpasswd, echo):
    extra = ("--auth-file", str(htpasswd), "--auth-failures-per-minute", "2", "--metrics-listen", "127.0.0.1:0")
    a = fleet_member(start_proxy, redis_server, *extra)
    b = fleet_member(start_proxy, redis_server, *extra)
    url = metrics_url(a)
    wait_until(lambda: scrape(url).get("gconnect_shared_state_up") == 1)
    right = f"Host: {echo.target}\r\n".encode() + auth_header("alice", "pw") + b"\r\n"
    outcomes: list[bool] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and len(outcomes) < 5000:
            for proxy in (a, b):
                try:
                    with connect_over(proxy.connect(), echo.target, headers=right) as sock:
                        sock.sendall(b"x")
                        outcomes.append(recv_exactly(sock, 1) == b"x")
                except (OSError, AssertionError):
                    outcomes.append(False)

    worker = threading.Thread(target=load)
    worker.start()
    wrong = connect_head(echo.target, auth_header("alice", "guess") + b"\r\n")
    try:
        wait_until(lambda: len(outcomes) >= 20)
        redis_server.stop()
        wait_until(lambda: scrape(url).get("gconnect_shared_state_up") == 0)
        before = len(outcomes)
        wait_until(lambda: len(outcomes) >= before + 20)
        # Failures counted while Redis is away reach the fleet once it is back.
        for _ in range(2):
            with a.connect() as sock:
                assert status_of(sock, wrong) == 407
        redis_server.start()
        wait_until(lambda: scrape(url).get("gconnect_shared_state_up") == 1)
        before = len(outcomes)
        wait_until(lambda: len(outcomes) >= before + 20)
    finally:
        stop.set()
        worker.join(70)
    assert outcomes and all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} tunnels failed"
    wait_until(lambda: totals_known(b) >= 1)
    with b.connect() as sock:
        assert status_of(sock, wrong) == 429
    assert a.stderr.count("unreachable") == 1, "logged once"


def test_totals_survive_an_upgrade_and_a_worker_crash(start_proxy, htpasswd, echo):
    # No --state-dir: the supervisor's memory carries them from worker to worker.
    proxy = start_proxy("--workers", "2", "--auth-file", str(htpasswd), "--auth-failures-per-minute", "1")
    wrong = connect_head(echo.target, auth_header("alice", "guess") + b"\r\n")
    with proxy.connect() as sock:
        assert status_of(sock, wrong) == 407
    old = set(workers_of(proxy))
    result = upgrade(proxy.pid)
    assert result.returncode == 0, result.stdout + result.stderr
    new = wait_until(lambda: (pids := set(procfs.children(proxy.pid))) and not pids & old and len(pids) == 2 and pids)
    for _ in range(4):  # whichever new worker accepts
        with proxy.connect() as sock:
            assert status_of(sock, wrong) == 429
    # A worker killed keeps its counts too: a failure from another address, on a worker we then kill.
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.connect((proxy.host, proxy.port))
    victim = owner(proxy, list(new), other)
    assert status_of(other, wrong) == 407
    other.close()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(procfs.children(proxy.pid)) - new) == 1)
    for _ in range(4):
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
            sock.connect((proxy.host, proxy.port))
            assert status_of(sock, wrong) == 429


def test_a_redis_that_never_answers_delays_no_handshake(start_proxy, echo):
    # A port that accepts (the kernel's queue) and never answers: each Redis call
    # of the keeper waits out its 1 s timeout, one after the other, in its thread.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(64)
        url = f"redis://127.0.0.1:{mute.getsockname()[1]}/0"
        proxy = start_proxy("--shared-state", url, "--shared-state-period", "0.5", "--max-clients-per-ip", "5")
        wait_until(lambda: "unreachable" in proxy.stderr, timeout=20)
        slowest, deadline = 0.0, time.monotonic() + 3
        for _ in range(300):
            if time.monotonic() > deadline:
                break
            started = time.monotonic()
            with open_tunnel(proxy, echo.target) as sock:
                sock.sendall(b"x")
                assert recv_exactly(sock, 1) == b"x"
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.5, f"a tunnel took {slowest:.3f} s while Redis hung"


# --- the quotas of issue 21 on the shared state ---------------------------------------


@pytest.fixture
def bulk(upstream_factory):
    """An origin that answers ``GET /N`` with N bytes (test_bandwidth's)."""
    return upstream_factory(bulk_handler)


def first_line(proxy, user: str, url: str) -> str:
    """The status line curl gets for *url* through *proxy* as *user* (password pw)."""
    return curl_heads(proxy, user, url).split("\r\n", 1)[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_spent_quota_stays_spent_after_a_restart(start_proxy, htpasswd, bulk, tmp_path, workers):
    args = ("--workers", workers, "--state-dir", str(tmp_path / "state"), "--auth-file", htpasswd)
    args += ("--quota-bytes", "1M", "--quota-period", "day")
    first = start_proxy(*args)
    assert first_line(first, "alice", f"http://{bulk.target}/1500000").startswith("HTTP/1.1 200 ")
    wait_until(lambda: first_line(first, "alice", f"http://{bulk.target}/1").startswith("HTTP/1.1 429 "))
    assert first.stop() == 0
    second = start_proxy(*args)
    assert first_line(second, "alice", f"http://{bulk.target}/1").startswith("HTTP/1.1 429 ")


def test_two_instances_share_one_users_quota(start_proxy, redis_server, htpasswd, bulk):
    extra = ("--auth-file", htpasswd, "--quota-bytes", "1M", "--quota-period", "day")
    a = fleet_member(start_proxy, redis_server, *extra)
    b = fleet_member(start_proxy, redis_server, *extra)
    assert first_line(a, "alice", f"http://{bulk.target}/1500000").startswith("HTTP/1.1 200 ")
    # b never moved alice's bytes: it refuses her once the fleet's total reaches it.
    wait_until(lambda: first_line(b, "alice", f"http://{bulk.target}/1").startswith("HTTP/1.1 429 "))
