"""python -m bench.floor PORT: the least a gevent CONNECT proxy can do, as the harness's ``floor``.

What gevent itself costs a tunnel, as ``direct`` is what the network costs: a greenlet per client
reads the head up to CRLFCRLF, dials the host:port it names, answers 200, and then hands both
sockets, detached from gevent as plain non-blocking sockets, to two pairs of libev watchers that
relay until both directions end. No checks, no limits, no logging, no errors answered: a client
that sends anything but a CONNECT to a reachable host:port is dropped. Not a proxy to run.
"""

import socket
import sys

import gevent
import gevent.socket
from gevent.server import StreamServer

READ, WRITE = 1, 2
CHUNK_BYTES = 65536


class Pipe:
    """One direction: read src when it is readable, write dst; wait for dst when it is full."""

    def __init__(self, loop, src: socket.socket, dst: socket.socket, tunnel: "Tunnel") -> None:
        self.loop, self.src, self.dst, self.tunnel, self.pending = loop, src, dst, tunnel, b""
        self.reader, self.writer = loop.io(src.fileno(), READ), None
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
                self.dst.shutdown(socket.SHUT_WR)
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
                self.writer = self.loop.io(self.dst.fileno(), WRITE)
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
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        loop = gevent.get_hub().loop
        self.sockets, self.running = (client, server), 2
        self.pipes = (Pipe(loop, client, server, self), Pipe(loop, server, client, self))

    def one_done(self) -> None:
        self.running -= 1
        if not self.running:
            self.close()

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.stop()
        for sock in self.sockets:
            sock.close()


def handle(client, _address) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        if not chunk:
            return
        head += chunk
    head, _, early = head.partition(b"\r\n\r\n")
    host, _, port = head.split(b" ", 2)[1].rpartition(b":")
    # An IP literal, connected without getaddrinfo (create_connection's thread-pool round trip).
    name = host.decode().strip("[]")
    server = gevent.socket.socket(socket.AF_INET6 if ":" in name else socket.AF_INET)
    server.connect((name, int(port)))
    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    if early:
        server.sendall(early)
    # Detached from gevent: the watchers, not a greenlet, move the bytes from here on.
    plain = [socket.socket(fileno=s.detach()) for s in (client, server)]
    for sock in plain:
        sock.setblocking(False)
    Tunnel(*plain)


if __name__ == "__main__":
    StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=4096).serve_forever()
