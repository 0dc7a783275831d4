"""``python -m gconnect serve ...`` in a subprocess, started the way a user starts it.

:class:`ProxyProcess` starts the CLI, reads its stderr in a thread for as long as it runs (so the
pipe never fills), and waits for the line ``gconnect listening on HOST:PORT`` that every listener
prints once it accepts. The caller owns the process: :meth:`ProxyProcess.stop` (or leaving the
``with`` block) ends it and waits for it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..config import hostport

#: What ``gconnect serve`` prints on stderr once a listener accepts, one line per listener. The
#: host is printed as the listener was given (IPv6 in brackets).
LISTENING = re.compile(r"gconnect listening on (\S+):(\d+)$")

#: How long a proxy gets to print its listening line: an import of gevent and a bind take well
#: under a second, but a shared CI machine can be many times slower.
START_TIMEOUT_S = 15.0
#: How long a proxy gets to exit after a signal before it is killed.
STOP_TIMEOUT_S = 15.0


def listening_address(line: str) -> tuple[str, int] | None:
    """The (host, port) of a ``gconnect listening on HOST:PORT`` line, brackets removed; else None."""
    match = LISTENING.search(line.rstrip("\n"))
    if match is None:
        return None
    return match.group(1).strip("[]"), int(match.group(2))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for programs that cannot be told port 0 (HAProxy, tinyproxy,
    Squid). Racy in theory; the kernel does not hand the same port out again at once."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cpu_list(text: str) -> frozenset[int]:
    """CPU numbers written as taskset writes them: ``0``, ``0,2``, ``0-3``."""
    chosen: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        chosen.update(range(int(low), int(high or low) + 1))
    return frozenset(chosen)


def pin_to(cpus: Iterable[int]) -> Callable[[], None]:
    """A ``preexec_fn`` that pins the child, and every thread it will start, to *cpus*.

    Pinning before exec, rather than the running process afterwards, covers threads started at
    import (gevent's thread pool, locust's workers), which would otherwise keep the old mask.
    """
    chosen = frozenset(cpus)

    def apply() -> None:
        os.sched_setaffinity(0, chosen)

    return apply


class ProxyProcess:
    """``python -m gconnect serve *args*``: started, its stderr collected, its addresses known.

    *prefix* runs the CLI through another command (``unshare ... exec "$@"``); *cwd* and *env*
    choose the tree under test (``python -m`` puts the working directory ahead of PYTHONPATH, so
    an older tree must be both); *cpus* pins it; *python* is the interpreter. Raises
    RuntimeError with the output so far when no listening line comes within *start_timeout*.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        cpus: Iterable[int] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        pass_fds: Sequence[int] = (),
        python: str = sys.executable,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        if cpus is not None:
            if preexec_fn is not None:
                raise ValueError("give cpus or preexec_fn, not both")
            preexec_fn = pin_to(cpus)
        self.cmd = [*prefix, python, "-m", "gconnect", "serve", *args]
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            preexec_fn=preexec_fn,
            pass_fds=tuple(pass_fds),
        )
        self.lines: list[str] = []
        #: Every listener's (host, port), in the order their lines came.
        self.addresses: list[tuple[str, int]] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(start_timeout):
            self.stop()
            raise RuntimeError(f"proxy did not start within {start_timeout:g} s: {self.cmd}\n{self.stderr}")
        if not self.addresses:
            self.stop()
            raise RuntimeError(f"proxy exited with {self.proc.returncode}: {self.cmd}\n{self.stderr}")
        self.host, self.port = self.addresses[0]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            address = listening_address(line)
            if address is not None:
                self.addresses.append(address)
                self._ready.set()
        self._ready.set()

    @property
    def stderr(self) -> str:
        """Everything the proxy wrote on stderr so far."""
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        """The first listener as ``HOST:PORT`` (brackets around an IPv6 host)."""
        return hostport(self.host, self.port)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send *sig* if it still runs, wait up to *timeout* (then SIGKILL); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
