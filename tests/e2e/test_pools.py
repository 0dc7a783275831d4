"""Pools of parent proxies end to end: the real CLI as child, real gconnect
parents, killed and stopped parents, routes, source addresses (the pieces on
their own: tests/unit/test_pools.py; tinyproxy as a parent: tests/interop/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from gconnect.testing.process import free_port

from ..conftest import exchange, open_tunnel, read_head, recv_exactly, wait_until
from .test_metrics import metrics_url, scrape

pytestmark = pytest.mark.timeout(90)


def via_counts(proxy, target: str) -> Counter:
    """How many tunnels to *target* each parent carried, from the access log's via=."""
    found = Counter()
    for line in proxy.access_lines():
        if f"target={target} " in line:
            found[line.split(" via=", 1)[1].split(" ", 1)[0]] += 1
    return found


def served(parent, target: str) -> int:
    return sum(f"target={target} " in line for line in parent.access_lines())


def tunnel(proxy, target: str, payload: bytes = b"ping") -> None:
    with open_tunnel(proxy, target) as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload


# --- the pieces ----------------------------------------------------------------------


# --- end to end ----------------------------------------------------------------------


def test_stopped_and_killed_parents_are_skipped_within_the_connect_timeout(start_proxy, echo):
    stopped, killed, alive = start_proxy(), start_proxy(), start_proxy()
    child = start_proxy(
        "--connect-timeout",
        "1",
        "--upstreams",
        f"three http://127.0.0.1:{stopped.port} http://127.0.0.1:{killed.port} http://127.0.0.1:{alive.port} "
        "fail-timeout=60",
        "--routes",
        "127.0.0.0/8=three",
        "--metrics-listen",
        "127.0.0.1:0",
    )
    os.kill(stopped.pid, signal.SIGSTOP)
    killed.proc.kill()
    killed.proc.wait(5)
    killed.expected_exit = -signal.SIGKILL
    try:

        def timed() -> float:
            started = time.monotonic()
            with open_tunnel(child, echo.target) as sock:
                took = time.monotonic() - started
                sock.sendall(b"x")
                assert recv_exactly(sock, 1) == b"x"
            return took

        with ThreadPoolExecutor(50) as pool:
            times = list(pool.map(lambda _: timed(), range(200)))
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    # Every one got its 200 (past the budget it would have been a 504); the margin
    # over the 1 s budget is this test's own threads on a busy machine.
    assert len(times) == 200 and max(times) < 1.5, max(times)
    wait_until(lambda: via_counts(child, echo.target) == {f"http://127.0.0.1:{alive.port}": 200})
    # Each went out once, logged once.
    outs = [line for line in child.lines if "is out for 60 s" in line]
    assert len(outs) == 2, outs
    values = scrape(metrics_url(child))
    label = 'pool="three",url="http://127.0.0.1:{}"'
    assert values[f"gconnect_upstream_up{{{label.format(alive.port)}}}"] == 1
    assert values[f"gconnect_upstream_up{{{label.format(killed.port)}}}"] == 0
    assert values[f"gconnect_upstream_up{{{label.format(stopped.port)}}}"] == 0
    assert values[f'gconnect_upstream_tunnels_total{{outcome="ok",{label.format(alive.port)}}}'] == 200
    assert values[f'gconnect_upstream_tunnels_total{{outcome="connect_error",{label.format(killed.port)}}}'] >= 1
    assert values[f'gconnect_upstream_tunnels_total{{outcome="timeout",{label.format(stopped.port)}}}'] >= 1


