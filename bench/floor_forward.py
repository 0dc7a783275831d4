"""python -m bench.floor_forward PORT [--callbacks | --eager | --fields]: the least a gevent forward proxy can do.

What :mod:`bench.floor` is for tunnels, for plain-HTTP forwarding: the floor under gconnect's
forwarder in ``bench.forward`` (``floor``, ``floor-cb``, ``floor-eager``) and
``bench.forward_instructions``.
Bodyless requests in absolute form (``GET http://IP:PORT/path HTTP/1.1``) on keep-alive client
connections; each head found by its CRLFCRLF and checked by httptools' request parser (llhttp, as
gconnect's), then rewritten only as RFC 9110 §7.6 and RFC 9112 §3.2.1 ask: origin-form request
line, Proxy-Connection dropped, Via added. The origin is the IP literal of the URI (no DNS); its
connections are kept idle between requests and reused, each with its own read watcher and httptools
response parser, which frames the response (Content-Length, chunked: llhttp's rules) while the
bytes go on to the client as they come, head unchanged.

Two shapes of the same work:

* default: a plain greenlet per client (as bench/floor.py), parked on a libev watcher (started
  for the wait, stopped after it) until its socket is ready; the client's greenlet does its
  exchanges itself, and waits before it reads: the peer cannot have answered yet.
* ``--eager``: the default shape making gconnect's system calls: reads before it waits (EAGAIN
  when the peer has not answered yet) and peeks at an idle upstream connection before reusing it.
* ``--fields``: the default shape parsing both heads field by field in Python (a callback from
  llhttp per field) and rendering the request's head from its fields, as a textbook proxy does.
* ``--callbacks``: no greenlet at all, the watchers' callbacks do everything. Every read watcher
  stays started (no epoll_ctl per request): the client's; an upstream connection's hands what it
  reads to the client it serves, and when idle takes readable for the origin's close.

Raw non-blocking ``_socket`` sockets, no StreamServer, no per-request object but the bytes. No
checks, no limits, no timeouts, no logging, no answer of its own: a request with a body, a
malformed head or a closed upstream connection ends the client's connection; a retry of an idle
connection the origin closed (``--callbacks`` and ``--eager`` notice the close before reuse),
Connection-named fields, a Host from the URI and a Via on the response are left out (the bench
needs none of them). Not a proxy to run.
"""

import _socket
import errno
import sys

import gevent
import httptools
from greenlet import getcurrent, greenlet

from bench.floor import CHUNK_BYTES, HUB, LOOP, READ, WRITE

VIA = b"\r\nVia: 1.1 floor\r\n\r\n"
#: --eager (greenlet shape only): gconnect's system calls on the floor, to price them: every read
#: made before waiting, and an idle upstream connection peeked at before it is reused.
EAGER = "--eager" in sys.argv[2:]
#: --fields (greenlet shape only): both heads parsed field by field in Python (an llhttp callback
#: per field) and the request's head rendered from its fields, as a textbook proxy does.
FIELDS = "--fields" in sys.argv[2:]
#: Idle upstream connections by the authority of the URI (b"127.0.0.1:8080").
IDLE: dict[bytes, list["Upstream"]] = {}


def rewrite(head: bytes) -> tuple[bytes, bytes]:
    """The origin-form head to send on and the authority it goes to, from a head that llhttp
    accepted, up to its CRLFCRLF (excluded); ValueError if its target is not ``http://…``."""
    line_end = head.find(b"\r\n")
    method, target, version = head[:line_end].split(b" ")
    if not target.startswith(b"http://"):
        raise ValueError("not an absolute http URI")
    authority, _, path = target[7:].partition(b"/")
    fields = head[line_end:]
    lowered = fields.lower()
    cut = lowered.find(b"\r\nproxy-connection:")
    if cut >= 0:
        stop = lowered.find(b"\r\n", cut + 2)
        fields = fields[:cut] + (fields[stop:] if stop >= 0 else b"")
    return b"%s /%s %s%s%s" % (method, path, version, fields, VIA), authority


class Request:
    """httptools' protocol for a client's requests: whether the message ended at its head (the
    target is read from the head's first line, so no on_url: one Python call fewer)."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


class FieldsRequest(Request):
    """``--fields``: the request's fields too, as llhttp hands them over."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


