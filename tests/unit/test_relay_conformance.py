"""One conformance suite for every relay kind, in-process on loopback TCP pairs.

The relay runs in this process's gevent hub exactly as in the proxy (libev
callbacks, no greenlet); the two peers are ordinary blocking sockets in
threads. Each test runs against the copy, splice and auto movers, the TLS
movers (the client peer speaks TLS on memory BIOs, as curl --proxy https://
would) and an HTTP/2 CONNECT stream (the client peer is one stream of an h2
client; the proxy side the real session, tunnel and stream relay: see
tests/h2peer.py), in the spirit of trio's check_half_closeable_stream: byte-exact both
ways at once, half-close each way, resets passed on, the three deadlines, a
hang-up noticed under back-pressure, and nothing left held at the end.
"""

from __future__ import annotations

import _socket
import hashlib
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

import gevent
import pytest
from gevent.event import Event

from gconnect.state.tally import LocalTally
from gconnect.tunnel.deadlines import RelayLimits
from gconnect.tunnel.movers import CopyMover, Half, PipePool, SpliceMover
from gconnect.tunnel.relay import HangupWatch, Relay
from gconnect.tunnel.shaping import Limit, Shaper
from gconnect.tunnel.tls import DecryptMover, EncryptMover, TLSSession
from gconnect.tunnel.waiting import READ, WRITE
from tests.h2peer import ServedStream

pytestmark = pytest.mark.timeout(60)

#: A flood that makes no progress for this long has filled every buffer on the way
#: (on loopback, sends go on without a pause while any buffer has room).
FULL_AFTER_S = 0.2

#: "limited-*": that kind's movers under a bandwidth limit (gconnect.tunnel.shaping), low
#: enough that a flood pauses many times, high enough that the suite's megabytes take
#: a fraction of a second.
KINDS = ["copy", "splice", "auto", "tls", "h2", "limited-auto", "limited-tls"]
CHUNK = 256 * 1024
LIMIT = Limit(100_000_000, 1_000_000)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


