"""Fixtures: the real CLI in a subprocess, real servers on loopback port 0.

Nothing here is mocked: upstreams are threads serving real sockets, DNS is a
real (small) server on a loopback port, and the proxy is started exactly the way
a user starts it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme

from gconnect.auth.authenticator import Authenticator
from gconnect.config import Config, hostport
from gconnect.testing import process, procfs
from gconnect.testing.dns import DNSServer

HAVE_IPV6 = socket.has_ipv6
try:
    _s = socket.socket(socket.AF_INET6)
    _s.bind(("::1", 0))
    _s.close()
except OSError:
    HAVE_IPV6 = False


#: The folders a test may live in; each is also the marker its tests carry (pyproject.toml).
SEAMS = ("unit", "e2e", "interop")
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its folder's name, and refuse a test outside the three folders, so
    that ``-m unit`` and ``tests/unit`` always select the same tests."""
    for item in items:
        try:
            seam = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except ValueError:
            continue  # not one of ours (a path given on the command line outside tests/)
        if seam not in SEAMS:
            raise pytest.UsageError(f"{item.nodeid}: a test belongs in one of tests/{{{','.join(SEAMS)}}}/")
        item.add_marker(seam)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> object:
    """Poll *predicate* until it is truthy; fail the test after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


class ProxyProcess(process.ProxyProcess):
    """The CLI in a subprocess (gconnect.testing), its access log in the test's tmp_path."""

    def __init__(
        self,
        args: list[str],
        tmp_path: Path,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        prefix: Sequence[str] = (),
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.access_log = tmp_path / f"access-{os.urandom(3).hex()}.log"
        #: What the teardown expects the process to have exited with.
        self.expected_exit = 0
        try:
            super().__init__(
                ["--access-log", str(self.access_log), *args],
                prefix=prefix,
                env=env,
                preexec_fn=preexec_fn,
                pass_fds=pass_fds,
            )
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def access_lines(self) -> list[str]:
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def wait_access(self, needle: str, timeout: float = 10.0) -> str:
        """The first access-log line containing *needle*, waiting for it."""

        def find() -> str | None:
            return next((line for line in self.access_lines() if needle in line), None)

        return wait_until(find, timeout)  # type: ignore[return-value]

    def fd_count(self) -> int:
        return len(procfs.open_fds(self.pid))

    def fd_kinds(self) -> dict[str, int]:
        """Open descriptors by kind: socket, pipe, file, other."""
        kinds = {"socket": 0, "pipe": 0, "file": 0, "other": 0}
        for link in procfs.open_fds(self.pid).values():
            kind = link.split(":", 1)[0] if ":[" in link else ("file" if link.startswith("/") else "other")
            kinds[kind if kind in kinds else "other"] += 1
        return kinds

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=10)


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DNSServer]:
    server = DNSServer()
    yield server
    server.close()


