"""One proxy process: on its own (``gconnect serve``), or a supervisor's worker.

Alone, the process binds ``--listen`` (or serves the sockets systemd passed),
prints ``gconnect listening on HOST:PORT`` per listener and, under systemd,
sends ``READY=1``. A worker is started by the supervisor (``workerlink``):
it loads its config, builds the proxy, checks itself, says it is ready, and
only accepts on the inherited sockets once the supervisor says so.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

import click
import gevent
from gevent.event import AsyncResult, Event
from gevent.server import StreamServer

from ..config import Config
from ..state.tally import Tally
from . import signals
from .accesslog import open_access_log
from .accounting import start_accounting
from .configfile import user_table_warnings
from .metrics import ProxyCollector, Stats
from .metricsserver import MetricsServer
from .notify import Notifier, report_upgrade
from .observer import ProcessObserver
from .reload import reload
from .sockets import fmt
from .state import ServiceState, StateCollector, worker_tallies
from .workerlink import WorkerLink

log = logging.getLogger("gconnect")

#: The head the self-check sends itself (a name that can never resolve: RFC 6761 §6.4).
SELF_CHECK_HEAD = b"CONNECT self-check.invalid:443 HTTP/1.1\r\nHost: self-check.invalid:443\r\n\r\n"
SELF_CHECK_SECONDS = 5.0


class SelfCheckError(Exception):
    """This process cannot serve: the message says what failed."""


def announce(bound: list[tuple[str, int]]) -> None:
    """The line scripts and tests read for the real port when listening on port 0."""
    for address in bound:
        click.echo(f"gconnect listening on {fmt(address)}", err=True)


class ProcessSignals:
    """The signal handlers of a proxy process (see ``signals`` for the table)."""

    def __init__(
        self,
        proxy: Any,
        observer: ProcessObserver,
        config_path: str | None,
        command_line: dict[str, Any],
        *,
        notifier: Notifier | None = None,
        link: WorkerLink | None = None,
    ) -> None:
        self.proxy = proxy
        self.observer = observer
        self.config_path = config_path
        self.command_line = command_line
        self.notifier = notifier or Notifier(None)
        self.link = link
        self.stop_requested = Event()

    def install(self) -> None:
        signals.ignore_unused()
        for signum in signals.STOP_SIGNALS:
            gevent.signal_handler(signum, self.stop, signum)
        gevent.signal_handler(signal.SIGHUP, self.hup)
        gevent.signal_handler(signal.SIGUSR2, self.usr2)
        if self.observer.access_log is not None:
            # logrotate's postrotate: kill -USR1 (moving the file is also noticed within a second).
            gevent.signal_handler(signal.SIGUSR1, self.observer.access_log.reopen)

    def stop(self, signum: int) -> None:
        if self.stop_requested.is_set():
            return
        # Now, not in the stop greenlet: once the log says stopping, nobody is accepted.
        self.proxy.close_listeners()
        log.info("signal %d: stopping", signum)
        self.notifier.stopping("draining open tunnels")
        self.stop_requested.set()
        gevent.spawn(self.proxy.stop)

    def hup(self) -> None:
        self.notifier.reloading("reloading the configuration")
        reload(self.proxy, self.config_path, self.command_line)
        if self.link is not None:
            self.link.reloaded()
        self.notifier.ready(f"serving (policy generation {self.proxy.generation})")

    def usr2(self) -> None:
        if self.link is not None:
            log.debug("SIGUSR2 is the supervisor's (upgrade); a worker ignores it")
            return
        message = "SIGUSR2: upgrading in place needs the supervisor (--supervise or --workers); ignored"
        log.warning("%s", message)
        report_upgrade(False, message)


def self_check(config: Config, listeners: list[socket.socket]) -> None:
    """Prove this process can accept and parse: a connection to a private
    loopback listener, through this event loop, whose head the proxy's parser
    reads. Raises SelfCheckError."""
    from ..tunnel.head import RequestParser

    for sock in listeners:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SelfCheckError(f"inherited socket {fmt(sock.getsockname())} is not listening")
    parsed: AsyncResult = AsyncResult()

    def handle(conn: socket.socket, address: tuple) -> None:
        try:
            parsed.set(RequestParser(config.max_header_bytes).feed(conn.recv(len(SELF_CHECK_HEAD))))
        except Exception as exc:  # a parser that fails here would fail every client
            parsed.set_exception(exc)

    probe = StreamServer(("127.0.0.1", 0), handle)
    try:
        probe.start()
        with socket.create_connection(probe.address, timeout=SELF_CHECK_SECONDS) as client:
            client.sendall(SELF_CHECK_HEAD)
            request = parsed.get(timeout=SELF_CHECK_SECONDS)
    except (Exception, gevent.Timeout) as exc:
        raise SelfCheckError(f"self-check: {exc!r}") from exc
    finally:
        probe.stop(timeout=0)
    if request is None or (request.host, request.port) != ("self-check.invalid", 443):
        raise SelfCheckError(f"self-check: the parser read {request!r}")


def build_proxy(config: Config, tallies: tuple[Tally, Tally] | None = None) -> tuple[Any, ProcessObserver]:
    """This process's proxy, and the observer that counts and logs its tunnels;
    *tallies* are the shared (gauges, totals)."""
    from ..proxy import Proxy  # imports dnspython: after the CLI has parsed

    for warning in user_table_warnings(config):
        log.warning("%s", warning)
    observer = ProcessObserver(Stats(), open_access_log(config.access_log, config.log_format))
    gauges, totals = tallies if tallies is not None else (None, None)
    return Proxy(config, observer=observer.observer(), gauges=gauges, totals=totals), observer


def start_metrics(
    config: Config, proxy: Any, observer: ProcessObserver, state: ServiceState | None = None
) -> MetricsServer | None:
    """``--metrics-listen``: serve /metrics from this process (None without it)."""
    if config.metrics_listen is None:
        return None
    metrics = MetricsServer(ProxyCollector(proxy, observer), config.metrics_listen)
    if state is not None:
        metrics.registry.register(StateCollector(state.region))
    # Before the listening lines: whoever waits for those finds this one too.
    click.echo(f"gconnect metrics on {fmt(metrics.start())}", err=True)
    return metrics


def finish(metrics: MetricsServer | None, observer: ProcessObserver) -> None:
    """After the proxy stopped: the metrics endpoint, then the access log's last lines."""
    if metrics is not None:
        metrics.stop()
    if observer.access_log is not None:
        observer.access_log.close()