def raw(sock: socket.socket) -> _socket.socket:
    """The relay's side of a pair: a raw non-blocking socket, as the proxy holds it."""
    end = _socket.socket(sock.family, sock.type, 0, sock.detach())
    end.setblocking(False)
    return end


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TLSPeer:
    """A TLS client on memory BIOs over a blocking socket: its close_notify is
    a half-close, and it keeps reading afterwards (the ssl module's unwrap()
    on a socket would read behind our back). One thread may send while another
    receives: the session and the records it makes are used under one lock,
    and the socket is read outside it."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self.lock = threading.Lock()
        #: Plaintext taken out of the session before a close_notify (see shutdown).
        self.plain = b""
        self.closed = False

    def _step(self, step: Callable[[], object]) -> tuple[bool, object]:
        """Run *step* on the session and send what it produced: (done, result)."""
        with self.lock:
            try:
                result = step()
                done = True
            except ssl.SSLWantReadError:
                result, done = None, False
            records = self.outgoing.read()
            if records:
                self.sock.sendall(records)
        return done, result

    def _pump(self, step: Callable[[], object]) -> object:
        while True:
            done, result = self._step(step)
            if done:
                return result
            chunk = self.sock.recv(65536)
            with self.lock:
                if chunk:
                    self.incoming.write(chunk)
                else:
                    self.incoming.write_eof()

    def handshake(self) -> None:
        self._pump(self.tls.do_handshake)

    def sendall(self, data: bytes) -> None:
        for i in range(0, len(data), 16384):
            self._step(lambda piece=data[i : i + 16384]: self.tls.write(piece))

    def recv(self, n: int) -> bytes:
        try:
            return self._pump(lambda: self._read(n))  # type: ignore[return-value]
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def _read(self, n: int) -> bytes:
        # Under the lock (_step), so a shutdown in another thread cannot take
        # bytes out of the session between our looks: what it took comes first.
        if self.plain:
            data, self.plain = self.plain[:n], self.plain[n:]
            return data
        if self.closed:
            return b""
        return self.tls.read(n)

    def shutdown(self, how: int) -> None:
        # SSL_shutdown reads what is in the session; records still there would
        # be taken for data after a close_notify. Take them out first, as
        # gconnect's own movers do.
        with self.lock:
            try:
                while True:
                    chunk = self.tls.read(65536)
                    if not chunk:
                        self.closed = True
                        break
                    self.plain += chunk
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.closed = True
            try:
                self.tls.unwrap()
            except ssl.SSLWantReadError:
                pass  # our close_notify is out; theirs comes through recv()
            self.sock.sendall(self.outgoing.read())

    def setsockopt(self, *args: object) -> None:
        self.sock.setsockopt(*args)  # type: ignore[arg-type]

    def close(self) -> None:
        self.sock.close()


class Harness:
    """Two loopback TCP pairs with a relay between their inner ends; for "h2",
    an HTTP/2 stream served by the proxy's own code, and the connection it dials."""

    def __init__(self, kind: str, ca, limits: RelayLimits, cert: tuple[str, str], context: ssl.SSLContext) -> None:
        limited = kind.startswith("limited-")
        self.kind = kind = kind.removeprefix("limited-")
        loop = gevent.get_hub().loop
        # The relay's deadlines count from loop.now(), the time the loop's current
        # iteration began. The proxy starts a relay inside an iteration; a test
        # starts it after the hub stood still through the tests before it, and a
        # clock older than the idle limit ended the tunnel at its first iteration.
        loop.update_now()
        self.shaper = Shaper(LocalTally(), loop, 0.0) if limited else None
        self.done = Event()
        self.relay_result: Relay | None = None
        if kind == "h2":
            self.stream = ServedStream(cert, context, limits, self._stream_done, self.run)
            self.client, self.upstream = self.stream.peer, self.stream.upstream
            self.relay = self.stream.relay
            self.hangups = self.stream.services.hangups
            # The stream's client end is the shared connection; its target end the dialled socket.
            self.client_end, self.upstream_end = None, self.stream.observer.stream.outbound.sock
            return
        client_peer, client_end = tcp_pair()
        upstream_end, self.upstream = tcp_pair()
        self.client_end, self.upstream_end = raw(client_end), raw(upstream_end)
        self.pipes = PipePool(4, CHUNK)
        self.hangups = HangupWatch()
        session = None
        if kind == "tls":
            session, self.client = self._tls(client_peer, ca)
            movers: tuple = (DecryptMover(CHUNK), EncryptMover(CHUNK))
        else:
            self.client = client_peer
            splice = SpliceMover(self.pipes, CHUNK)
            mover = {"copy": CopyMover(CHUNK), "splice": splice, "auto": CopyMover(CHUNK, bulk=splice)}[kind]
            movers = (mover, mover)
        self.relay = Relay(
            self.client_end,
            self.upstream_end,
            movers=movers,
            limits=limits,
            on_done=self._done,
            tls=session,
            hangups=self.hangups,
        )
        if self.shaper is not None:
            self.shaper.attach(self, (self.relay.up, self.relay.down), [("bw:test", LIMIT)])
        self.relay.start()

    def _tls(self, client_peer: socket.socket, ca) -> tuple[TLSSession, TLSPeer]:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server)
        client = ssl.create_default_context()
        ca.configure_trust(client)
        peer = TLSPeer(client_peer, client)
        thread = threading.Thread(target=peer.handshake)
        thread.start()
        session = TLSSession(self.client_end, server)
        loop = gevent.get_hub().loop
        reader, writer = loop.io(self.client_end.fileno(), READ), loop.io(self.client_end.fileno(), WRITE)
        session.handshake(reader, writer, loop.now() + 10)
        reader.close()
        writer.close()
        thread.join(10)
        return session, peer

    def _done(self, relay: Relay) -> None:
        if self.shaper is not None:
            self.shaper.detach(self)  # as the tunnel's close does
        self.relay_result = relay
        self.client_end.close()
        self.upstream_end.close()
        self.done.set()

    def _stream_done(self, relay) -> None:
        self.relay_result = relay
        self.done.set()

    def client_socket(self):
        """What takes the client peer's socket options (a timeout)."""
        return self.client.sock if self.kind == "tls" else self.client

    def reset_client(self) -> None:
        """The client peer resets: a TCP RST, or RST_STREAM for a stream."""
        if self.kind == "h2":
            self.client.reset()
        else:
            reset(self.client_socket())

    def wait(self, timeout: float = 20) -> Relay:
        """Run the hub until the relay ends; the ended relay."""
        assert self.done.wait(timeout), "relay did not end"
        assert self.relay_result is not None
        return self.relay_result

    def run(self, *targets: Callable[[], None], timeout: float = 20) -> None:
        """Run peer functions in threads while the hub relays; re-raise their failures."""
        errors: list[BaseException] = []

        def guarded(target: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target()
                except BaseException as exc:
                    errors.append(exc)

            return run

        threads = [threading.Thread(target=guarded(t), daemon=True) for t in targets]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            gevent.sleep(0.005)  # the hub runs the relay meanwhile
        assert not any(t.is_alive() for t in threads), "a peer did not finish"
        if errors:
            raise errors[0]

    def close(self) -> None:
        if self.kind == "h2":
            self.stream.close()
            return
        self.relay.abort("test over")
        for sock in (self.client, self.upstream):
            sock.close()
        self.hangups.close()
        self.pipes.close()


@pytest.fixture
def harness(ca, proxy_cert, client_context):
    made: list[Harness] = []

    def make(kind: str, idle: float = 10.0, half_close: float = 10.0, lifetime: float = 0.0) -> Harness:
        h = Harness(kind, ca, RelayLimits(idle, half_close, lifetime), proxy_cert, client_context)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def recv_all(sock) -> bytes:
    data = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(data)
        data += chunk


@pytest.mark.parametrize("kind", KINDS)
def test_both_ways_at_once_byte_exact(kind, harness):
    h = harness(kind)
    up, down = os.urandom(6 << 20), os.urandom(6 << 20)
    got: dict[str, str] = {}

    def client() -> None:
        sender = threading.Thread(target=lambda: (h.client.sendall(up), h.client.shutdown(socket.SHUT_WR)))
        sender.start()
        got["down"] = hashlib.sha256(recv_all(h.client)).hexdigest()
        sender.join()

    def upstream() -> None:
        sender = threading.Thread(target=lambda: (h.upstream.sendall(down), h.upstream.shutdown(socket.SHUT_WR)))
        sender.start()
        got["up"] = hashlib.sha256(recv_all(h.upstream)).hexdigest()
        sender.join()

    started = time.monotonic()
    h.run(client, upstream)
    relay = h.wait()
    if h.shaper is not None:
        # From an empty bucket no direction moves more than the rate allows.
        assert time.monotonic() - started >= len(up) / LIMIT.rate
    assert got == {"up": hashlib.sha256(up).hexdigest(), "down": hashlib.sha256(down).hexdigest()}
    assert (relay.bytes_up, relay.bytes_down) == (len(up), len(down))
    assert relay.end_reason in ("client_eof", "upstream_eof")
    assert relay.first_byte_at > 0


def test_a_relay_made_after_the_hub_stood_still_gets_its_whole_idle_limit(harness):
    # The hub's clock stops while the test's own thread runs (here, this sleep):
    # the harness must not start a relay whose idle deadline passed already.
    gevent.sleep(0.001)  # back from the hub through a timer, as Harness.run comes back
    time.sleep(0.6)
    h = harness("copy", idle=0.5)

    def echo() -> None:
        h.client.sendall(b"ping")
        assert recv_exactly(h.upstream, 4) == b"ping"
        h.upstream.sendall(b"pong")
        assert recv_exactly(h.client, 4) == b"pong"

    h.run(echo)
    assert not h.done.is_set()
    assert h.wait().end_reason == "idle"


@pytest.mark.parametrize("kind", KINDS)
def test_client_half_close_is_carried_and_the_answer_still_flows(kind, harness):
    h = harness(kind)
    answer = os.urandom(2 << 20)

    def client() -> None:
        h.client.sendall(b"request then EOF")
        h.client.shutdown(socket.SHUT_WR)
        assert recv_all(h.client) == answer

    def upstream() -> None:
        assert recv_all(h.upstream) == b"request then EOF"  # the EOF arrived, as a FIN
        h.upstream.sendall(answer)
        h.upstream.shutdown(socket.SHUT_WR)

    h.run(client, upstream)
    assert h.wait().end_reason == "client_eof"


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_half_close_is_carried_and_the_client_may_keep_sending(kind, harness):
    h = harness(kind)

    def upstream() -> None:
        h.upstream.sendall(b"bye")
        h.upstream.shutdown(socket.SHUT_WR)
        assert recv_all(h.upstream) == b"after the upstream's EOF"

    def client() -> None:
        data = b""
        while len(data) < 3:
            data += h.client.recv(10)
        assert data == b"bye"
        assert h.client.recv(10) == b""  # EOF (a close_notify through TLS), not a reset
        h.client.sendall(b"after the upstream's EOF")
        h.client.shutdown(socket.SHUT_WR)

    h.run(upstream, client)
    assert h.wait().end_reason == "upstream_eof"


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_reset_is_passed_on_as_a_reset(kind, harness):
    h = harness(kind)

    def run() -> None:
        h.client.sendall(b"x")
        assert h.upstream.recv(1) == b"x"
        reset(h.upstream)
        with pytest.raises(ConnectionResetError):
            while h.client.recv(65536):
                pass

    h.run(run)
    assert h.wait().end_reason == "upstream_reset"


@pytest.mark.parametrize("kind", KINDS)
def test_client_reset_is_passed_on_as_a_reset(kind, harness):
    h = harness(kind)

    def run() -> None:
        h.client.sendall(b"x")
        assert h.upstream.recv(1) == b"x"
        h.reset_client()
        with pytest.raises(ConnectionResetError):
            while h.upstream.recv(65536):
                pass

    h.run(run)
    assert h.wait().end_reason == "client_reset"


@pytest.mark.parametrize("kind", KINDS)
def test_idle_deadline_counts_both_directions(kind, harness):
    h = harness(kind, idle=0.25)

    def talk() -> None:
        # Traffic one way only keeps the whole tunnel alive: the pacing is the test.
        for _ in range(4):
            h.upstream.sendall(b"tick")
            time.sleep(0.08)
        h.upstream.sendall(b"last")

    started = time.monotonic()
    h.run(talk)
    relay = h.wait()
    assert relay.end_reason == "idle"
    assert time.monotonic() - started > 0.32  # 4 x 0.08 s of ticks, each under the 0.25 s limit


@pytest.mark.parametrize("kind", KINDS)
def test_half_close_deadline_is_the_shorter_limit_once_a_side_is_done(kind, harness):
    h = harness(kind, idle=30, half_close=0.3)
    started = time.monotonic()
    h.client.shutdown(socket.SHUT_WR)
    relay = h.wait()
    assert relay.end_reason == "half_close_timeout"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("kind", KINDS)
def test_lifetime_ends_a_busy_tunnel(kind, harness):
    h = harness(kind, lifetime=0.3)
    stop = threading.Event()

    def chatter() -> None:
        try:
            while not stop.is_set():
                h.client.sendall(b"busy")
                h.upstream.recv(65536)
                time.sleep(0.02)
        except OSError:
            pass

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    try:
        relay = h.wait(10)
    finally:
        stop.set()
    assert relay.end_reason == "lifetime"


@pytest.mark.parametrize("kind", KINDS)
def test_a_reset_under_back_pressure_is_noticed_at_once(kind, harness):
    # The upstream never reads: the relay stops reading the client. The client's
    # reset must still end the tunnel now, not at the idle deadline (issue 14).
    h = harness(kind, idle=60, half_close=60)
    h.upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def flood() -> None:
        h.client_socket().settimeout(FULL_AFTER_S)
        try:
            while True:
                h.client.sendall(b"\0" * 65536)
        except (TimeoutError, OSError):
            pass  # everything is full: the relay has stopped reading us

    h.run(flood)
    assert not h.done.is_set()
    started = time.monotonic()
    h.reset_client()
    relay = h.wait(5)
    assert relay.end_reason == "client_reset"
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_an_upstream_reset_under_back_pressure_is_noticed_at_once(kind, harness):
    # The client never reads (for a stream: never gives its window back): the
    # relay stops reading the upstream, whose reset must still end the tunnel now.
    h = harness(kind, idle=60, half_close=60)

    def flood() -> None:
        h.upstream.settimeout(FULL_AFTER_S)
        try:
            while True:
                h.upstream.sendall(b"\0" * 65536)
        except (TimeoutError, OSError):
            pass  # everything is full: the relay has stopped reading the upstream

    h.run(flood)
    assert not h.done.is_set()
    started = time.monotonic()
    reset(h.upstream)
    relay = h.wait(5)
    assert relay.end_reason == "upstream_reset"
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("kind", ["splice", "auto", "limited-auto"])
def test_pipes_are_borrowed_only_while_bytes_wait(kind, harness):
    h = harness(kind)
    payload = os.urandom(8 << 20)

    def client_sends() -> None:
        h.client.sendall(payload)
        h.client.shutdown(socket.SHUT_WR)

    def upstream_reads() -> None:
        # At the same time: 8 MiB need not fit in the buffers on the way.
        assert len(recv_all(h.upstream)) == len(payload)
        h.upstream.shutdown(socket.SHUT_WR)

    h.run(client_sends, upstream_reads)
    relay = h.wait()
    assert relay.end_reason == "client_eof"
    assert relay.up.pipe is None and relay.down.pipe is None
    assert 1 <= len(h.pipes) <= 2  # given back to the pool, not kept by the tunnel


def test_auto_copies_small_reads_and_hands_a_full_read_to_splice():
    # The mover itself, on loopback pairs: what a read returns is set by what
    # waits in the socket, not by thread timing.
    src_peer, src_end = tcp_pair()
    dst_end, dst_peer = tcp_pair()
    pipes = PipePool(2, CHUNK)
    splice = SpliceMover(pipes, CHUNK)
    auto = CopyMover(CHUNK, bulk=splice)
    src, dst = raw(src_end), raw(dst_end)
    src.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * CHUNK)
    # Room for the whole transfer on the way out, so the loop below never waits on dst.
    dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * CHUNK)
    dst_peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * CHUNK)
    half = Half("upstream", "client", src, dst, auto)
    try:
        src_peer.sendall(b"small")
        assert wait_for_bytes(src, 5)
        assert auto.pump(half) == 5 and half.mover is auto  # a small read stays a copy
        bulk = os.urandom(2 * CHUNK)
        src_peer.sendall(bulk)
        assert wait_for_bytes(src, 2 * CHUNK)
        assert auto.pump(half) == CHUNK and half.mover is splice  # a full read hands over
        deadline = time.monotonic() + 10
        while half.nbytes < 5 + len(bulk) and time.monotonic() < deadline:
            if half.pending is not None or half.in_pipe:
                splice.flush(half)
            else:
                splice.pump(half)
        assert recv_exactly(dst_peer, 5 + len(bulk)) == b"small" + bulk
        assert half.pipe is None  # given back once empty
    finally:
        for sock in (src, dst, src_peer, dst_peer):
            sock.close()
        pipes.close()