def test_a_parent_comes_back_after_fail_timeout_and_by_its_connect_check(start_proxy, echo):
    stopped, other = start_proxy(), start_proxy()
    port = free_port()
    restarted = start_proxy("--listen", f"127.0.0.1:{port}")
    child = start_proxy(
        "--connect-timeout",
        "0.5",
        "--upstreams",
        f"passive http://127.0.0.1:{stopped.port} http://127.0.0.1:{other.port} strategy=first fail-timeout=0.3",
        "--upstreams",
        f"checked http://127.0.0.1:{port} http://127.0.0.1:{other.port} strategy=first fail-timeout=60 "
        "check=connect check-interval=0.1",
        "--routes",
        "echo.test=passive",
        "--routes",
        "127.0.0.1/32=checked",
    )
    named = f"echo.test:{echo.port}"
    stopped_url, other_url = f"http://127.0.0.1:{stopped.port}", f"http://127.0.0.1:{other.port}"
    # Passive: out while stopped, one probe tunnel after fail-timeout brings it back.
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        tunnel(child, named)
        out_at = time.monotonic()
        wait_until(lambda: any(f"{stopped.port} is out for 0.3 s" in line for line in child.lines))
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    tunnel(child, named)  # within fail-timeout: straight to the other one, though it runs again
    wait_until(lambda: via_counts(child, named) == {other_url: 2})
    # A tunnel every 50 ms until one goes through the stopped parent again.
    wait_until(lambda: tunnel(child, named) or via_counts(child, named).get(stopped_url), 5, 0.05)
    assert time.monotonic() - out_at >= 0.3
    assert via_counts(child, named)[stopped_url] >= 1  # the probe, then every tunnel ("first")
    assert any(f"{stopped.port} is back in rotation (a tunnel got through)" in line for line in child.lines)

    # Active: killed, out for a minute, back without a tunnel once it listens again.
    restarted.proc.kill()
    restarted.proc.wait(5)
    restarted.expected_exit = -signal.SIGKILL
    tunnel(child, echo.target)
    wait_until(lambda: any(f"{port} is out for 60 s" in line for line in child.lines))
    start_proxy("--listen", f"127.0.0.1:{port}")
    wait_until(lambda: any(f"{port} is back in rotation (its connect check" in line for line in child.lines), 5)


