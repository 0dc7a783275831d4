"""The supervisor handshake, both ends: how a worker is started and how it
answers.

A worker is ``python -m gconnect serve`` with these in its environment:

``GCONNECT_LISTEN_FDS``
    the inherited listening sockets' descriptor numbers, comma-separated;
``GCONNECT_STATUS_FD``
    a pipe the worker writes one byte to at each step: ``R`` checked and ready
    to accept, ``A`` accepting, ``H`` a SIGHUP reload done (applied or refused);
``GCONNECT_CONTROL_FD``
    a pipe only the supervisor writes to: ``g`` means start accepting; EOF
    means the supervisor is gone (however it died), and the worker stops;
``GCONNECT_WORKER_INDEX``, ``GCONNECT_GENERATION``
    the worker's slot (its metrics ``worker`` label) and generation;
``GCONNECT_METRICS_DIR``
    where to write metrics snapshots (``workermetrics``), when the supervisor
    serves ``/metrics``;
``GCONNECT_STATE_FD``, ``GCONNECT_STATE_ROW``
    the shared state's memfd and the row this worker writes (``ops.state``).

A worker accepts nothing before ``g``: a generation whose workers do not all
become ready is discarded without having touched a client.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable, MutableMapping, Sequence

import gevent
from gevent.event import Event
from gevent.os import nb_read

from .sockets import adopt

log = logging.getLogger(__name__)

LISTEN_FDS_ENV = "GCONNECT_LISTEN_FDS"
STATUS_FD_ENV = "GCONNECT_STATUS_FD"
CONTROL_FD_ENV = "GCONNECT_CONTROL_FD"
WORKER_INDEX_ENV = "GCONNECT_WORKER_INDEX"
GENERATION_ENV = "GCONNECT_GENERATION"
METRICS_DIR_ENV = "GCONNECT_METRICS_DIR"
STATE_FD_ENV = "GCONNECT_STATE_FD"
STATE_ROW_ENV = "GCONNECT_STATE_ROW"

READY, ACCEPTING, RELOADED = b"R", b"A", b"H"
GO = b"g"


def _ignore_until_handled() -> None:
    # In the child before exec: a SIGHUP or SIGUSR1 sent to the whole service
    # (systemctl kill) must not kill a worker that has not installed its
    # handlers yet. SIG_IGN survives exec; gevent's handlers replace it.
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)


class WorkerProcess:
    """The supervisor's end: one started worker and what it has said so far."""

    def __init__(
        self,
        argv: Sequence[str],
        listener_fds: Sequence[int],
        *,
        index: int,
        generation: int,
        metrics_dir: str | None = None,
        state: tuple[int, int] | None = None,
    ) -> None:
        """*state*: the shared state's (descriptor, row) for this worker, if any."""
        self.index = index
        #: The shared state's row this worker writes (None: it counts alone).
        self.state_row = state[1] if state is not None else None
        self.generation = generation
        self.ready = Event()
        self.accepting = Event()
        #: Set at each reload the worker reports; the supervisor clears it before a SIGHUP.
        self.reloaded = Event()
        #: The status pipe ended: the worker exited (or closed it, which only exiting does).
        self.silent = Event()
        #: Told to accept (so it may hold clients: stop it with SIGTERM, never SIGKILL).
        self.released = False
        #: The supervisor's count of SIGHUPs when this worker started.
        self.hups_at_start = 0
        status_r, status_w = os.pipe()
        control_r, self._control_w = os.pipe()
        env = {
            **os.environ,
            LISTEN_FDS_ENV: ",".join(map(str, listener_fds)),
            STATUS_FD_ENV: str(status_w),
            CONTROL_FD_ENV: str(control_r),
            WORKER_INDEX_ENV: str(index),
            GENERATION_ENV: str(generation),
        }
        if metrics_dir is not None:
            env[METRICS_DIR_ENV] = metrics_dir
        extra_fds: tuple[int, ...] = ()
        if state is not None:
            env[STATE_FD_ENV], env[STATE_ROW_ENV] = str(state[0]), str(state[1])
            extra_fds = (state[0],)
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(*listener_fds, status_w, control_r, *extra_fds),
                env=env,
                preexec_fn=_ignore_until_handled,
            )
        except BaseException:
            os.close(status_r)
            os.close(self._control_w)
            raise
        finally:
            os.close(status_w)
            os.close(control_r)
        self.pid = self.proc.pid
        self._reader = gevent.spawn(self._read_status, status_r)

    def __repr__(self) -> str:
        return f"worker {self.index} (pid {self.pid}, generation {self.generation})"

    def _read_status(self, fd: int) -> None:
        events = {READY[0]: self.ready, ACCEPTING[0]: self.accepting, RELOADED[0]: self.reloaded}
        os.set_blocking(fd, False)
        try:
            while data := nb_read(fd, 64):
                for byte in data:
                    if byte in events:
                        events[byte].set()
        except OSError as exc:
            log.debug("%r: status pipe: %s", self, exc)
        finally:
            os.close(fd)
            self.silent.set()

    def go(self) -> None:
        """Let the worker start accepting."""
        self.released = True
        try:
            os.write(self._control_w, GO)
        except OSError as exc:  # it has exited; its watcher hears of it
            log.debug("%r: %s", self, exc)

    def send_signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (negative: the signal), or None if still running after *timeout*."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Release our ends of its pipes (after it exited)."""
        if self._control_w >= 0:
            os.close(self._control_w)
            self._control_w = -1


class WorkerLink:
    """The worker's end, read once from the environment."""

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        self._status_fd = int(environ.pop(STATUS_FD_ENV))
        self._control_fd = int(environ.pop(CONTROL_FD_ENV))
        fds = environ.pop(LISTEN_FDS_ENV, "")
        self.listener_fds = [int(fd) for fd in fds.split(",") if fd]
        self.index = int(environ.pop(WORKER_INDEX_ENV, "0"))
        self.generation = int(environ.pop(GENERATION_ENV, "1"))
        self.metrics_dir = environ.pop(METRICS_DIR_ENV, None)
        state_fd, state_row = environ.pop(STATE_FD_ENV, None), environ.pop(STATE_ROW_ENV, None)
        #: The shared state's (descriptor, row), if the supervisor gave us one.
        self.state = (int(state_fd), int(state_row)) if state_fd and state_row else None
        os.set_blocking(self._control_fd, False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> WorkerLink | None:
        """Our link to the supervisor, or None if we were not started by one."""
        return cls(environ) if STATUS_FD_ENV in environ else None

    def listeners(self) -> list:
        """The inherited listening sockets (ListenerError if one is not)."""
        return [adopt(fd) for fd in self.listener_fds]

    def _say(self, what: bytes) -> None:
        try:
            os.write(self._status_fd, what)
        except OSError as exc:  # the supervisor is gone; the control pipe tells us too
            log.debug("status pipe: %s", exc)

    def ready(self) -> None:
        self._say(READY)

    def accepting(self) -> None:
        self._say(ACCEPTING)

    def reloaded(self) -> None:
        self._say(RELOADED)

    def wait_go(self) -> bool:
        """Wait (cooperatively) for leave to accept: True, or False if the supervisor is gone."""
        return nb_read(self._control_fd, 1) == GO

    def watch_supervisor(self, on_gone: Callable[[], object]) -> None:
        """Call *on_gone* once the supervisor's end of the control pipe closes."""

        def wait() -> None:
            while nb_read(self._control_fd, 1):
                pass
            log.warning("supervisor is gone: stopping")
            on_gone()

        gevent.spawn(wait)
