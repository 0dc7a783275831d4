"""Tunnels through one parent proxy: RFC 9110 §9.3.6 CONNECT, sent upstream.

``--upstream http://[user:pass@]host:port`` names a parent (several form a
pool, and :mod:`gconnect.tunnel.pool` chooses among them and fails over); with
no ``--upstream-for`` every tunnel goes through the pool, otherwise only
destinations matching a pattern do and the rest are dialled directly (routes
use the same patterns):

* a CIDR (``10.0.0.0/8``, or one address) matches targets written as an IP
  literal in that network;
* anything else is a host-name glob (``*.corp.example``, ``db?.example``,
  fnmatch rules, case-insensitive) matched against targets given by name.

Names sent to the parent are not resolved here: the parent resolves them, and
its policy decides which addresses they may reach. IP-literal targets still
pass our own destination check first.

What goes to the parent is a fresh request: the client's headers, its
Proxy-Authorization above all, are never passed on; the parent's credentials
come from the URL. A parent's refusal becomes our 502 (504 if it does not
answer in time) carrying the parent's status line (and the status itself, for
the pool to tell a 4xx verdict from a 5xx), never its 407: that would ask the
client for credentials meant for someone else.
"""

from __future__ import annotations

import base64
import fnmatch
import ipaddress
from typing import Any

from gevent import get_hub

from ..config import IPNetwork, ParentProxy, hostport
from ..errors import OutboundConnectError, ParentDeniedError, ParentProxyError, ParentProxyTimeoutError
from .dial import Connection, open_connection
from .waiting import READ, WRITE, recv, send_all

#: The parent's response head: a status line and a few headers. The same limit
#: as our own request heads (h11 and node.js: 16 KiB).
MAX_RESPONSE_HEAD_BYTES = 16 * 1024
_MSG_PEEK = 2  # socket.MSG_PEEK


def connect_request(host: str, port: int, parent: ParentProxy) -> bytes:
    """The CONNECT head sent to *parent* for ``host:port``."""
    authority = hostport(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if parent.username or parent.password:
        token = base64.b64encode(f"{parent.username}:{parent.password}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def parse_status(head: bytes) -> tuple[int, str]:
    """``(status, reason)`` from a response head; ParentProxyError if it is not HTTP/1.x."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise ParentProxyError(f"parent proxy sent no HTTP status line: {line[:80]!r}")
    reason = parts[2].decode("latin-1").strip() if len(parts) > 2 else ""
    return int(parts[1]), reason


#: Most characters of a parent's Proxy-Status passed on in ours.
MAX_PARENT_PROXY_STATUS_CHARS = 1024


def proxy_status_of(head: bytes) -> str:
    """The Proxy-Status members of a response head, as one list (RFC 9209 §2:
    several field lines are one list), printable ASCII only; "" if none."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"proxy-status":
            text = value.strip().decode("ascii", "replace")
            values.append("".join(ch if " " <= ch <= "~" else "?" for ch in text))
    joined = ", ".join(v for v in values if v)
    # Cut, the list would no longer parse: an oversized one is left out whole.
    return joined if len(joined) <= MAX_PARENT_PROXY_STATUS_CHARS else ""


class Patterns:
    """Host-name globs and CIDRs (``--upstream-for``, a route's ``for``); none matches everything."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._networks: list[IPNetwork] = []
        self._globs: list[str] = []
        for pattern in patterns:
            if "/" in pattern:
                self._networks.append(ipaddress.ip_network(pattern, strict=False))
            else:
                self._globs.append(pattern.lower())
        self._everything = not patterns

    def applies(self, host: str, family: int) -> bool:
        """True if *host* (an IP literal when *family* is set) matches."""
        if self._everything:
            return True
        if family:
            ip = ipaddress.ip_address(host)
            return any(ip.version == net.version and ip in net for net in self._networks)
        return any(fnmatch.fnmatchcase(host, glob) for glob in self._globs)


class Chain:
    """One parent: which tunnels use it, and how one is opened through it.
    *source* (a :class:`~gconnect.tunnel.dial.SourceAddresses` or None) binds
    the connection to the parent."""

    def __init__(self, parent: ParentProxy, patterns: tuple[str, ...], resolver: Any, source: Any = None) -> None:
        self.parent = parent
        self._resolver = resolver
        self._source = source
        self.applies = Patterns(patterns).applies

    def parent_addresses(self) -> list[str]:
        try:
            return [str(ipaddress.ip_address(self.parent.host))]
        except ValueError:
            return self._resolver.resolve(self.parent.host.lower())  # type: ignore[no-any-return]

    def open(self, host: str, port: int, *, connect_timeout: float, attempt_delay: float) -> Connection:
        """A connection tunnelled by the parent to ``host:port`` (its ``address``
        is the parent's), within *connect_timeout* for the dial and the answer.

        Raises the dialler's errors for the parent itself, ParentProxyError
        (502) when it refuses, ParentProxyTimeoutError (504) when it is silent.
        """
        loop = get_hub().loop
        deadline = loop.now() + connect_timeout
        connection = open_connection(
            self.parent_addresses(),
            self.parent.port,
            connect_timeout=connect_timeout,
            attempt_delay=attempt_delay,
            source=self._source,
        )
        sock = connection.sock
        try:
            writer = connection.writer or loop.io(sock.fileno(), WRITE)
            connection.writer = writer
            reader = loop.io(sock.fileno(), READ)
            try:
                sent = send_all(sock, connect_request(host, port, self.parent), writer, deadline)
                head = self._read_head(sock, reader, deadline) if sent else None
            finally:
                reader.close()
            if head is None:
                raise ParentProxyTimeoutError(f"parent proxy {self.parent} did not answer within {connect_timeout:g} s")
            status, reason = parse_status(head)
        except OSError as exc:
            _close(connection)
            raise OutboundConnectError(f"parent proxy {self.parent}: {exc.strerror or exc}") from exc
        except BaseException:
            # A garbage status line or a timeout must not leave the socket to the GC.
            _close(connection)
            raise
        if not 200 <= status < 300:
            _close(connection)
            kind = ParentDeniedError if status == 403 else ParentProxyError
            error = kind(f"parent proxy {self.parent} answered {status} {reason}".rstrip(), status)
            error.parent_proxy_status = proxy_status_of(head)
            raise error
        return connection

    @staticmethod
    def _read_head(sock: Any, reader: Any, deadline: float) -> bytes | None:
        """Consume exactly the response head: bytes after it are the target's and
        stay in the socket for the relay (MSG_PEEK, then take up to the end).
        None if *deadline* passes first."""
        head = b""
        while True:
            peeked = recv(sock, MAX_RESPONSE_HEAD_BYTES, reader, deadline, _MSG_PEEK)
            if peeked is None:
                return None
            if not peeked:
                raise ParentProxyError(f"parent proxy closed the connection after {len(head)} bytes of its answer")
            # The terminator may straddle what we took and what we peek now.
            start = max(0, len(head) - 3)
            end = (head + peeked).find(b"\r\n\r\n", start)
            if end >= 0:
                # What was peeked is in the socket: taking no more than that never blocks.
                head += sock.recv(end + 4 - len(head))
                return head
            if len(head) + len(peeked) > MAX_RESPONSE_HEAD_BYTES:
                raise ParentProxyError(f"parent proxy's answer head is over {MAX_RESPONSE_HEAD_BYTES} bytes")
            head += sock.recv(len(peeked))


def _close(connection: Connection) -> None:
    if connection.writer is not None:
        connection.writer.close()
    connection.sock.close()
