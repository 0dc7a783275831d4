"""``--workers N``: N worker processes on one port, supervised by this one.

Each worker is a full ``gconnect serve`` with its own gevent hub, binding the
same addresses with SO_REUSEPORT so the kernel spreads connections over them
(nginx's ``reuseport``, HAProxy's ``nbproc`` era). The parent keeps one socket
per address bound but not listening, which holds the port (port 0 becomes a
real port once), starts the workers, waits until each says it is ready,
restarts a worker that dies, passes SIGTERM/SIGINT/SIGHUP/SIGUSR1 on, and exits
once the workers have exited after a stop. Workers append to one access-log
file with O_APPEND, one write per flush, so lines stay whole.
"""

from __future__ import annotations

import logging
import os
import signal
import socket as _stdlib_socket
import subprocess
import sys
import time
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.os import nb_read

from ..config import Config

log = logging.getLogger(__name__)

#: How long a worker may take to say it is ready.
WORKER_START_SECONDS = 20.0
#: A worker that dies sooner than this after starting is restarted only after
#: RESTART_BACKOFF_SECONDS, so a crash loop does not spin (systemd's RestartSec).
MIN_UPTIME_SECONDS = 2.0
RESTART_BACKOFF_SECONDS = 1.0
#: Environment variable carrying the descriptor a worker writes one byte to when ready.
READY_FD_ENV = "GCONNECT_READY_FD"
#: Environment variable carrying a pipe's read end whose write end only the
#: supervisor holds: EOF on it means the supervisor is gone, and the worker stops.
PARENT_FD_ENV = "GCONNECT_PARENT_FD"
#: Environment variables carrying the directory a worker writes its metrics
#: snapshots to (``workermetrics``), and the worker's index (its ``worker`` label).
METRICS_DIR_ENV = "GCONNECT_METRICS_DIR"
WORKER_INDEX_ENV = "GCONNECT_WORKER_INDEX"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def reserve_ports(config: Config) -> tuple[list[_stdlib_socket.socket], list[tuple[str, int]]]:
    """Bind (without listening) one SO_REUSEPORT socket per listen address."""
    holders = []
    bound = []
    for host, port in config.listen:
        family = _stdlib_socket.AF_INET6 if ":" in host else _stdlib_socket.AF_INET
        sock = _stdlib_socket.socket(family, _stdlib_socket.SOCK_STREAM)
        sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
        sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEPORT, 1)
        if family == _stdlib_socket.AF_INET6:
            sock.setsockopt(_stdlib_socket.IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        holders.append(sock)
        bound.append((host, sock.getsockname()[1]))
    return holders, bound


class Supervisor:
    """Start, watch and stop the worker processes."""

    def __init__(
        self,
        config: Config,
        worker_args: list[str],
        bound: list[tuple[str, int]],
        *,
        metrics_dir: str | None = None,
        on_worker_exit: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics_dir = metrics_dir
        #: Called with (index, pid) when a worker exits and will be restarted.
        self.on_worker_exit = on_worker_exit
        self.worker_args = worker_args
        self.bound = bound
        self.procs: list[subprocess.Popen | None] = [None] * config.workers
        self.stopping = False
        self.done = Event()
        # Never written: its write end closes when we die, however we die.
        self.alive_r, self.alive_w = os.pipe()

    def _argv(self) -> list[str]:
        listen: list[str] = []
        for host, port in self.bound:
            listen += ["--listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        return [sys.executable, "-m", "gconnect", "serve", *self.worker_args, *listen, "--workers", "1", "--reuse-port"]

    def start_worker(self, index: int) -> subprocess.Popen:
        """Start worker *index* and wait until it listens."""
        ready_r, ready_w = os.pipe()
        env = {**os.environ, READY_FD_ENV: str(ready_w), PARENT_FD_ENV: str(self.alive_r), WORKER_INDEX_ENV: str(index)}
        if self.metrics_dir is not None:
            env[METRICS_DIR_ENV] = self.metrics_dir
        try:
            proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(ready_w, self.alive_r),
                env=env,
            )
        finally:
            os.close(ready_w)
        # Known at once, so a stop signal arriving while it starts reaches it too.
        self.procs[index] = proc
        try:
            ready = b""
            with gevent.Timeout(WORKER_START_SECONDS, False):
                ready = _wait_ready(ready_r)
        finally:
            os.close(ready_r)
        if not ready:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise RuntimeError(f"worker {index} did not start (exit code {proc.returncode})")
        log.info("worker %d started (pid %d)", index, proc.pid)
        return proc

    def watch(self, index: int) -> None:
        """Restart worker *index* whenever it exits, until we are stopping."""
        while not self.stopping:
            proc = self.procs[index]
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if self.stopping:
                return
            log.warning("worker %d (pid %d) exited with %s; restarting", index, proc.pid, code)
            if self.on_worker_exit is not None:
                self.on_worker_exit(index, proc.pid)
            if time.monotonic() - started < MIN_UPTIME_SECONDS:
                gevent.sleep(RESTART_BACKOFF_SECONDS)
            if not self.stopping:
                try:
                    self.start_worker(index)
                except RuntimeError as exc:
                    log.error("%s", exc)
                    gevent.sleep(RESTART_BACKOFF_SECONDS)

    def forward(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signum)
        if self.stopping:
            gevent.spawn(self._wait_all)

    def _wait_all(self) -> None:
        deadline = self.config.drain_timeout + 10
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.done.set()


def watch_parent(fd: int, on_gone) -> None:  # type: ignore[no-untyped-def]
    """In a worker: call *on_gone* once the supervisor's end of *fd* closes."""

    def wait() -> None:
        os.set_blocking(fd, False)
        while nb_read(fd, 1):
            pass
        os.close(fd)
        log.warning("supervisor is gone: stopping")
        on_gone()

    gevent.spawn(wait)


def _wait_ready(fd: int) -> bytes:
    """One byte from the worker, or b"" if it exited first."""
    os.set_blocking(fd, False)
    return nb_read(fd, 1)


def run(  # type: ignore[no-untyped-def]
    config: Config,
    worker_args: list[str],
    announce,
    *,
    metrics_dir: str | None = None,
    on_worker_exit: Callable[[int, int], None] | None = None,
) -> int:
    """Run the supervisor until stopped; return the exit code. With
    *metrics_dir*, workers write their metrics snapshots there and
    *on_worker_exit* hears of each worker that exits before a stop."""
    holders, bound = reserve_ports(config)
    supervisor = Supervisor(config, worker_args, bound, metrics_dir=metrics_dir, on_worker_exit=on_worker_exit)
    for signum in _FORWARDED:
        gevent.signal_handler(signum, supervisor.forward, signum)
    try:
        for index in range(config.workers):
            if supervisor.stopping:
                break
            supervisor.start_worker(index)
        if not supervisor.stopping:
            announce(bound)
        watchers = [gevent.spawn(supervisor.watch, i) for i in range(config.workers)]
        supervisor.done.wait()
        gevent.killall(watchers)
    finally:
        for proc in supervisor.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for sock in holders:
            sock.close()
    return 0
