"""The supervisor: worker processes on listeners it owns, restarted when they
die, replaced generation by generation on SIGUSR2.

It holds every listening socket until it stops (``listeners``) and starts
each worker as ``python -m gconnect serve`` with them inherited
(``workerlink``). Its PID never changes: systemd and scripts watch one process.

- **Start.** Every worker of a generation loads its config, checks itself and
  reports ready within ``--ready-timeout``; only then are they all told to
  accept, and once each accepts, ``gconnect listening on`` is printed and
  ``READY=1`` sent.
- **Crash.** A worker that dies is logged (which one, and the exit code or
  signal) and replaced at once (after RESTART_BACKOFF_SECONDS if it lived less
  than MIN_UPTIME_SECONDS). Only the tunnels it held end: connections waiting
  to be accepted stay in the shared queue and the other workers take them.
- **Upgrade (SIGUSR2).** A new generation starts from the program and config
  file on disk now, on the same sockets. If it is not ready in time (or a
  worker exits), its workers are stopped before they accepted anything and the
  old generation keeps serving (roll-back). Otherwise the old workers get
  SIGTERM: they stop accepting, keep their tunnels for their --drain-timeout,
  and exit. ``gconnect upgrade`` hears the outcome (``notify``).
- **Signals.** SIGHUP and SIGUSR1 go on to the workers (SIGHUP between
  ``RELOADING=1`` and ``READY=1``, the latter once every worker has reloaded);
  SIGTERM, SIGINT and SIGQUIT drain every worker and exit 0; others are
  ignored (``signals``).
- **Stop.** Before any worker hears of it, the sockets the supervisor bound
  stop listening for every process (``sockets.stop_listening``): new clients
  are refused and those queued but not accepted are reset, at once, instead of
  waiting in a queue nobody accepts from until the drain ends. Sockets systemd
  passed are only closed here: systemd holds them, and queueing while the
  service restarts is what socket activation is for.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
from collections.abc import Callable

import click
import gevent
from gevent.event import Event

from ..config import Config
from . import notify, signals, sockets
from .configfile import ConfigFileError
from .state import ServiceState
from .workerlink import WorkerProcess

log = logging.getLogger(__name__)

#: A worker that dies sooner than this after starting is restarted only after
#: RESTART_BACKOFF_SECONDS, so a crash loop does not spin (systemd's RestartSec).
MIN_UPTIME_SECONDS = 2.0
RESTART_BACKOFF_SECONDS = 1.0
#: How long past its --drain-timeout a stopping worker may take to exit before SIGKILL.
DRAIN_MARGIN_SECONDS = 10.0
#: How long a SIGHUP waits for the workers' reports before READY=1 anyway.
RELOAD_REPORT_SECONDS = 10.0


def how_it_ended(code: int | None) -> str:
    """``exited: killed by SIGKILL``, ``exited with code 2``, for the log."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"exited: killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"exited: killed by signal {-code}"
    return f"exited with code {code}"


class Generation:
    """The workers started together from one reading of the program and config."""

    def __init__(self, number: int, size: int, ready_timeout: float, drain_timeout: float) -> None:
        self.number = number
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        #: By index; a replacement takes its predecessor's place.
        self.workers: list[WorkerProcess | None] = [None] * size

    def running(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w is not None and w.proc.poll() is None]


