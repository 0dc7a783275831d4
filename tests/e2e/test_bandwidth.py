"""Bandwidth limits and byte quotas, end to end: curl downloads through the
CLI in a subprocess from a bulk origin on loopback, ``-w %{speed_download}``.

Every transfer takes two seconds or so: long enough that the rate, not the
start, decides the speed; the tolerance is the issue's ±15 %.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..conftest import open_tunnel, read_head, wait_until
from .test_errors import proxy_status_error
from .test_metrics import metrics_url, scrape

pytestmark = pytest.mark.timeout(90)

RATE = 2_000_000
TOLERANCE = 0.15
CHUNK = b"x" * 65536


def bulk_handler(conn: socket.socket) -> None:
    """An HTTP/1.1 origin: ``GET /N`` answers N bytes, then the connection closes."""
    conn.settimeout(30)
    head, _ = read_head(conn)
    if not head:
        return
    size = int(head.split(b" ", 2)[1].strip(b"/") or b"0")
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
    while size > 0:
        conn.sendall(CHUNK[: min(size, len(CHUNK))])
        size -= len(CHUNK)


@pytest.fixture
def origin(upstream_factory):
    return upstream_factory(bulk_handler)


def curl(proxy, user: str | None, url: str, timeout: float = 30) -> subprocess.CompletedProcess:
    credentials = f"{user}:{'pw' if user == 'alice' else 'file-pw'}@" if user else ""
    cmd = ["curl", "-sS", "-p", "--max-time", str(timeout), "-o", "/dev/null"]
    cmd += ["-x", f"http://{credentials}{proxy.host}:{proxy.port}", "-w", "%{http_code} %{speed_download}", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)


def curl_heads(proxy, user: str, url: str) -> str:
    """The heads curl gets for *url* through *proxy* as *user* (password pw): the answer to CONNECT first."""
    proxy_url = f"http://{user}:pw@{proxy.host}:{proxy.port}"
    result = subprocess.run(
        ["curl", "-sS", "-p", "-D", "-", "-o", "/dev/null", "--max-time", "10", "-x", proxy_url, url],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return result.stdout


def speed(result: subprocess.CompletedProcess) -> float:
    assert result.returncode == 0, result.stderr
    status, value = result.stdout.split()
    assert status == "200", result.stdout
    return float(value)


def assert_near(value: float, expected: float, tolerance: float = TOLERANCE) -> None:
    assert abs(value - expected) <= expected * tolerance, f"{value:.0f} B/s, expected {expected:.0f} ± {tolerance:.0%}"


def test_one_download_at_the_users_rate_from_their_table(start_proxy, htpasswd, origin, tmp_path):
    config = tmp_path / "gconnect.toml"
    config.write_text(f'[users.alice]\nrate-per-user = "{RATE // 1000}k"\n')
    proxy = start_proxy("--config", str(config), "--auth-file", htpasswd)
    assert_near(speed(curl(proxy, "alice", f"http://{origin.target}/{2 * RATE}")), RATE)
    # carol has no table: not limited at all.
    assert speed(curl(proxy, "carol", f"http://{origin.target}/{4 * RATE}")) > 3 * RATE


def test_eight_parallel_downloads_share_the_users_rate(start_proxy, htpasswd, origin):
    proxy = start_proxy("--auth-file", htpasswd, "--rate-per-user", str(RATE))
    size = 3 * RATE // 8
    # One curl, eight transfers at once (a download manager): their clocks start together.
    cmd = ["curl", "-sS", "-p", "-Z", "--parallel-max", "8", "--max-time", "30"]
    cmd += ["-x", f"http://alice:pw@{proxy.host}:{proxy.port}", "-w", "%{http_code} %{size_download} %{time_total}\n"]
    for _ in range(8):
        cmd += ["-o", "/dev/null", f"http://{origin.target}/{size}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
    assert result.returncode == 0, result.stderr
    transfers = [line.split() for line in result.stdout.splitlines()]
    assert [(status, int(n)) for status, n, _ in transfers] == [("200", size)] * 8, result.stdout
    assert_near(8 * size / max(float(seconds) for _, _, seconds in transfers), RATE)


def test_a_second_user_is_not_slowed_by_the_first(start_proxy, htpasswd, origin):
    proxy = start_proxy("--auth-file", htpasswd, "--rate-per-user", str(RATE))
    url = f"http://{origin.target}/{2 * RATE}"
    with ThreadPoolExecutor(2) as pool:
        alice, carol = pool.map(lambda user: curl(proxy, user, url), ["alice", "carol"])
    assert_near(speed(alice), RATE)
    assert_near(speed(carol), RATE)


def test_quota_runs_out_on_the_third_download(start_proxy, htpasswd, origin):
    proxy = start_proxy("--auth-file", htpasswd, "--quota-bytes", "2M", "--quota-period", "day")
    url = f"http://{origin.target}/1000000"
    for n in range(2):
        speed(curl(proxy, "alice", url))
        wait_until(lambda n=n: len([line for line in proxy.access_lines() if "status=200" in line]) == n + 1)
    heads = curl_heads(proxy, "alice", url)
    assert heads.lower().startswith("http/1.1 429 "), heads
    headers = dict(line.split(": ", 1) for line in heads.splitlines()[1:] if ": " in line)
    assert 0 < int(headers["Retry-After"]) <= 86_400
    assert proxy_status_error(headers["Proxy-Status"]) == "http_request_denied"
    assert "quota" in headers["Proxy-Status"] and "alice" in headers["Proxy-Status"]
    # carol has her own quota, untouched.
    speed(curl(proxy, "carol", url))
    proxy.wait_access("reason=quota_exceeded")


def test_quota_close_ends_an_open_download(start_proxy, htpasswd, origin):
    proxy = start_proxy("--auth-file", htpasswd, "--quota-bytes", "1M", "--quota-close", "--rate-per-user", str(RATE))
    result = curl(proxy, "alice", f"http://{origin.target}/{10 * RATE}", timeout=20)
    assert result.returncode != 0  # cut off: curl got less than Content-Length
    line = proxy.wait_access("reason=quota_exceeded")
    down = int(line.split(" down=")[1].split()[0])
    # Closed at the first tick past the quota: at most half a second of the rate over it.
    assert 1_000_000 <= down <= 1_000_000 + RATE // 2 + 65536, line


def test_first_second_within_rate_and_burst_even_from_a_full_bucket(start_proxy, origin):
    burst = RATE // 2
    proxy = start_proxy("--rate-per-client", str(RATE), "--burst-per-client", str(burst), "--bucket-initial", "1")
    sock = open_tunnel(proxy, origin.target)
    sock.sendall(b"GET /%d HTTP/1.1\r\nHost: origin\r\n\r\n" % (10 * RATE))
    received = 0
    deadline = time.monotonic() + 1.0
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            received += len(sock.recv(1 << 20))
        except TimeoutError:
            break
    sock.close()
    # The full burst at once, then the rate: both, and no more. The client's second is the
    # proxy's give or take a few milliseconds of latency: 1 % of the rate is allowed for it.
    assert RATE + burst * 0.9 <= received <= RATE + burst + RATE // 100, received


def test_sighup_changes_the_rate_of_an_open_tunnel(start_proxy, origin, tmp_path):
    config = tmp_path / "gconnect.toml"
    config.write_text('rate-per-client = "1M"\n')
    proxy = start_proxy("--config", str(config))
    sock = open_tunnel(proxy, origin.target)
    sock.sendall(b"GET /%d HTTP/1.1\r\nHost: origin\r\n\r\n" % (20 * RATE))

    def rate_over(seconds: float) -> float:
        received, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            received += len(sock.recv(1 << 20))
        return received / (time.monotonic() - started)

    assert_near(rate_over(1.0), 1_000_000, 0.25)
    config.write_text('rate-per-client = "4M"\n')
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("policy reloaded" in line for line in proxy.lines))
    rate_over(0.2)  # what the old rate had let through meanwhile
    assert_near(rate_over(1.0), 4_000_000, 0.25)
    sock.close()


@pytest.mark.parametrize("relay", ["copy", "splice", "auto"])
def test_every_relay_mode_is_limited(start_proxy, htpasswd, origin, relay):
    proxy = start_proxy("--auth-file", htpasswd, "--rate-per-user", str(RATE), "--relay", relay)
    assert_near(speed(curl(proxy, "alice", f"http://{origin.target}/{2 * RATE}")), RATE)


def test_tls_listener_tunnels_are_limited(start_tls_proxy, htpasswd, origin, ca_file):
    proxy = start_tls_proxy("--auth-file", htpasswd, "--rate-per-user", str(RATE))
    cmd = ["curl", "-sS", "-p", "--max-time", "30", "-o", "/dev/null", "--proxy-cacert", str(ca_file)]
    cmd += ["-x", f"https://alice:pw@127.0.0.1:{proxy.port}", "-w", "%{http_code} %{speed_download}"]
    result = subprocess.run([*cmd, f"http://{origin.target}/{2 * RATE}"], capture_output=True, text=True, timeout=40)
    assert_near(speed(result), RATE)


def sink_handler(conn: socket.socket) -> None:
    """Reads until EOF, then answers how many bytes came."""
    conn.settimeout(30)
    total = 0
    while data := conn.recv(1 << 20):
        total += len(data)
    conn.sendall(str(total).encode())


def test_uploads_are_limited_too(start_proxy, upstream_factory):
    sink = upstream_factory(sink_handler)
    proxy = start_proxy("--rate-per-client", str(RATE))
    sock = open_tunnel(proxy, sink.target)
    payload = b"u" * (2 * RATE)
    started = time.monotonic()
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(30)
    assert int(sock.recv(64)) == len(payload)
    assert_near(len(payload) / (time.monotonic() - started), RATE)
    sock.close()


def test_per_user_accounting_records_and_metrics(start_proxy, htpasswd, origin):
    proxy = start_proxy(
        "--auth-file", htpasswd, "--accounting-interval", "0.5", "--metrics-user-label",
        "--metrics-listen", "127.0.0.1:0", "--quota-bytes", "1G", "--log-format", "json",
    )  # fmt: skip
    speed(curl(proxy, "alice", f"http://{origin.target}/300000"))
    speed(curl(proxy, "alice", f"http://{origin.target}/200000"))
    speed(curl(proxy, "carol", f"http://{origin.target}/100000"))

    def accounts() -> dict[str, dict]:
        totals: dict[str, dict] = {}
        for line in proxy.access_lines():
            record = json.loads(line)
            if record["event"] == "account":
                total = totals.setdefault(record["user"], {"down": 0, "tunnels": 0})
                total["down"] += record["down"]
                total["tunnels"] += record["tunnels"]
                assert record["quota"] == 1_000_000_000 and record["quota_used"] >= record["down"]
        return totals if {"alice", "carol"} <= set(totals) and totals["alice"]["tunnels"] == 2 else {}

    found = wait_until(accounts)
    assert 500_000 < found["alice"]["down"] < 501_000 and 100_000 < found["carol"]["down"] < 101_000
    values = scrape(metrics_url(proxy))
    assert values['gconnect_user_tunnels_total{user="alice"}'] == 2
    assert 500_000 < values['gconnect_user_bytes_total{direction="down",user="alice"}'] < 501_000


def test_no_user_label_without_the_option(start_proxy, htpasswd, origin):
    proxy = start_proxy("--auth-file", htpasswd, "--rate-per-user", "100M", "--metrics-listen", "127.0.0.1:0")
    speed(curl(proxy, "alice", f"http://{origin.target}/1000"))
    assert not any("user=" in name for name in scrape(metrics_url(proxy)))


def forwarded(proxy, user: str, url: str) -> subprocess.CompletedProcess:
    """curl without -p: a plain http:// request the proxy forwards."""
    cmd = ["curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-D", "-", "-w", "%{speed_download}"]
    cmd += ["-x", f"http://{user}:{'pw' if user == 'alice' else 'file-pw'}@{proxy.host}:{proxy.port}", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=40)


def test_forwarded_responses_are_limited_and_count_toward_the_quota(start_proxy, htpasswd, origin):
    port = origin.target.rpartition(":")[2]
    proxy = start_proxy(
        "--auth-file", htpasswd, "--rate-per-user", str(RATE), "--quota-bytes", str(3 * RATE),
        "--forward-port", port,
    )  # fmt: skip
    url = f"http://{origin.target}/{2 * RATE}"
    result = forwarded(proxy, "alice", url)
    assert result.stdout.startswith("HTTP/1.1 200"), result.stdout + result.stderr
    assert_near(float(result.stdout.splitlines()[-1]), RATE)
    proxy.wait_access("method=GET")
    assert forwarded(proxy, "alice", url).stdout.startswith("HTTP/1.1 200")  # 2 of 3 MB used before it
    refused = forwarded(proxy, "alice", url)
    assert refused.stdout.startswith("HTTP/1.1 429"), refused.stdout
    assert "quota" in refused.stdout and "Retry-After:" in refused.stdout
