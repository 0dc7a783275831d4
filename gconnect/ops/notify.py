"""Telling others how the service is: systemd's notify protocol, and the
outcome of an upgrade for ``gconnect upgrade``.

sd_notify(3): newline-separated ``KEY=VALUE`` lines in one datagram to the unix
socket named by ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). With ``Type=notify`` systemd counts the service as started at
``READY=1``; ``RELOADING=1`` (with ``MONOTONIC_USEC``, systemd 253+) puts it in
"reloading" until the next ``READY=1``; ``STOPPING=1`` says a stop has begun;
``STATUS=`` is shown by ``systemctl status``. The protocol is fire and forget:
a failed send is logged at debug and never stops the proxy.

An upgrade's outcome goes the same way to ``gconnect upgrade``: it binds the
abstract address :func:`upgrade_address` of the supervisor's PID before sending
SIGUSR2, and believes only a datagram whose kernel-attached credentials
(``SCM_CREDENTIALS``) carry that PID.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time

log = logging.getLogger(__name__)

#: struct ucred: pid, uid, gid.
_UCRED = struct.Struct("3i")


def _address(name: str) -> str:
    # "@name" is Linux's abstract namespace: a leading NUL byte, no file.
    return "\0" + name[1:] if name.startswith("@") else name


def upgrade_address(pid: int) -> str:
    """Where the supervisor with *pid* reports the outcome of an upgrade."""
    return f"\0gconnect-upgrade-{pid}"


def _send(address: str, text: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a reader that is not reading loses the message, never stalls us
            sock.sendto(text.encode(), address)
    except OSError as exc:
        log.debug("notify %r: %s", address, exc)
        return False
    return True


class Notifier:
    """sd_notify for this process; does nothing without ``NOTIFY_SOCKET``."""

    def __init__(self, socket_name: str | None) -> None:
        self.address = _address(socket_name) if socket_name else None

    def send(self, *lines: str) -> None:
        if self.address is not None:
            _send(self.address, "\n".join(lines))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")


def report_upgrade(ok: bool, message: str) -> None:
    """Tell a waiting ``gconnect upgrade`` (if any) how our upgrade went."""
    _send(upgrade_address(os.getpid()), f"UPGRADE={'done' if ok else 'failed'}\nSTATUS={message}")


class UpgradeListener:
    """``gconnect upgrade``'s end: bound before the signal is sent, so the answer cannot be missed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(upgrade_address(pid))

    def wait(self, timeout: float) -> tuple[bool, str] | None:
        """(upgraded, message) from the supervisor, or None after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                return None
            if self._sender(ancillary) != self.pid:
                continue  # anyone can send to an abstract address; only the supervisor counts
            fields = dict(line.partition("=")[::2] for line in data.decode(errors="replace").splitlines())
            return fields.get("UPGRADE") == "done", fields.get("STATUS", "")
        return None

    @staticmethod
    def _sender(ancillary: list[tuple[int, int, bytes]]) -> int | None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
                return _UCRED.unpack(data[: _UCRED.size])[0]
        return None

    def close(self) -> None:
        self.sock.close()
