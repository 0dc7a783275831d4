"""python -m bench.floor [--callbacks [--accept-one]] PORT: the least a gevent CONNECT proxy can do.

What gevent itself costs a tunnel, as ``direct`` is what the network costs: a libev watcher on the
listening socket accepts, a plain greenlet per client reads the head up to CRLFCRLF, connects to
the IP literal it names and answers 200, parked on a watcher when a socket is not ready (the
client's read watcher is made once and kept for the relay); then two read watchers (a write
watcher only once a destination is full) relay until both directions end. Raw non-blocking
``_socket`` sockets throughout: gevent's socket wrapper, its StreamServer's per-client object and
``Greenlet.spawn``'s bookkeeping cost more per tunnel than gconnect's own handshake does, so a
floor built on them would not be one. No checks, no limits, no logging, no answer but 200: a
client that sends anything else is dropped. Not a proxy to run.

``--callbacks`` (the harness's ``floor-cb``) has no greenlet at all: the accept watcher's callback
reads the head at once (it has usually arrived with the connection) and starts the client's read
watcher only when it has not, whose callback collects the rest; the non-blocking connect's write
watcher calls back when the connection is up, answers 200, and is then re-targeted as the
destination's read watcher for the relay. Three watchers a tunnel, one callback per event, and no
switch: the least Python per tunnel that gevent's libev loop allows. ``--accept-one`` (``floor-cb1``)
accepts one client per wake-up instead of until the queue is empty, as nginx's ``multi_accept off``:
no failing accept per wake-up, one more loop iteration per client when clients arrive together.
``--touch-kib N`` (with ``--callbacks``) writes one byte in every 64 of an N KiB buffer per client,
a stand-in for a larger proxy's memory traffic, and ``--spin-us N`` spins N µs per client without
touching memory, a stand-in for a slower one: what each does to the kernel's time per tunnel.
"""

import _socket
import errno
import sys
import time

import gevent
from greenlet import greenlet

READ, WRITE = 1, 2
CHUNK_BYTES = 65536
HUB = gevent.get_hub()
LOOP = HUB.loop


def wait(watcher) -> None:
    """Park this client's greenlet until the watcher's socket is ready."""
    HUB.wait(watcher)


