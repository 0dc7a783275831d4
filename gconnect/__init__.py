"""gconnect: a high-concurrency HTTP CONNECT tunnelling proxy built on gevent."""

__version__ = "0.1.0"