class Supervisor:
    """Start, watch, upgrade and stop the worker processes."""

    def __init__(
        self,
        config: Config,
        worker_args: list[str],
        sockets: list[socket.socket],
        *,
        notifier: notify.Notifier,
        activated: bool = False,
        config_path: str | None = None,
        command_line: dict | None = None,
        metrics_dir: str | None = None,
        on_worker_exit: Callable[[int, int, bool], None] | None = None,
        state: ServiceState | None = None,
    ) -> None:
        self.config = config
        self.worker_args = worker_args
        #: The listening sockets every worker inherits; closed at stop().
        self.sockets = sockets
        #: True if systemd passed the sockets (it keeps them listening across our restarts).
        self.activated = activated
        self.notifier = notifier
        self.config_path = config_path
        self.command_line = command_line or {}
        self.metrics_dir = metrics_dir
        #: Called with (index, pid, restarted) when a worker exits, before any stop.
        self.on_worker_exit = on_worker_exit
        #: The shared state whose rows the workers write (``ops.state``).
        self.state = state
        self.current: Generation | None = None
        self.live: set[WorkerProcess] = set()
        self.numbers = iter(range(1, sys.maxsize))
        self.stopping = False
        self.upgrading = False
        self.hups = 0
        self.stop_requested = Event()
        self.done = Event()

    def argv(self) -> list[str]:
        # Workers never serve /metrics: they write snapshots this process sums.
        return [sys.executable, "-m", "gconnect", "serve", *self.worker_args, "--metrics-listen", ""]

    def install_signals(self) -> None:
        signals.ignore_unused()
        for signum in signals.STOP_SIGNALS:
            gevent.signal_handler(signum, self.stop, signum)
        gevent.signal_handler(signal.SIGHUP, self.reload)
        gevent.signal_handler(signal.SIGUSR1, self.forward, signal.SIGUSR1)
        gevent.signal_handler(signal.SIGUSR2, self.upgrade)

    def status(self) -> str:
        gen = self.current
        return f"generation {gen.number}: {len(gen.running())} workers serving" if gen else "starting"

    def spawn(self, gen: Generation, index: int) -> WorkerProcess:
        fds = [sock.fileno() for sock in self.sockets]
        state = None
        if self.state is not None and (row := self.state.take_row()) is not None:
            state = (self.state.region.fd, row)
        try:
            worker = WorkerProcess(
                self.argv(), fds, index=index, generation=gen.number, metrics_dir=self.metrics_dir, state=state
            )
        except BaseException:
            if self.state is not None and state is not None:
                self.state.give_back(state[1])
            raise
        worker.hups_at_start = self.hups
        gen.workers[index] = worker
        self.live.add(worker)
        gevent.spawn(self._watch, gen, worker)
        return worker

    def _wait_for(self, workers: list[WorkerProcess], what: str, timeout: float, deadline: float) -> str:
        """Empty once every worker has set its event *what* (before *deadline*), else why not."""
        for worker in workers:
            event = getattr(worker, what)
            while not event.is_set():
                if self.stopping:
                    return "stopping"
                if worker.silent.is_set():
                    return f"{worker!r} {how_it_ended(worker.wait(1.0))} before it was {what}"
                if time.monotonic() >= deadline:
                    return f"{worker!r} was not {what} within {timeout:g} s"
                gevent.wait([event, worker.silent, self.stop_requested], timeout=deadline - time.monotonic(), count=1)
        return ""

    def _release(self, workers: list[WorkerProcess], timeout: float) -> str:
        """Wait until *workers* are ready, let them accept, wait until they do; "" or why not.
        On failure every one of them is stopped: killed if it never accepted, else drained."""
        deadline = time.monotonic() + timeout
        reason = self._wait_for(workers, "ready", timeout, deadline)
        if not reason:
            for worker in workers:
                worker.go()
                if worker.hups_at_start != self.hups:
                    worker.send_signal(signal.SIGHUP)  # a reload it may have missed while starting
            reason = self._wait_for(workers, "accepting", timeout, deadline)
        if reason:
            for worker in workers:
                worker.send_signal(signal.SIGTERM) if worker.released else worker.kill()
        return reason

    def start_generation(self, size: int, ready_timeout: float, drain_timeout: float) -> tuple[Generation, str]:
        """A new generation of *size* workers, all accepting; or why not (it is stopped then)."""
        gen = Generation(next(self.numbers), size, ready_timeout, drain_timeout)
        workers: list[WorkerProcess] = []
        for index in range(size):
            if self.stopping:  # starting a worker yields: the listeners may be closed now
                break
            workers.append(self.spawn(gen, index))
        return gen, self._release(workers, ready_timeout) or ("stopping" if self.stopping else "")

    def _watch(self, gen: Generation, worker: WorkerProcess) -> None:
        started = time.monotonic()
        code = worker.wait()
        worker.close()
        if self.state is not None:
            self.state.give_back(worker.state_row)  # before a replacement starts: its totals kept
        self.live.discard(worker)
        crashed = not self.stopping and gen is self.current and gen.workers[worker.index] is worker
        crashed = crashed and worker.released
        if self.on_worker_exit is not None:
            self.on_worker_exit(worker.index, worker.pid, crashed)
        if self.stopping:
            log.info("%r %s", worker, how_it_ended(code))
            if not self.live:
                self.done.set()
        elif crashed:
            log.warning("%r %s; restarting it", worker, how_it_ended(code))
            self._replace(gen, worker.index, time.monotonic() - started)
        elif worker.released:
            log.info("%r %s", worker, how_it_ended(code))

    def _replace(self, gen: Generation, index: int, uptime: float) -> None:
        if uptime < MIN_UPTIME_SECONDS:
            gevent.sleep(RESTART_BACKOFF_SECONDS)
        while not self.stopping and gen is self.current:
            worker = self.spawn(gen, index)
            reason = self._release([worker], gen.ready_timeout)
            if not reason:
                if gen is not self.current:  # an upgrade finished meanwhile: drain it with its generation
                    worker.send_signal(signal.SIGTERM)
                log.info("%r replaced the worker that died", worker)
                self.notifier.status(self.status())
                return
            log.error("cannot replace worker %d: %s", index, reason)
            gevent.sleep(RESTART_BACKOFF_SECONDS)

    def forward(self, signum: int) -> None:
        for worker in list(self.live):
            if worker.released:
                worker.send_signal(signum)

    def reload(self) -> None:
        if self.stopping:
            return
        self.hups += 1
        targets = self.current.running() if self.current else []
        self.notifier.reloading("reloading the configuration in every worker")
        for worker in targets:
            worker.reloaded.clear()
        self.forward(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_REPORT_SECONDS
        for worker in targets:
            if worker.released:
                gevent.wait([worker.reloaded, worker.silent], timeout=max(0.0, deadline - time.monotonic()), count=1)
        if not self.stopping:
            self.notifier.ready(self.status())

    def stop(self, signum: int) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_requested.set()
        # First, so that no client queues behind a worker already draining.
        if self.activated:
            for sock in self.sockets:
                sock.close()
        else:
            sockets.stop_listening(self.sockets)
        log.info("signal %d: listeners closed; stopping %d workers", signum, len(self.live))
        self.notifier.stopping("draining open tunnels")
        for worker in list(self.live):
            worker.send_signal(signal.SIGTERM) if worker.released else worker.kill()
        if not self.live:
            self.done.set()
        drain_timeout = self.current.drain_timeout if self.current else self.config.drain_timeout
        gevent.spawn(self._kill_late, list(self.live), drain_timeout)

    def _kill_late(self, workers: list[WorkerProcess], drain_timeout: float) -> None:
        """SIGKILL whichever of *workers* outlives its drain by DRAIN_MARGIN_SECONDS."""
        deadline = time.monotonic() + drain_timeout + DRAIN_MARGIN_SECONDS
        for worker in workers:
            if worker.wait(max(0.0, deadline - time.monotonic())) is None:
                log.warning("%r is still running %g s after its drain: SIGKILL", worker, DRAIN_MARGIN_SECONDS)
                worker.kill()

    def upgrade(self) -> None:
        if self.stopping or self.upgrading or self.current is None:
            message = "SIGUSR2: " + ("an upgrade is already running" if self.upgrading else "not serving yet")
            log.warning("%s; ignored", message)
            notify.report_upgrade(False, message)
            return
        self.upgrading = True
        try:
            self._upgrade(self.current)
        finally:
            self.upgrading = False

    def _upgrade(self, old: Generation) -> None:
        size, ready_timeout, drain_timeout = self._plan(len(old.workers))
        log.info("SIGUSR2: starting %d new workers from the program and config on disk", size)
        self.notifier.reloading(f"upgrading: starting {size} new workers")
        gen, reason = self.start_generation(size, ready_timeout, drain_timeout)
        if reason:
            message = f"upgrade to generation {gen.number} failed, generation {old.number} keeps serving: {reason}"
            log.error("%s", message)
            notify.report_upgrade(False, message)
            if not self.stopping:  # no READY=1 after STOPPING=1
                self.notifier.ready(f"{self.status()}; {message}")
            return
        self.current = gen
        draining = [w for w in self.live if w.generation != gen.number]
        for worker in draining:
            worker.send_signal(signal.SIGTERM)
        gevent.spawn(self._kill_late, draining, old.drain_timeout)
        pids = ", ".join(str(w.pid) for w in gen.running())
        message = f"upgraded to generation {gen.number} (pids {pids}); generation {old.number} drains"
        log.info("%s for up to %g s", message, old.drain_timeout)
        notify.report_upgrade(True, message)
        self.notifier.ready(self.status())

    def _plan(self, size: int) -> tuple[int, float, float]:
        """The new generation's worker count and timeouts, from the config file if
        this supervisor can read it (the new workers are the judges of the file)."""
        ready_timeout, drain_timeout = self.config.ready_timeout, self.config.drain_timeout
        if not self.config_path:
            return size, ready_timeout, drain_timeout
        from .options import config_from_file

        try:
            new = config_from_file(self.config_path, self.command_line)
        except (ConfigFileError, click.ClickException) as exc:
            text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            log.warning("the supervisor cannot read %s (%s); keeping %d workers", self.config_path, text, size)
            return size, ready_timeout, drain_timeout
        for name in ("listen", "metrics_listen", "supervise", "reuse_port"):
            if getattr(new, name) != getattr(self.config, name):
                log.warning("%s changed in %s: it needs a restart; the new workers keep the running one", name,
                            self.config_path)  # fmt: skip
        return new.workers, new.ready_timeout, new.drain_timeout


def run(supervisor: Supervisor, announce: Callable[[], None]) -> None:
    """Start the first generation, announce it, serve until stopped.
    RuntimeError if the first generation does not start."""
    supervisor.install_signals()
    config = supervisor.config
    gen, reason = supervisor.start_generation(config.workers, config.ready_timeout, config.drain_timeout)
    if reason and not supervisor.stopping:
        for worker in list(supervisor.live):
            worker.kill()
            worker.wait()
        raise RuntimeError(reason)
    if not supervisor.stopping:
        supervisor.current = gen
        announce()
        supervisor.notifier.ready(supervisor.status())
        log.info("%s (pids %s)", supervisor.status(), ", ".join(str(w.pid) for w in gen.running()))
    supervisor.done.wait()