@pytest.fixture
def hosts_file(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost tls.test web.test echo.test\n::1 localhost ip6-localhost\n")
    return path


@pytest.fixture
def start_proxy(tmp_path: Path, dns_server: DNSServer, hosts_file: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start proxies with test-friendly policy (loopback allowed, any port),
    our DNS server and hosts file. Each is checked for a clean exit and no
    traceback at the end of the test."""
    started: list[ProxyProcess] = []

    def start(
        *extra: str,
        defaults: bool = True,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        prefix: Sequence[str] = (),
        pass_fds: tuple[int, ...] = (),
    ) -> ProxyProcess:
        args = ["--log-level", "debug"]
        if defaults:
            args += [
                "--listen",
                "127.0.0.1:0",
                "--allow-port",
                "1-65535",
                "--allow-dest",
                "127.0.0.0/8",
                "--allow-dest",
                "::1/128",
                "--dns-server",
                dns_server.address,
                "--hosts-file",
                str(hosts_file),
                "--header-timeout",
                "5",
                "--connect-timeout",
                "5",
                "--dns-timeout",
                "2",
                "--drain-timeout",
                "2",
            ]
        proxy = ProxyProcess([*args, *extra], tmp_path, env, preexec_fn, prefix, pass_fds)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        code = proxy.stop()
        assert "Traceback" not in proxy.stderr, proxy.stderr
        assert code == proxy.expected_exit, f"proxy exited {code}:\n{proxy.stderr}"


@pytest.fixture
def proxy(start_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    return start_proxy()


class Upstream:
    """A threaded TCP server on loopback running *handler(conn)* per connection."""

    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(512)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def target(self) -> str:
        return hostport(self.host, self.port)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.handler(conn)
        except OSError:
            pass
        except BaseException as exc:  # surfaced by the test through .errors
            self.errors.append(exc)

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def echo_handler(conn: socket.socket) -> None:
    """Echo until EOF, then half-close back."""
    while True:
        data = conn.recv(262144)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., Upstream]]:
    servers: list[Upstream] = []

    def make(handler: Callable[[socket.socket], None] = echo_handler, host: str = "127.0.0.1") -> Upstream:
        server = Upstream(handler, host)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
        assert not server.errors, server.errors


@pytest.fixture
def echo(upstream_factory: Callable[..., Upstream]) -> Upstream:
    return upstream_factory(echo_handler)


@contextlib.contextmanager
def silent_listener(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """A port whose SYNs vanish, for connect timeouts: a listener with its accept
    queue full (backlog 0, filled by connections nobody accepts) drops new SYNs."""
    listener = socket.socket()
    listener.bind((host, port))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((host, port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of a response head; return (head, bytes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def open_tunnel(proxy: ProxyProcess, target: str, extra: bytes = b"", headers: bytes | None = None) -> socket.socket:
    """CONNECT through *proxy*; return the socket once the 200 arrived."""
    return connect_over(proxy.connect(), target, extra, headers)


def connect_over(sock: socket.socket, target: str, extra: bytes = b"", headers: bytes | None = None) -> socket.socket:
    """Send CONNECT on a connected socket (plain or TLS) and read the 200."""
    if headers is None:
        headers = b"Host: " + target.encode() + b"\r\n"
    sock.sendall(b"CONNECT " + target.encode() + b" HTTP/1.1\r\n" + headers + b"\r\n" + extra)
    # Byte by byte, so tunnel data that follows the 200 stays in the socket.
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, head
        head += byte
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def exchange(proxy: ProxyProcess, raw: bytes, shut: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; read the whole response until the proxy closes."""
    with proxy.connect() as sock:
        sock.sendall(raw)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(data)
        data += chunk


def echo_in_one_thread(sock: ssl.SSLSocket, data: bytes, timeout: float = 60.0) -> bytes:
    """Send *data* through *sock* and read as many bytes back, interleaved in
    this one thread: OpenSSL's SSL object must not be read in one thread while
    another writes to it (a reader thread beside sendall() can garble a stream)."""
    sock.setblocking(False)
    got, view = bytearray(), memoryview(data)
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            while len(got) < len(data):
                assert time.monotonic() < deadline, f"echo incomplete: {len(got)} of {len(data)} bytes"
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if view else 0)
                selector.modify(sock, events)
                if not sock.pending():
                    selector.select(0.5)
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    while True:
                        chunk = sock.recv(1 << 20)
                        assert chunk, f"EOF after {len(got)} of {len(data)} bytes"
                        got += chunk
                if view:
                    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        view = view[sock.send(view[: 1 << 16]) :]
    finally:
        sock.setblocking(True)
    return bytes(got)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA, upstream_factory: Callable[..., Upstream]) -> Upstream:
    """An HTTPS server for tls.test answering every request with 'hello over tls'."""
    cert = ca.issue_cert("tls.test", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    def handler(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            request, _ = read_head(tls)
            if not request:
                return
            body = b"hello over tls\n"
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )

    return upstream_factory(handler)


@pytest.fixture
def proxy_cert(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    """The TLS listener's certificate and key files, for 127.0.0.1 and localhost."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


@pytest.fixture
def start_tls_proxy(
    start_proxy: Callable[..., ProxyProcess], proxy_cert: tuple[str, str]
) -> Callable[..., ProxyProcess]:
    """start_proxy with a TLS listener (an HTTPS proxy, HTTP/2 offered)."""

    def start(*extra: str) -> ProxyProcess:
        return start_proxy("--tls-cert", proxy_cert[0], "--tls-key", proxy_cert[1], *extra)

    return start


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def chromium_command(profile: Path, *args: str) -> list[str]:
    """Headless Debian chromium with a fresh *profile* directory, nothing in the
    background, then *args* (a proxy, a URL, ``--dump-dom``...)."""
    return [
        *("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        f"--user-data-dir={profile}",
        *args,
    ]


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    """Poll until something accepts on host:port."""

    def accepts() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(accepts, timeout, 0.05)


@pytest.fixture
def htpasswd(tmp_path: Path) -> str:
    """An htpasswd file with alice (password pw) and carol (file-pw), bcrypt."""
    from .unit.test_auth import bcrypt_line

    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "pw") + "\n" + bcrypt_line("carol", "file-pw") + "\n")
    return str(path)


@pytest.fixture
def authenticators() -> Iterator[Callable[..., Authenticator]]:
    """Make Authenticators from Config values; each is stopped (its helpers too) after the test."""
    made: list[Authenticator] = []

    def make(**values: Any) -> Authenticator:
        auth = Authenticator(Config(**values))
        made.append(auth)
        return auth

    yield make
    for auth in made:
        auth.stop()
