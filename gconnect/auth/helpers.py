"""Helper programs speaking Squid's protocol (:mod:`gconnect.auth.helperproto`):
started, fed, read and restarted by gconnect, with no blocking call in the hub.

A :class:`HelperPool` runs ``children`` copies of one command line. Each child
takes one request at a time, or ``concurrency`` at once with channel IDs (Squid's
``concurrency=N``). The pipes are gevent's cooperative ones: a greenlet waiting
for an answer yields the hub to every other tunnel, and one reader greenlet per
child hands each answer line to the request it belongs to.

Failure never lets anyone in: a child that exits (crash), does not answer within
``timeout`` (hang: it is killed, and every request it held fails with it), or
answers ``BH`` or something that is not the protocol, makes the request raise
:class:`~gconnect.errors.AuthUnavailableError` (503). Each such event is logged
and counted in :attr:`HelperPool.failures`. A dead child is started again on the
next request, at most once per :data:`RESTART_INTERVAL_SECONDS`, so a helper that
dies at once does not turn into a fork loop.

Ownership: the pool owns its processes; :meth:`HelperPool.stop` closes their
stdin (Squid's helpers exit on EOF) and kills what is left.
"""

from __future__ import annotations

import collections
import logging
import subprocess as std_subprocess
import time
from typing import Any

import gevent
from gevent import subprocess
from gevent.event import AsyncResult
from gevent.lock import Semaphore

from ..errors import AuthUnavailableError
from .helperproto import HelperProtocolError, Reply, encode_request, parse_reply

log = logging.getLogger(__name__)

#: How long stop() lets helpers exit on EOF before killing them.
STOP_WAIT_SECONDS = 1.0
#: A child that died is started again no sooner than this: Squid gives up
#: (FATAL) on helpers that die too fast; we keep answering 503 and retry.
RESTART_INTERVAL_SECONDS = 1.0


class _Crashed(Exception):
    """The child's stdout ended while requests were waiting."""


