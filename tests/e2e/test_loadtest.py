"""The load test, small: 200 tunnels for 10 s through a real gconnect, with zero failures.

Everything runs the real way, as processes: ``python -m gconnect.loadtest.target``, ``python -m
gconnect serve`` and ``python -m gconnect loadtest --proxy ...`` (the real command line), so a
change to the proxy, the locustfile, the runner or the command that breaks the load test fails
here rather than on an operator's machine.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on (\S+:\d+)\s*$", re.MULTILINE)

# Generous next to the 10 s run: locust alone takes ~2 s to import, and CI machines are slow.
STARTUP_TIMEOUT_SECONDS = 30.0
LOADTEST_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 10.0


@contextmanager
def listening_process(command: list[str], log_path: Path) -> Iterator[tuple[int, str]]:
    """Run ``command`` until the block ends; yield its pid and the HOST:PORT it printed."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process.pid, wait_for_listening(process, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_listening(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        time.sleep(0.05)
    pytest.fail(f"{process.args!r} did not start listening:\n{log_path.read_text(errors='replace')}")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[str]:
    command = [sys.executable, "-m", "gconnect.loadtest.target", "--listen", "127.0.0.1:0"]
    with listening_process(command, tmp_path / "target.log") as (_pid, address):
        yield address


def gconnect_command(tmp_path: Path, allow_port: str) -> list[str]:
    return [
        sys.executable, "-m", "gconnect", "serve",
        "--listen", "127.0.0.1:0",
        "--allow-port", allow_port,
        "--allow-dest", "127.0.0.0/8",
        "--access-log", str(tmp_path / "access.log"),
        "--log-level", "warning",
    ]  # fmt: skip


def run_loadtest(
    results: Path, proxy: str, proxy_pid: int, target: str, users: int, seconds: int
) -> subprocess.CompletedProcess[str]:
    """Run ``gconnect loadtest`` against a running proxy and target, as an operator would."""
    command = [
        sys.executable, "-m", "gconnect", "loadtest",
        "--users", str(users),
        "--spawn-rate", "100",
        "--run-time", f"{seconds}s",
        "--proxy", proxy,
        "--proxy-pid", str(proxy_pid),
        "--target", target,
        "--results", str(results),
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=LOADTEST_TIMEOUT_SECONDS)


def stats_by_type(results: Path) -> dict[str, dict[str, int]]:
    """Locust's final request and failure counts per request type, plus "Aggregated"."""
    with open(results / "locust_stats.csv", newline="") as stats:
        return {
            row["Type"] or row["Name"]: {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
            }
            for row in csv.DictReader(stats)
        }


def failure_rows(results: Path) -> list[dict[str, str]]:
    with open(results / "locust_failures.csv", newline="") as failures:
        return list(csv.DictReader(failures))


def test_200_tunnels_for_10_seconds_without_a_failure(tmp_path: Path, target: str) -> None:
    results = tmp_path / "results"
    with listening_process(gconnect_command(tmp_path, "1-65535"), tmp_path / "gconnect.log") as (pid, proxy):
        completed = run_loadtest(results, proxy, pid, target, users=200, seconds=10)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    stats = stats_by_type(results)
    assert stats["CONNECT"]["requests"] >= 200
    # 200 users echoing once a second for the ~8 s after the 2 s ramp.
    assert stats["ECHO"]["requests"] > 200
    assert stats["Aggregated"]["failures"] == 0
    assert failure_rows(results) == []
    summary = json.loads((results / "summary.json").read_text())
    assert summary["peak_users"] == 200
    assert summary["proxy_process"]["rss_peak_bytes"] > 0
    assert (results / "locust.html").stat().st_size > 0


def test_a_proxy_that_refuses_fails_the_load_test_with_the_reason(tmp_path: Path, target: str) -> None:
    results = tmp_path / "results"
    # Only port 1 is allowed, so every CONNECT to the target is refused with 403.
    with listening_process(gconnect_command(tmp_path, "1"), tmp_path / "gconnect.log") as (pid, proxy):
        completed = run_loadtest(results, proxy, pid, target, users=20, seconds=3)

    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "FAIL" in completed.stdout
    reasons = {(row["Method"], row["Error"]) for row in failure_rows(results)}
    assert reasons == {("CONNECT", "403")}
    assert stats_by_type(results)["CONNECT"]["failures"] > 0


def test_without_locust_the_command_says_which_extra_to_install(tmp_path: Path) -> None:
    # The real command line, in a process where locust cannot be imported (as after a plain
    # `pip install gconnect`): one line naming the extra, exit status 2, nothing started.
    blocked = "import sys; sys.modules['locust'] = None; from gconnect.__main__ import main; main()"
    command = [sys.executable, "-c", blocked, "loadtest", "--results", str(tmp_path / "results")]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_SECONDS)

    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.strip().splitlines() == [
        "gconnect loadtest needs locust, which is not installed: pip install 'gconnect[load]'"
    ]
    assert not (tmp_path / "results").exists()
