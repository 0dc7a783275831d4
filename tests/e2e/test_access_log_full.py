"""The access log on a full disk: tunnels keep working, every line in the file
is whole, dropped lines are counted in the file, the diagnostic log and
/metrics.

The proxy runs in a mount namespace of its own (``unshare --mount``) with its
log on a small tmpfs mounted there; the namespace, and with it the tmpfs, goes
away with the proxy's last process. The test reaches the files through
``/proc/PID/root``, which resolves paths in the proxy's namespace.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from gconnect.ops.logfile import FLUSH_BYTES, MAX_PENDING_BYTES

from ..conftest import open_tunnel, recv_exactly, wait_until
from .test_metrics import metrics_url, scrape

pytest.importorskip("prometheus_client")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1) for a private tmpfs"
    ),
]

#: Small, so that filling it takes a few writes, and room enough for the lines
#: held in memory meanwhile once it is freed.
TMPFS_BYTES = 4 * MAX_PENDING_BYTES
#: What one tunnel costs the file at least (a text line is ~150 bytes, JSON
#: writes two lines of ~250): sets the bound on tunnels driven until lines drop
#: (each process holds MAX_PENDING_BYTES, plus up to FLUSH_BYTES not yet flushed).
MIN_LINE_BYTES = 100
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z( [a-z_]+=[^ =]*)+")
TUNNEL_KEYS = {"client", "target", "status", "reason"}
CLOSED = 'gconnect_tunnels_total{reason="client_eof",status="200"}'
DROPPED = "gconnect_access_log_dropped_lines_total"


def parse(line: str, log_format: str) -> dict:
    """One access-log line as a dict; an AssertionError naming the line if it is not one."""
    if log_format == "json":
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert record["event"] in ("open", "close", "dropped"), line
        return record
    assert TEXT_LINE.fullmatch(line), f"not a whole key=value line: {line!r}"
    pairs = [pair.split("=", 1) for pair in line.split(" ")[1:]]
    fields = dict(pairs)
    # A line glued to the head of another has its keys twice.
    assert len(fields) == len(pairs), f"keys repeated: {line!r}"
    assert TUNNEL_KEYS <= set(fields) or set(fields) == {"event", "lines", "error"}, line
    return fields


def tunnel(proxy, echo, payload: bytes) -> None:
    """One tunnel carrying *payload* each way."""
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""


def fill(directory: Path) -> Path:
    """Write zeros into *directory* until its filesystem is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for _ in range(TMPFS_BYTES // 4096 + 2):
            try:
                # A page at a time until none is left; the log's last page keeps
                # its free tail, so the proxy's next flush is a short write.
                f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return filler
    raise AssertionError(f"{directory} did not fill up")


def logfile_lines(proxy) -> list[tuple[str, str]]:
    """(pid, message) of the diagnostic lines of gconnect.ops.logfile."""
    found = (re.search(r"gconnect\.ops\.logfile\[(\d+)\]: (.*)", line) for line in proxy.lines)
    return [(m.group(1), m.group(2)) for m in found if m]


def counted(url: str, tunnels: int) -> dict[str, float]:
    """The metrics once they count *tunnels* closed (workers write theirs every second)."""
    return wait_until(lambda: (values := scrape(url)).get(CLOSED) == tunnels and values)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("log_format", "workers"), [("text", "1"), ("json", "1"), ("text", "2")], ids=["text", "json", "text-2-workers"]
)
def test_full_disk_drops_whole_lines_counts_them_and_tunnels_keep_working(
    start_proxy, echo, tmp_path, log_format, workers
):
    mount_point = tmp_path / "logs"
    mount_point.mkdir()
    prefix = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs -o size={TMPFS_BYTES} tmpfs "$0" && exec "$@"',
        str(mount_point),
    ]
    proxy = start_proxy(
        "--access-log",
        str(mount_point / "access.log"),
        "--log-format",
        log_format,
        "--workers",
        workers,
        "--metrics-listen",
        "127.0.0.1:0",
        prefix=prefix,
    )
    url = metrics_url(proxy)
    inside = Path(f"/proc/{proxy.pid}/root{mount_point}")
    log_path = inside / "access.log"
    lines_per_tunnel = 2 if log_format == "json" else 1
    assert os.statvfs(inside).f_blocks * os.statvfs(inside).f_frsize == TMPFS_BYTES  # the proxy's own tmpfs
    assert not (mount_point / "access.log").exists()  # which is not ours

    driven = 0
    for _ in range(5):
        tunnel(proxy, echo, b"%06d" % driven)
        driven += 1
    wait_until(lambda: len(log_path.read_text().splitlines()) == driven * lines_per_tunnel)

    filler = fill(inside)
    # Lines held in memory are bounded: drive tunnels until the proxy drops some.
    batch = 250 * int(workers)  # each check waits for the workers' snapshots
    for _ in range(int(workers) * (MAX_PENDING_BYTES + FLUSH_BYTES) // MIN_LINE_BYTES // batch + 1):
        for _ in range(batch):
            tunnel(proxy, echo, b"%06d" % driven)
            driven += 1
        if counted(url, driven)[DROPPED] > 0:
            break
    else:
        raise AssertionError(f"no line was dropped after {driven} tunnels")
    wait_until(lambda: any("cannot write access log" in line and "No space left" in line for line in proxy.lines))
    dropped_while_full = scrape(url)[DROPPED]

    filler.unlink()

    def every_process_writes_again() -> bool:
        # Workers recover one by one, each at its next retry: until then new
        # lines of one whose held lines are not written yet are dropped too.
        failed = {pid for pid, what in logfile_lines(proxy) if what.startswith("cannot write")}
        recovered = {pid for pid, what in logfile_lines(proxy) if " written again; " in what}
        return bool(failed) and failed <= recovered

    wait_until(every_process_writes_again)
    for _ in range(3):
        tunnel(proxy, echo, b"after the outage")  # up=16: the others carry 6 bytes
        driven += 1
    counted(url, driven)

    def settled() -> list[dict] | None:
        text = log_path.read_text()
        if not text.endswith("\n"):
            return None
        records = [parse(line, log_format) for line in text.splitlines()]
        logged = sum(1 for r in records if "lines" not in r)
        dropped = sum(int(r["lines"]) for r in records if "lines" in r)
        return records if logged + dropped == driven * lines_per_tunnel else None

    records = wait_until(settled)
    markers = [r for r in records if "lines" in r]
    dropped = sum(int(r["lines"]) for r in markers)
    assert dropped == scrape(url)[DROPPED] >= dropped_while_full > 0
    assert {r["error"] for r in markers} == {"ENOSPC"}
    assert 1 <= len(markers) <= int(workers)  # one per outage and process
    # The tunnels after the outage are logged, after a line that tells of it.
    first_marker = min(i for i, r in enumerate(records) if "lines" in r)
    later = [r for r in records[first_marker:] if str(r.get("up")) == "16"]
    assert len(later) == 3
    reported = sum(
        int(m.group(1)) for m in (re.search(r"written again; (\d+) lines were dropped", x) for x in proxy.lines) if m
    )
    assert reported == dropped