def test_a_parents_403_is_passed_on_and_not_retried_and_a_5xx_fails_over(start_proxy, echo, upstream_factory):
    denying = start_proxy("--deny-dest", "127.0.0.1/32")
    fine = start_proxy()
    answers: list[bytes] = []

    def failing(conn: socket.socket) -> None:
        answers.append(read_head(conn)[0])
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    broken = upstream_factory(failing)
    child = start_proxy(
        "--upstreams",
        f"strict http://127.0.0.1:{denying.port} http://127.0.0.1:{fine.port} strategy=first",
        "--upstreams",
        f"flaky http://127.0.0.1:{broken.port} http://127.0.0.1:{fine.port} strategy=first",
        "--routes",
        "127.0.0.0/8=strict",
        "--routes",
        "echo.test=flaky",
    )
    for _ in range(2):
        status, _, body = exchange(child, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
        assert status == 403 and b"answered 403 Forbidden" in body
    # Both times the verdict of the first parent, which stays in rotation; never the second.
    wait_until(lambda: served(denying, echo.target) == 2)
    refused = child.wait_access(f"target={echo.target} ")
    assert f"via=http://127.0.0.1:{denying.port} status=403" in refused and "reason=parent_denied" in refused
    assert served(fine, echo.target) == 0 and echo.accepted == 0
    named = f"echo.test:{echo.port}"
    tunnel(child, named)
    tunnel(child, named)
    assert len(answers) == 2  # a 5xx is not held against the parent: tried again first
    wait_until(lambda: via_counts(child, named) == {f"http://127.0.0.1:{fine.port}": 2})
    assert not any("is out for" in line for line in child.lines)


def test_routes_choose_pools_by_glob_and_cidr(start_proxy, echo, hosts_file, tmp_path):
    hosts_file.write_text(hosts_file.read_text() + "127.0.0.1 app.corp.test\n")
    corp, lab = start_proxy(), start_proxy()
    path = tmp_path / "routes.toml"
    path.write_text(
        f'[upstreams.corp]\nurls = ["http://127.0.0.1:{corp.port}"]\n'
        f'[upstreams.lab]\nurls = ["http://127.0.0.1:{lab.port}"]\n'
        '[[routes]]\nfor = ["*.corp.test"]\nvia = "corp"\n'
        '[[routes]]\nfor = ["echo.test"]\nvia = "direct"\n'
        '[[routes]]\nfor = ["127.0.0.0/8"]\nvia = "lab"\n'
    )
    child = start_proxy("--config", str(path))
    by_name, direct, by_cidr = f"app.corp.test:{echo.port}", f"echo.test:{echo.port}", echo.target
    for target in (by_name, direct, by_cidr):
        tunnel(child, target)
    assert f"via=http://127.0.0.1:{corp.port} " in child.wait_access(f"target={by_name} ")
    assert f"via=http://127.0.0.1:{lab.port} " in child.wait_access(f"target={by_cidr} ")
    assert f"addr={echo.target} via=- " in child.wait_access(f"target={direct} ")
    wait_until(lambda: served(corp, by_name) == 1 and served(lab, by_cidr) == 1)
    assert served(corp, by_cidr) == served(lab, by_name) == 0


def test_source_addresses_alternate_at_the_target_direct_and_through_a_parent(start_proxy, upstream_factory):
    peers: list[str] = []

    def record(conn: socket.socket) -> None:
        peers.append(conn.getpeername()[0])
        conn.sendall(b"k")

    target = upstream_factory(record)
    parent = start_proxy()
    child = start_proxy("--bind-address", "127.0.0.2", "--bind-address", "127.0.0.3")
    for _ in range(4):
        with open_tunnel(child, target.target) as sock:
            assert recv_exactly(sock, 1) == b"k"
    assert peers == ["127.0.0.2", "127.0.0.3"] * 2
    chained = start_proxy(
        "--bind-address", "127.0.0.2", "--bind-address", "127.0.0.3", "--upstream", f"http://127.0.0.1:{parent.port}"
    )
    for _ in range(4):
        with open_tunnel(chained, target.target) as sock:
            assert recv_exactly(sock, 1) == b"k"
    wait_until(lambda: served(parent, target.target) == 4)
    clients = [line.split("client=", 1)[1].split(":", 1)[0] for line in parent.access_lines()]
    assert clients == ["127.0.0.2", "127.0.0.3"] * 2


def test_a_bind_address_not_ours_stops_the_start():
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "serve", "--listen", "127.0.0.1:0", "--bind-address", "192.0.2.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "cannot start" in result.stderr and "192.0.2.1" in result.stderr


def test_least_connections_counts_open_tunnels_until_they_close(start_proxy, echo):
    first, second = start_proxy(), start_proxy()
    child = start_proxy(
        "--upstreams",
        f"lc http://127.0.0.1:{first.port} http://127.0.0.1:{second.port} strategy=least-connections",
        "--routes",
        "127.0.0.0/8=lc",
    )
    held = open_tunnel(child, echo.target)  # both idle: the first in turn
    with open_tunnel(child, echo.target):  # the first carries one: the second
        pass
    wait_until(lambda: served(second, echo.target) == 1)
    # The second's tunnel is closed, the first's still open: the second again, twice.
    for _ in range(2):
        tunnel(child, echo.target)
    held.close()
    wait_until(lambda: sum(via_counts(child, echo.target).values()) == 4)
    assert via_counts(child, echo.target) == {f"http://127.0.0.1:{first.port}": 1, f"http://127.0.0.1:{second.port}": 3}


def test_when_every_parent_is_out_they_are_tried_anyway(start_proxy, echo):
    port = free_port()
    parent = start_proxy("--listen", f"127.0.0.1:{port}")
    child = start_proxy("--upstream", f"http://127.0.0.1:{port}")
    tunnel(child, echo.target)
    parent.proc.kill()
    parent.proc.wait(5)
    parent.expected_exit = -signal.SIGKILL
    status, _, _ = exchange(child, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 502
    wait_until(lambda: any(f"{port} is out for 10 s" in line for line in child.lines))
    # Out for ten seconds, but the only parent there is: tried, and back at once.
    start_proxy("--listen", f"127.0.0.1:{port}")
    tunnel(child, echo.target)
    wait_until(lambda: any(f"{port} is back in rotation" in line for line in child.lines))


def test_upstream_metrics_with_workers_are_summed_by_the_supervisor(start_proxy, echo):
    alive = start_proxy()
    dead, alive_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{alive.port}"
    # The dead parent first: each worker's first tunnel tries it and takes it out.
    child = start_proxy(
        "--workers", "2", "--metrics-listen", "127.0.0.1:0", "--upstream", dead, "--upstream", alive_url
    )
    for _ in range(10):
        tunnel(child, echo.target)
    url = metrics_url(child)
    ok = f'gconnect_upstream_tunnels_total{{outcome="ok",pool="default",url="{alive_url}"}}'
    values = wait_until(lambda: (found := scrape(url)).get(ok) == 10 and found)
    assert values[f'gconnect_upstream_up{{pool="default",url="{alive_url}"}}'] == 1
    assert values[f'gconnect_upstream_up{{pool="default",url="{dead}"}}'] == 0
    assert values[f'gconnect_upstream_tunnels_total{{outcome="connect_error",pool="default",url="{dead}"}}'] >= 1
