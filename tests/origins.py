"""Origins on loopback for the forwarding tests: one that parses with h11 (a
parser independent of the proxy's) and answers what it received, and one
that records the exact bytes and answers a scripted response."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable

import h11

from .conftest import Upstream


class Seen:
    """What an origin received, shared with the test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.raw: list[bytes] = []
        self.event = threading.Event()

    def add_request(self, request: dict) -> None:
        with self.lock:
            self.requests.append(request)
        self.event.set()


def h11_handler(seen: Seen) -> Callable[[socket.socket], None]:
    """Serve requests on one connection with h11 until it closes. The answer
    is JSON: method, target, headers, the body's length and sha256, and the
    number of the connection's request; ``/status/NNN`` answers that status,
    ``/bytes/N`` answers N bytes chunked."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(30)
        h = h11.Connection(h11.SERVER)
        served = 0
        while True:
            event = _next(h, conn)
            if event is None or isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request), event
            if h.they_are_waiting_for_100_continue:
                conn.sendall(h.send(h11.InformationalResponse(status_code=100, headers=[])))
            body = hashlib.sha256()
            length = 0
            while True:
                part = _next(h, conn)
                if isinstance(part, h11.Data):
                    body.update(part.data)
                    length += len(part.data)
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            served += 1
            record = {
                "method": event.method.decode(),
                "target": event.target.decode(),
                "headers": [[k.decode(), v.decode("latin-1")] for k, v in event.headers.raw_items()],
                "length": length,
                "sha256": body.hexdigest(),
                "request_on_connection": served,
            }
            seen.add_request(record)
            _answer(h, conn, event, record)
            if h.our_state is h11.MUST_CLOSE:
                return
            h.start_next_cycle()

    return handle


def _next(h: h11.Connection, conn: socket.socket):
    """The next h11 event, or None when the proxy closed or broke off a message."""
    while True:
        try:
            event = h.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is not h11.NEED_DATA:
            return event
        try:
            data = conn.recv(65536)
        except OSError:
            return None
        h.receive_data(data)


def _answer(h: h11.Connection, conn: socket.socket, event: h11.Request, record: dict) -> None:
    target = event.target.decode()
    if target.startswith("/status/"):
        status = int(target.rsplit("/", 1)[1])
        conn.sendall(h.send(h11.Response(status_code=status, headers=[("Content-Length", "0")])))
        conn.sendall(h.send(h11.EndOfMessage()))
        return
    if target.startswith("/bytes/"):
        size = int(target.rsplit("/", 1)[1])
        conn.sendall(h.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])))
        block = bytes(range(256)) * 256
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            conn.sendall(h.send(h11.Data(data=piece)))
            sent += len(piece)
        conn.sendall(h.send(h11.EndOfMessage()))
        return
    body = json.dumps(record).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    conn.sendall(h.send(h11.Response(status_code=200, headers=headers)))
    if event.method != b"HEAD":
        conn.sendall(h.send(h11.Data(data=body)))
    conn.sendall(h.send(h11.EndOfMessage()))


def recording_handler(seen: Seen, response: bytes, until: bytes = b"\r\n\r\n") -> Callable[[socket.socket], None]:
    """Read until *until* has arrived (or EOF), record the exact bytes, send *response*, then close."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        while until not in data:
            try:
                chunk = conn.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        with seen.lock:
            seen.raw.append(data)
        seen.event.set()
        conn.sendall(response)
        try:
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
        except OSError:
            pass

    return handle


def h11_origin(factory: Callable[..., Upstream]) -> tuple[Upstream, Seen]:
    seen = Seen()
    return factory(h11_handler(seen)), seen