def serve_alone(
    config: Config,
    *,
    config_path: str | None,
    command_line: dict[str, Any],
    notifier: Notifier,
    listeners: list[socket.socket] | None,
) -> None:
    """Run the proxy in this process until it is stopped."""
    state = ServiceState(config, workers=0)
    row = state.take_row()
    assert row is not None
    proxy, observer = build_proxy(config, state.tallies(row))
    ProcessSignals(proxy, observer, config_path, command_line, notifier=notifier).install()
    state.start()
    bound = proxy.start(listeners)
    metrics = start_metrics(config, proxy, observer, state)
    accounting = start_accounting(config, proxy, observer.access_log)
    announce(bound)
    notifier.ready(f"serving on {', '.join(map(fmt, bound))}")
    log.info("relay=%s max_clients=%d", proxy.services.relay_mode, config.max_clients)
    proxy.stopped.wait()
    if accounting is not None:
        accounting.stop()
    finish(metrics, observer)
    state.stop()
    log.info("stopped")


def serve_worker(config: Config, link: WorkerLink, *, config_path: str | None, command_line: dict[str, Any]) -> None:
    """Run as worker *link*: check, report ready, accept once told to, until stopped."""
    # The supervisor owns the state directory and the fleet link; we write our row.
    proxy, observer = build_proxy(config, worker_tallies(*link.state) if link.state is not None else None)
    handlers = ProcessSignals(proxy, observer, config_path, command_line, link=link)
    handlers.install()
    listeners = link.listeners()
    self_check(config, listeners)
    snapshots = None
    if link.metrics_dir is not None:
        # The supervisor serves /metrics for all of us; we write snapshots for it to sum.
        from .workermetrics import SnapshotWriter

        snapshots = SnapshotWriter(proxy, observer, link.metrics_dir, link.index)
        snapshots.start()
    link.ready()
    metrics = accounting = None
    if _wait_for_go(link, handlers.stop_requested):
        bound = proxy.start(listeners)
        metrics = start_metrics(config, proxy, observer)
        accounting = start_accounting(config, proxy, observer.access_log)
        link.accepting()
        link.watch_supervisor(lambda: gevent.spawn(proxy.stop))
        log.info("worker %d (generation %d) accepting on %s", link.index, link.generation, ", ".join(map(fmt, bound)))
    elif not handlers.stop_requested.is_set():
        log.warning("supervisor is gone before this worker started: stopping")
        gevent.spawn(proxy.stop)
    proxy.stopped.wait()
    if snapshots is not None:
        snapshots.stop()
    if accounting is not None:
        accounting.stop()
    finish(metrics, observer)
    log.info("stopped")


def _wait_for_go(link: WorkerLink, stop: Event) -> bool:
    """True once the supervisor lets us accept; False if it is gone or we are stopping first."""
    go = gevent.spawn(link.wait_go)
    waited: list[Callable[..., Any] | Any] = [go, stop]
    gevent.wait(waited, count=1)
    if stop.is_set():
        go.kill()
        return False
    return bool(go.value)
