"""The Prometheus endpoint: ``GET /metrics`` served by a gevent WSGI server in
this process's hub, from a collector that reads the numbers at scrape time
(:class:`gconnect.ops.metrics.ProxyCollector`, or the supervisor's
``workermetrics.WorkerCollector``). prometheus-client is imported only here,
when ``--metrics-listen`` is given."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class MetricsServer:
    """``GET /metrics`` on its own listener, served from this process's hub.

    *collector* is a prometheus-client collector (:class:`ProxyCollector`, or
    the supervisor's ``workermetrics.WorkerCollector``); with *process_metrics*
    the ``process_*`` family of this process is added."""

    def __init__(self, collector: Any, address: tuple[str, int], *, process_metrics: bool = True) -> None:
        try:
            import prometheus_client
        except ImportError as exc:
            raise RuntimeError("--metrics-listen needs prometheus-client: pip install 'gconnect[metrics]'") from exc
        from gevent.pywsgi import WSGIServer

        #: More collectors may be registered (the shared state's).
        self.registry = registry = prometheus_client.CollectorRegistry()
        registry.register(collector)
        if process_metrics:
            # process_open_fds, process_max_fds, CPU and memory, from /proc.
            prometheus_client.ProcessCollector(registry=registry)
        app: Callable[..., Any] = prometheus_client.make_wsgi_app(registry)
        self.server = WSGIServer(address, app, log=None, error_log=log)

    def start(self) -> tuple[str, int]:
        self.server.start()
        return self.server.address[:2]

    def stop(self) -> None:
        self.server.stop(timeout=1)
