"""Echo and sink target server for the load test.

Run on its own with ``python -m gconnect.loadtest.target --listen 127.0.0.1:0``; once listening it prints
``target listening on HOST:PORT`` to stderr (the real port when 0 was asked for) and serves until
SIGTERM or SIGINT. ``echo`` mode sends every byte back; ``sink`` mode reads and discards.

One greenlet per connection and no per-connection buffers beyond one ``recv``, so a single process
holds 10,000 idle connections in a few tens of MiB; the open-file limit is what caps it, and it is
raised to the hard limit at start.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket

from .machine import raise_open_file_limit
from .wire import parse_address

# Large enough for a 64 KiB message to come back in one step; the kernel's loopback MTU is 64 KiB.
RECV_BYTES = 65536

# Linux has capped listen() at net.core.somaxconn (4096 since 5.4) anyway; a full accept queue at
# a spawn rate of 500/s would show up as connect timeouts that belong to the target, not the proxy.
LISTEN_BACKLOG = 4096

Handler = Callable[[GeventSocket, tuple], None]


def echo(conn: GeventSocket, address: tuple) -> None:
    """Send back every byte received until the peer closes its side."""
    try:
        while data := conn.recv(RECV_BYTES):
            conn.sendall(data)
    except OSError:
        # A reset from the client side is the client's business; the target has nothing to add.
        pass
    finally:
        conn.close()


def sink(conn: GeventSocket, address: tuple) -> None:
    """Read and discard until the peer closes its side."""
    try:
        while conn.recv(RECV_BYTES):
            pass
    except OSError:
        pass
    finally:
        conn.close()


HANDLERS: dict[str, Handler] = {"echo": echo, "sink": sink}


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` for argparse."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def make_server(listen: tuple[str, int], mode: str) -> StreamServer:
    """Build (not start) a target server; ``mode`` is ``echo`` or ``sink``."""
    server = StreamServer(listen, HANDLERS[mode])
    server.backlog = LISTEN_BACKLOG
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gconnect.loadtest.target", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=listen_address, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--mode", choices=sorted(HANDLERS), default="echo")
    args = parser.parse_args(argv)

    raise_open_file_limit()
    server = make_server(args.listen, args.mode)
    server.start()
    host, port = server.address[:2]
    print(f"target listening on {host}:{port}", file=sys.stderr, flush=True)

    stopped = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopped.set)
    stopped.wait()
    # Close the listener only: open connections die with the process, which is what a load
    # test that is over wants.
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