def render(head: bytes, fields: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """``--fields``: :func:`rewrite`'s result made from the parsed fields instead of the bytes."""
    method, target, version = head[: head.find(b"\r\n")].split(b" ")
    if not target.startswith(b"http://"):
        raise ValueError("not an absolute http URI")
    authority, _, path = target[7:].partition(b"/")
    lines = [b"%s /%s %s" % (method, path, version)]
    lines += [name + b": " + value for name, value in fields if name.lower() != b"proxy-connection"]
    lines.append(b"Via: 1.1 floor\r\n\r\n")
    return b"\r\n".join(lines), authority


class Upstream:
    """One connection to an origin with its read watcher and response parser, reused while the
    responses keep it alive. Owns its socket: closed by :meth:`close`, or never (kept idle)."""

    __slots__ = ("authority", "client", "complete", "keep_alive", "parser", "reader", "sock", "writer")

    def __init__(self, authority: bytes) -> None:
        host, _, port = authority.rpartition(b":")
        name = host.decode().strip("[]")
        family = _socket.AF_INET6 if ":" in name else _socket.AF_INET
        self.sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
        error = self.sock.connect_ex((name, int(port or 80)))
        if error not in (0, errno.EINPROGRESS):
            raise OSError(error, "connect")
        self.authority, self.writer, self.client = authority, None, None
        self.reader = LOOP.io(self.sock.fileno(), READ)
        self.parser = httptools.HttpResponseParser(self)
        self.complete, self.keep_alive = False, True

    def on_message_complete(self) -> None:
        self.complete, self.keep_alive = True, self.parser.should_keep_alive()

    def on_readable(self) -> None:
        """``--callbacks``: the reader stays started, idle or not (no epoll_ctl per request)."""
        if self.client is not None:
            return self.client.on_response()
        IDLE[self.authority].remove(self)  # idle and readable: the origin closed it
        self.close()

    def done(self) -> None:
        """The response ended: back to the idle set if it may be reused, else closed."""
        self.complete = False
        if self.keep_alive:
            IDLE.setdefault(self.authority, []).append(self)
        else:
            self.close()

    def close(self) -> None:
        self.reader.close()
        if self.writer is not None:
            self.writer.close()
        self.sock.close()


def wait(watcher) -> None:
    """Park this greenlet until *watcher*'s socket is ready: gconnect's wait without its timer,
    and without the Waiter object of gevent's ``hub.wait``."""
    watcher.start(getcurrent().switch)
    try:
        HUB.switch()
    finally:
        watcher.stop()


class FieldsUpstream(Upstream):
    """``--fields``: the response's fields collected too (and dropped: the head goes on as is)."""

    __slots__ = ("fields",)

    def __init__(self, authority: bytes) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        super().__init__(authority)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def done(self) -> None:
        self.fields = []
        super().done()


def upstream_for(authority: bytes) -> Upstream:
    idle = IDLE.get(authority)
    while EAGER and idle:  # gconnect's check that an idle connection is still open
        upstream = idle.pop()
        try:
            upstream.sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return upstream
        upstream.close()
    return idle.pop() if idle else (FieldsUpstream if FIELDS else Upstream)(authority)


def read_eagerly(sock: _socket.socket, reader) -> bytes:
    """``--eager``: read first and wait only when nothing is there, as gconnect does."""
    try:
        return sock.recv(CHUNK_BYTES)
    except BlockingIOError:
        wait(reader)
        return sock.recv(CHUNK_BYTES)


def send_all(sock: _socket.socket, data: bytes, writer) -> object:
    """Send *data* whole from a greenlet, parked on *writer* (made here, the first time the
    socket is full, and returned for next time) until the socket takes the rest."""
    while True:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return writer
        data = data[sent:]
        if writer is None:
            writer = LOOP.io(sock.fileno(), WRITE)
        wait(writer)


def exchange(client: _socket.socket, head: bytes, client_writer, request: Request) -> object:
    """Send one request on and relay its response to *client*; raises OSError when a side fails."""
    if FIELDS:
        data, authority = render(head, request.fields)  # type: ignore[attr-defined]
        request.fields = []  # type: ignore[attr-defined]
    else:
        data, authority = rewrite(head)
    upstream = upstream_for(authority)
    try:
        upstream.writer = send_all(upstream.sock, data, upstream.writer)
        while not upstream.complete:
            if EAGER:
                data = read_eagerly(upstream.sock, upstream.reader)
            else:
                wait(upstream.reader)  # the answer cannot be there before we ask
                data = upstream.sock.recv(CHUNK_BYTES)
            if not data:
                raise ConnectionResetError("upstream closed")
            upstream.parser.feed_data(data)
            client_writer = send_all(client, data, client_writer)
    except BaseException:
        upstream.close()
        raise
    upstream.done()
    return client_writer


def serve(client: _socket.socket) -> None:
    """A client's greenlet: its requests one at a time, until it closes or sends what we do not do."""
    reader, writer, request = LOOP.io(client.fileno(), READ), None, FieldsRequest() if FIELDS else Request()
    parser, buf = httptools.HttpRequestParser(request), b""
    try:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if EAGER:
                    data = read_eagerly(client, reader)
                else:
                    wait(reader)
                    data = client.recv(CHUNK_BYTES)
                if not data:
                    return
                buf += data
                continue
            parser.feed_data(buf[: end + 4])
            head, buf = buf[:end], buf[end + 4 :]
            if not request.complete:  # a body follows: not for the floor
                return
            request.complete = False
            writer = exchange(client, head, writer, request)
            if not parser.should_keep_alive():
                return
    except (OSError, ValueError, httptools.HttpParserError):
        return
    finally:
        reader.close()
        if writer is not None:
            writer.close()
        client.close()


class Client:
    """``--callbacks``: one client connection driven by its watchers' callbacks alone."""

    __slots__ = ("buf", "parser", "pending", "reader", "request", "sock", "upstream", "writer")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock, self.writer, self.buf, self.upstream, self.pending = sock, None, b"", None, b""
        self.request = Request()
        self.parser = httptools.HttpRequestParser(self.request)
        self.reader = LOOP.io(sock.fileno(), READ)
        self.reader.start(self.on_readable)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            return self.close()
        if not data:
            return self.close()
        self.buf += data
        if self.upstream is None:
            self.next_request()

    def next_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            self.parser.feed_data(self.buf[: end + 4])
        except httptools.HttpParserError:
            return self.close()
        head, self.buf = self.buf[:end], self.buf[end + 4 :]
        if not self.request.complete:
            return self.close()
        self.request.complete = False
        try:
            data, authority = rewrite(head)
            upstream = self.upstream = upstream_for(authority)
            sent = upstream.sock.send(data)  # an empty idle connection takes a head whole
        except (OSError, ValueError):
            return self.close()
        if sent != len(data):
            return self.close()
        upstream.client = self
        if not upstream.reader.active:  # new, or stopped while its client was full
            upstream.reader.start(upstream.on_readable)

    def on_response(self) -> None:
        upstream = self.upstream
        try:
            data = upstream.sock.recv(CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return self.close()
        try:
            upstream.parser.feed_data(data)
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except (OSError, httptools.HttpParserError):
            return self.close()
        if sent != len(data):  # the client is full: stop reading the origin until it drains
            self.pending = data[sent:]
            upstream.reader.stop()
            if self.writer is None:
                self.writer = LOOP.io(self.sock.fileno(), WRITE)
            self.writer.start(self.on_writable)
        elif upstream.complete:
            self.response_done()

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            return self.close()
        self.pending = self.pending[sent:]
        if self.pending:
            return
        self.writer.stop()
        if self.upstream.complete:
            self.response_done()
        else:
            self.upstream.reader.start(self.upstream.on_readable)

    def response_done(self) -> None:
        upstream, self.upstream = self.upstream, None
        upstream.client = None
        upstream.done()
        if not self.parser.should_keep_alive():
            return self.close()
        self.next_request()

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.reader.close()
        if self.writer is not None:
            self.writer.close()
        self.sock.close()


def on_acceptable(listener: _socket.socket, callbacks: bool) -> None:
    while True:
        try:
            fd, _address = listener._accept()
        except BlockingIOError:
            return
        client = _socket.socket(fileno=fd)
        client.setblocking(False)
        if callbacks:
            Client(client)
        else:
            greenlet(serve, parent=HUB).switch(client)


def main(port: int, callbacks: bool) -> None:
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    accepting = LOOP.io(listener.fileno(), READ)
    accepting.start(on_acceptable, listener, callbacks)
    while True:
        gevent.sleep(3600)


if __name__ == "__main__":
    main(int(sys.argv[1]), "--callbacks" in sys.argv[2:])