class HelperChild:
    """One helper process and the requests it is answering."""

    def __init__(self, pool: HelperPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proc: Any = None
        self.reader: Any = None
        self.started_at = -RESTART_INTERVAL_SECONDS
        #: Requests sent and not yet answered: channel ID (None when serial) -> result.
        self.pending: dict[int | None, AsyncResult] = {}
        self.free: list[int | None] = list(range(pool.concurrency)) if pool.concurrency else [None]
        self._write_lock = Semaphore()
        self._start_lock = Semaphore()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_started(self) -> None:
        """Start the process if it is not running; AuthUnavailableError if it may not be yet."""
        if self.alive:
            return
        # Starting forks and may yield: requests arriving meanwhile wait for this start.
        with self._start_lock:
            if not self.alive:
                self._start()

    def _start(self) -> None:
        now = time.monotonic()
        if now - self.started_at < RESTART_INTERVAL_SECONDS:
            raise AuthUnavailableError(f"{self.pool.name} helper is restarting")
        self.started_at = now
        try:
            self.proc = subprocess.Popen(
                self.pool.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
            )
        except OSError as exc:
            self.pool.count("start", f"cannot start {self.pool.argv[0]}: {exc}")
            raise AuthUnavailableError(f"{self.pool.name} helper cannot be started") from exc
        log.info("%s helper #%d started: pid %d", self.pool.name, self.index, self.proc.pid)
        self.reader = gevent.spawn(self._read, self.proc)

    def _read(self, proc: Any) -> None:
        concurrent = bool(self.pool.concurrency)
        while True:
            try:
                line = proc.stdout.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                break
            try:
                channel, reply = parse_reply(line, concurrent=concurrent)
            except HelperProtocolError as exc:
                self.pool.count("protocol", f"#{self.index} {exc}")
                self.kill(proc)
                return
            result = self.pending.pop(channel, None)
            if result is not None:
                result.set(reply)
        if proc is self.proc:
            # Gone at once: a request arriving before the exit is reaped must not write to it.
            self.proc = None
            code = proc.wait()
            self.pool.count("crash", f"#{self.index} (pid {proc.pid}) exited with status {code}")
            self._fail_pending()

    def _fail_pending(self) -> None:
        pending, self.pending = self.pending, {}
        for result in pending.values():
            result.set_exception(_Crashed())

    def kill(self, proc: Any = None) -> None:
        """End the process (hung, or speaking something else); its requests fail."""
        proc = proc or self.proc
        if proc is None:
            return
        if proc is self.proc:
            self.proc = None
        try:
            proc.kill()
        except OSError:
            pass
        self._fail_pending()
        # Reap it without waiting here.
        gevent.spawn(proc.wait)

    def ask(self, fields: list[str | bytes], timeout: float) -> Reply:
        """Send one request on a free channel and wait for its answer."""
        # Reserved before the start, which may yield: no other request can take it meanwhile.
        channel = self.free.pop()
        result = AsyncResult()
        proc = None
        try:
            self.ensure_started()
            proc = self.proc
            self.pending[channel] = result
            with self._write_lock:
                # The pipe is unbuffered: a long line may go in more than one write.
                view = memoryview(encode_request(fields, channel))
                while view:
                    view = view[proc.stdin.write(view) :]
            return result.get(timeout=timeout)
        except gevent.Timeout:
            assert proc is not None
            self.pool.count("timeout", f"#{self.index} (pid {proc.pid}) did not answer in {timeout:g} s; killed")
            self.kill(proc)
            raise AuthUnavailableError(f"{self.pool.name} helper did not answer in time") from None
        except (_Crashed, OSError) as exc:
            if isinstance(exc, OSError):  # EPIPE: it died before reading the request
                self.pool.count("crash", f"#{self.index}: {exc}")
                self.kill(proc)
            raise AuthUnavailableError(f"{self.pool.name} helper failed") from None
        finally:
            if self.pending.get(channel) is result:
                del self.pending[channel]
            self.free.append(channel)

    def close_input(self) -> Any:
        """Close the helper's stdin (Squid's helpers exit on EOF); its requests
        fail. Returns the process for :meth:`HelperPool.stop` to reap, or None."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            proc.stdin.close()
        except OSError:
            pass
        self._fail_pending()
        return proc


class HelperPool:
    """``children`` processes of *argv*, each taking ``concurrency`` requests at
    once (0: one, without channel IDs). :meth:`ask` waits for a free slot."""

    def __init__(self, name: str, argv: list[str], children: int, concurrency: int, timeout: float) -> None:
        self.name = name
        self.argv = argv
        self.concurrency = concurrency
        self.timeout = timeout
        self.children = [HelperChild(self, i) for i in range(children)]
        self._slots = Semaphore(children * max(1, concurrency))
        #: Failures by kind: crash, timeout, bh, protocol, start.
        self.failures: collections.Counter[str] = collections.Counter()
        #: Requests answered OK or ERR.
        self.answers = 0

    def count(self, kind: str, message: str) -> None:
        self.failures[kind] += 1
        if message:
            log.error("%s helper: %s: %s", self.name, kind, message)

    def start(self) -> None:
        """Start every child now, so a command that cannot run shows at once in the log."""
        for child in self.children:
            try:
                child.ensure_started()
            except AuthUnavailableError:
                pass

    def stop(self) -> None:
        """End every child: EOF on its stdin, then a kill for those still there
        after :data:`STOP_WAIT_SECONDS` (all children wait together)."""
        procs = [proc for proc in (child.close_input() for child in self.children) if proc is not None]
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except (std_subprocess.TimeoutExpired, gevent.Timeout):
                proc.kill()
                proc.wait()

    def ask(self, fields: list[str | bytes]) -> Reply:
        """The answer (OK or ERR) to *fields*; AuthUnavailableError for BH, a
        crash, a hang, or no free slot within the timeout."""
        if not self._slots.acquire(timeout=self.timeout):
            self.count("timeout", "every helper stayed busy for the whole timeout")
            raise AuthUnavailableError(f"{self.name} helpers are all busy")
        try:
            child = self._pick()
            reply = child.ask(fields, self.timeout)
        finally:
            self._slots.release()
        if reply.result == "BH":
            self.count("bh", f"answered BH {reply.message!r}")
            raise AuthUnavailableError(f"{self.name} helper could not decide")
        self.answers += 1
        return reply

    def _pick(self) -> HelperChild:
        # The slot semaphore guarantees a child with a free channel; prefer a running one.
        candidates = [c for c in self.children if c.free]
        running = [c for c in candidates if c.alive]
        return max(running or candidates, key=lambda c: len(c.free))