def wait_for_bytes(sock, n: int, timeout: float = 10.0) -> bool:
    """Poll until *n* bytes wait in *sock*'s receive queue (loopback delivers at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(sock.recv(n, socket.MSG_PEEK)) >= n:
                return True
        except BlockingIOError:
            pass
        time.sleep(0.001)
    return False


def recv_exactly(sock, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, len(data)
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("kind", KINDS)
def test_the_relay_stops_every_watcher_and_closes_nothing(kind, harness):
    h = harness(kind)
    h.relay.abort("shutdown")
    relay = h.wait()
    assert relay.end_reason == "shutdown"
    for half in (relay.up, relay.down):
        assert half.reader is None and half.writer is None and half.pipe is None
        # A limited direction's pause timer is gone with the tunnel, and so are its buckets.
        assert half.throttle is None or half.throttle.timer is None
    assert h.shaper is None or not h.shaper.buckets
    if kind == "h2":
        # The client's socket is the HTTP/2 connection, shared by its streams: the
        # stream is let go and the connection stays; the tunnel closed the dialled socket.
        session = h.stream.side.session
        assert h.stream.side.stream_id not in session.streams and not session.closed
        assert h.upstream_end.fileno() == -1
        return
    # The relay borrowed the sockets: the owner (here _done) closed them.
    assert h.client_end.fileno() == -1 and h.upstream_end.fileno() == -1