class Pipe:
    """One direction: read src when it is readable, write dst; wait for dst when it is full."""

    def __init__(self, src: _socket.socket, dst: _socket.socket, tunnel: "Tunnel", reader=None) -> None:
        self.src, self.dst, self.tunnel, self.pending, self.writer = src, dst, tunnel, b"", None
        self.reader = reader or LOOP.io(src.fileno(), READ)
        self.reader.start(self.on_readable)

    def on_readable(self) -> None:
        try:
            data = self.src.recv(CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            return self.tunnel.close()
        if not data:  # end of this direction: pass the half-close on
            self.reader.stop()
            try:
                self.dst.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            return self.tunnel.one_done()
        self.send(data)

    def send(self, data: bytes) -> None:
        try:
            sent = self.dst.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return self.tunnel.close()
        self.pending = data[sent:]
        if self.pending:  # dst is full: stop reading until it drains
            self.reader.stop()
            if self.writer is None:  # made once, the first time dst is full (bulk only)
                self.writer = LOOP.io(self.dst.fileno(), WRITE)
            self.writer.start(self.on_writable)
        elif self.writer is not None and not self.reader.active:
            self.writer.stop()
            self.reader.start(self.on_readable)

    def on_writable(self) -> None:
        self.send(self.pending)

    def stop(self) -> None:
        self.reader.close()
        if self.writer is not None:
            self.writer.close()


class Tunnel:
    def __init__(self, client: _socket.socket, server: _socket.socket, client_reader, server_reader=None) -> None:
        self.sockets, self.running = (client, server), 2
        self.pipes = (Pipe(client, server, self, client_reader), Pipe(server, client, self, server_reader))

    def one_done(self) -> None:
        self.running -= 1
        if not self.running:
            self.close()

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.stop()
        for sock in self.sockets:
            sock.close()


def handle(client: _socket.socket) -> None:
    head, reader = b"", LOOP.io(client.fileno(), READ)  # kept for the relay
    while b"\r\n\r\n" not in head:
        try:
            chunk = client.recv(4096)
        except BlockingIOError:
            wait(reader)
            continue
        if not chunk:
            return client.close()
        head += chunk
    head, _, early = head.partition(b"\r\n\r\n")
    host, _, port = head.split(b" ", 2)[1].rpartition(b":")
    name = host.decode().strip("[]")
    family = _socket.AF_INET6 if ":" in name else _socket.AF_INET
    server = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
    if server.connect_ex((name, int(port))) == errno.EINPROGRESS:
        wait(LOOP.io(server.fileno(), WRITE))
    # Both sends fit in empty socket buffers; a failed connect shows as the relay's first error.
    client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
    if early:
        server.send(early)
    Tunnel(client, server, reader)


def on_acceptable(listener: _socket.socket) -> None:
    while True:
        try:
            fd, _address = listener._accept()
        except BlockingIOError:
            return
        client = _socket.socket(fileno=fd)
        client.setblocking(False)
        greenlet(handle, parent=HUB).switch(client)


class Handshake:
    """One client until its tunnel starts, in callbacks alone: the head, the connect, the 200."""

    def __init__(self, client: _socket.socket) -> None:
        self.client, self.head = client, b""
        self.reader = LOOP.io(client.fileno(), READ)  # kept for the relay
        self.on_head()  # the head is usually there already: no loop iteration to wait for it

    def on_head(self) -> None:
        try:
            chunk = self.client.recv(4096)
        except BlockingIOError:
            if not self.reader.active:
                self.reader.start(self.on_head)
            return
        if not chunk:
            self.reader.close()
            return self.client.close()
        self.head += chunk
        if b"\r\n\r\n" not in self.head:
            return
        self.reader.stop()
        head, _, self.early = self.head.partition(b"\r\n\r\n")
        host, _, port = head.split(b" ", 2)[1].rpartition(b":")
        name = host.decode().strip("[]")
        family = _socket.AF_INET6 if ":" in name else _socket.AF_INET
        self.server = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
        self.writer = LOOP.io(self.server.fileno(), WRITE)
        if self.server.connect_ex((name, int(port))) == errno.EINPROGRESS:
            self.writer.start(self.on_connected)
        else:
            self.on_connected()

    def on_connected(self) -> None:
        self.writer.stop()
        # Both sends fit in empty socket buffers; a failed connect shows as the relay's first error.
        self.client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self.early:
            self.server.send(self.early)
        self.writer.events = READ  # the connect's watcher, stopped, becomes the destination's reader
        Tunnel(self.client, self.server, self.reader, self.writer)


def on_acceptable_cb(listener: _socket.socket) -> None:
    while True:
        try:
            fd, _address = listener._accept()
        except BlockingIOError:
            return
        client = _socket.socket(fileno=fd)
        client.setblocking(False)
        Handshake(client)


def touching(kib: int, spin_us: float):
    """on_acceptable_cb, and per client one byte written in every cache line of a kib KiB buffer
    and spin_us µs spent spinning."""
    buffer = bytearray(kib * 1024)
    zeros = bytes(len(buffer[::64]))
    spin_s = spin_us / 1e6
    clock = time.perf_counter

    def on_acceptable(listener: _socket.socket) -> None:
        while True:
            try:
                fd, _address = listener._accept()
            except BlockingIOError:
                return
            client = _socket.socket(fileno=fd)
            client.setblocking(False)
            Handshake(client)
            buffer[::64] = zeros
            end = clock() + spin_s
            while clock() < end:
                pass

    return on_acceptable


def on_acceptable_one(listener: _socket.socket) -> None:
    try:
        fd, _address = listener._accept()
    except BlockingIOError:
        return
    client = _socket.socket(fileno=fd)
    client.setblocking(False)
    Handshake(client)


def main(argv: list[str]) -> None:
    port = int(argv[-1])
    accept = on_acceptable
    if "--callbacks" in argv:
        accept = on_acceptable_one if "--accept-one" in argv else on_acceptable_cb
        if "--touch-kib" in argv or "--spin-us" in argv:
            kib = int(argv[argv.index("--touch-kib") + 1]) if "--touch-kib" in argv else 0
            spin_us = float(argv[argv.index("--spin-us") + 1]) if "--spin-us" in argv else 0.0
            accept = touching(kib, spin_us)
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    accepting = LOOP.io(listener.fileno(), READ)
    accepting.start(accept, listener)
    while True:
        gevent.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
