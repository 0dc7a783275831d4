"""Running the C load generator: its server for the run, and one client command per measurement."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gconnect.testing.process import pin_to

SERVER_START_TIMEOUT_S = 10.0
# A client command gets its own duration plus this much before the harness gives up on it.
CLIENT_GRACE_S = 60.0


class LoadGenError(RuntimeError):
    """A load generator command failed or timed out; the measurement it was making is lost."""


@dataclass(frozen=True)
class ServerPorts:
    echo: int
    sink: int
    source: int

    def target(self, kind: str) -> str:
        return f"127.0.0.1:{getattr(self, kind)}"


class LoadGen:
    """The compiled loadgen binary, run on the load CPUs."""

    def __init__(self, binary: Path, cpus: frozenset[int] | None) -> None:
        self.binary = binary
        self.cpus = cpus
        #: Every loadgen process starts pinned to the load CPUs (None: wherever the kernel puts it).
        self.pin = pin_to(cpus) if cpus is not None else None
        self.server_pid: int | None = None

    @contextmanager
    def server(self) -> Iterator[ServerPorts]:
        """Run ``loadgen serve`` for the duration of the block; always stopped by PID."""
        process = subprocess.Popen(
            [str(self.binary), "serve", "--max-seconds", "7200"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=self.pin,
        )
        try:
            line = read_line(process, SERVER_START_TIMEOUT_S)
            if not line.startswith("ports "):
                raise LoadGenError(f"loadgen serve said {line!r}")
            echo, sink, source = (int(p) for p in line.split()[1:4])
            self.server_pid = process.pid
            yield ServerPorts(echo, sink, source)
        finally:
            self.server_pid = None
            stop_process(process)

    def argv(self, command: str, proxy: str, target: str, **options: object) -> list[str]:
        argv = [str(self.binary), command, "--proxy", proxy, "--target", target]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv

    def run(self, command: str, proxy: str, target: str, duration: float, **options: object) -> dict:
        """Run one client command (expected to take about duration seconds) and return its JSON result."""
        limit = duration + CLIENT_GRACE_S
        argv = self.argv(command, proxy, target, max_seconds=int(limit), **options)
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=limit + 5,
                preexec_fn=self.pin,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadGenError(f"loadgen {command} did not finish in {limit + 5:.0f} s") from exc
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise LoadGenError(f"loadgen {command} exited {done.returncode}: {done.stderr.strip()[-300:]}")
        return json.loads(lines[-1])

    def start_hold(self, proxy: str, target: str, conns: int, open_timeout: float) -> subprocess.Popen[str]:
        """Start ``loadgen hold``; the caller talks to it with hold_command and stops it with stop_process."""
        argv = self.argv(
            "hold",
            proxy,
            target,
            conns=conns,
            open_timeout=open_timeout,
            max_seconds=int(open_timeout + 300),
        )
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=self.pin,
        )

    def start_bulk(self, proxy: str, target: str, conns: int, seconds: float) -> subprocess.Popen[str]:
        """Start ``loadgen bulk --dir up`` in the background (bench.burst's pushers)."""
        argv = self.argv(
            "bulk", proxy, target, dir="up", conns=conns, seconds=seconds, max_seconds=int(seconds + CLIENT_GRACE_S)
        )
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=self.pin,
        )


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """One line of the process's stdout within timeout seconds (loadgen line-buffers its output)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise LoadGenError(f"no output from loadgen within {timeout:.0f} s")
    line = process.stdout.readline()
    if not line:
        raise LoadGenError(f"loadgen exited ({process.poll()}) without output")
    return line.strip()


def hold_command(process: subprocess.Popen[str], command: str, timeout: float) -> dict:
    """Send one command to a running ``loadgen hold`` and return its JSON answer."""
    assert process.stdin is not None
    process.stdin.write(command + "\n")
    process.stdin.flush()
    return json.loads(read_line(process, timeout))


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM then SIGKILL one process the harness started, by its PID, with bounded waits."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def pause(seconds: float) -> None:
    """Let TIME_WAIT sockets and CPU caches of the last measurement settle before the next one."""
    time.sleep(seconds)
