"""Prometheus metrics scraped from the real CLI while tunnels are open."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import pytest

from gconnect.testing.procfs import children, environ, gone

from ..conftest import exchange, open_tunnel, recv_exactly, wait_until

pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.timeout(60)

METRICS_ON = re.compile(r"gconnect metrics on (\S+):(\d+)$")


def metrics_url(proxy) -> str:
    match = next(m for m in (METRICS_ON.search(line) for line in proxy.lines) if m)
    return f"http://{match.group(1)}:{match.group(2)}/metrics"


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_scrape_during_live_tunnels(start_proxy, echo):
    proxy = start_proxy("--metrics-listen", "127.0.0.1:0")
    url = metrics_url(proxy)
    first = open_tunnel(proxy, echo.target)
    second = open_tunnel(proxy, echo.target)
    first.sendall(b"x" * 1000)
    assert recv_exactly(first, 1000) == b"x" * 1000

    values = scrape(url)
    assert values["gconnect_tunnels_open"] == 2
    assert values["gconnect_clients"] == 2
    assert values["gconnect_handshake_seconds_count"] == 2
    assert values['gconnect_handshake_seconds_bucket{le="+Inf"}'] == 2
    assert 0 < values["gconnect_handshake_seconds_sum"] < 10
    assert values["process_open_fds"] >= 4

    first.close()
    wait_until(lambda: scrape(url)["gconnect_tunnels_open"] == 1)
    status, _, _ = exchange(proxy, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    assert status == 502
    values = scrape(url)
    assert values['gconnect_tunnels_total{reason="client_eof",status="200"}'] == 1
    assert values['gconnect_tunnels_total{reason="connect_error",status="502"}'] == 1
    assert values['gconnect_bytes_total{direction="up"}'] == 1000
    assert values['gconnect_bytes_total{direction="down"}'] == 1000
    assert values["gconnect_auth_failures_total"] == 0
    second.close()
    wait_until(lambda: scrape(url)["gconnect_tunnels_open"] == 0)


def test_dns_lookups_and_cache_hits(start_proxy, echo, dns_server):
    dns_server.add("metrics.test", a=["127.0.0.1"], ttl=300)
    proxy = start_proxy("--metrics-listen", "127.0.0.1:0")
    url = metrics_url(proxy)
    for _ in range(3):
        open_tunnel(proxy, f"metrics.test:{echo.port}").close()
    values = scrape(url)
    assert values["gconnect_dns_lookups_total"] == 1
    assert values["gconnect_dns_cache_hits_total"] == 2


def test_a_slow_scraper_does_not_hold_up_tunnels(start_proxy, echo):
    proxy = start_proxy("--metrics-listen", "127.0.0.1:0")
    host, port = metrics_url(proxy).split("/")[2].rsplit(":", 1)
    # A scraper that sends half a request and stalls.
    with socket.create_connection((host, int(port))) as stalled:
        stalled.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        with open_tunnel(proxy, echo.target) as sock:
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
        assert time.monotonic() - started < 2


def worker_series(values: dict[str, float], name: str) -> dict[str, float]:
    """``name{worker="I"}`` values by worker label."""
    found = {}
    for key, value in values.items():
        match = re.fullmatch(rf'{name}\{{worker="(\d+)"\}}', key)
        if match:
            found[match.group(1)] = value
    return found


def counters(values: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in values.items() if "_total" in key or key.endswith("_count")}


@pytest.mark.timeout(90)
def test_workers_are_summed_by_the_supervisor(start_proxy, echo):

    proxy = start_proxy("--workers", "2", "--metrics-listen", "127.0.0.1:0")
    url = metrics_url(proxy)
    workers = children(proxy.pid)
    snapshot_dir = environ(workers[0])["GCONNECT_METRICS_DIR"]
    assert os.path.isdir(snapshot_dir)

    held = []
    for i in range(20):
        sock = open_tunnel(proxy, echo.target)
        sock.sendall(b"%02d" % i)
        assert recv_exactly(sock, 2) == b"%02d" % i
        held.append(sock)
    # Workers write a snapshot every second: poll until it shows the tunnels.
    values = wait_until(lambda: (v := scrape(url))["gconnect_tunnels_open"] == 20 and v)
    per_worker = worker_series(values, "gconnect_worker_tunnels_open")
    assert set(per_worker) == {"0", "1"}
    assert sum(per_worker.values()) == 20
    # SO_REUSEPORT spread the 20 tunnels: one worker getting all is a 2 ** -19 event.
    assert all(open_ < 20 for open_ in per_worker.values())
    assert set(worker_series(values, "gconnect_worker_open_fds")) == {"0", "1"}
    assert set(worker_series(values, "gconnect_worker_resident_memory_bytes")) == {"0", "1"}
    assert values["gconnect_handshake_seconds_count"] == 20
    assert values["process_open_fds"] == sum(worker_series(values, "gconnect_worker_open_fds").values())

    for sock in held:
        sock.close()
    closed = 'gconnect_tunnels_total{reason="client_eof",status="200"}'
    values = wait_until(lambda: (v := scrape(url)).get(closed) == 20 and v["gconnect_tunnels_open"] == 0 and v)
    assert values['gconnect_bytes_total{direction="up"}'] == 40
    before = counters(values)

    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: len(children(proxy.pid)) == 2 and workers[0] not in children(proxy.pid), timeout=20)
    after = wait_until(
        lambda: (
            (v := scrape(url)).get('gconnect_worker_restarts_total{worker="0"}') == 1
            and set(worker_series(v, "gconnect_worker_tunnels_open")) == {"0", "1"}
            and v
        ),
        timeout=20,
    )
    for key, value in before.items():
        assert after[key] >= value, key
    assert after[closed] == 20
    assert after['gconnect_bytes_total{direction="up"}'] == 40

    assert proxy.stop() == 0
    assert not os.path.exists(snapshot_dir)


@pytest.mark.timeout(90)
def test_an_upgrade_keeps_the_counters_and_is_not_a_restart(start_proxy, echo):
    from .test_supervisor import upgrade

    proxy = start_proxy("--workers", "2", "--metrics-listen", "127.0.0.1:0", "--drain-timeout", "20")
    url = metrics_url(proxy)
    old = children(proxy.pid)
    for i in range(10):
        with open_tunnel(proxy, echo.target) as sock:
            sock.sendall(b"%02d" % i)
            assert recv_exactly(sock, 2) == b"%02d" % i
    held = open_tunnel(proxy, echo.target)  # keeps its old worker draining
    closed = 'gconnect_tunnels_total{reason="client_eof",status="200"}'
    wait_until(lambda: scrape(url).get(closed) == 10 and scrape(url)["gconnect_tunnels_open"] == 1)
    result = upgrade(proxy.pid)
    assert result.returncode == 0, result.stderr
    # An old worker (draining one tunnel) and its successor share an index: both counted, once.
    values = wait_until(lambda: (v := scrape(url))["gconnect_tunnels_open"] == 1 and v[closed] == 10 and v)
    assert sum(worker_series(values, "gconnect_worker_tunnels_open").values()) == 1
    held.close()
    wait_until(lambda: all(gone(pid) for pid in old), timeout=30)
    values = wait_until(lambda: (v := scrape(url)).get(closed) == 11 and v["gconnect_tunnels_open"] == 0 and v)
    assert set(worker_series(values, "gconnect_worker_tunnels_open")) == {"0", "1"}
    assert worker_series(values, "gconnect_worker_restarts_total") == {"0": 0, "1": 0}
