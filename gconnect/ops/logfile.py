"""The access log's file: one line per tunnel, cheap enough for the hot path.

The logging module costs a LogRecord, a thread lookup, a stat() (to notice
logrotate) and a flush per line; at thousands of tunnels a second that was 14%
of the proxy's CPU (py-spy, bench rate workload). Here a line is one string
append: the buffer is written at most FLUSH_INTERVAL seconds later (or when it
grows past FLUSH_BYTES), and a moved file is noticed by an inode check at most
once a second, or at once on :meth:`reopen` (SIGUSR1).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from gevent import get_hub

#: Lines reach the file within this many seconds; nginx's access_log flush= is
#: the same idea (it defaults to no timed flush at all when buffered).
FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 64 * 1024
REOPEN_CHECK_INTERVAL = 1.0


class LogFile:
    """Append lines to *path* (``-``: stderr), buffered and logrotate-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._buffer: list[str] = []
        self._size = 0
        self._timer: Any = None  # a libev timer while a flush is scheduled
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        self._checked = 0.0
        self._second = -1
        self._second_text = ""
        self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._fd = sys.stderr.fileno()
            return
        self._fd, self._inode = self._open_file()

    def _open_file(self) -> tuple[int, tuple[int, int]]:
        # O_APPEND and one write() per flush: several worker processes can share
        # the file without tearing each other's lines.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        return fd, (st.st_dev, st.st_ino)

    def timestamp(self, now: float) -> str:
        """ISO 8601 UTC with milliseconds; the date part is formatted once a second."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"

    def write(self, line: str) -> None:
        """Queue one line (without its newline), prefixed with the time."""
        self.write_raw(f"{self.timestamp(time.time())} {line}\n")

    def write_raw(self, text: str) -> None:
        """Queue *text* as it is (it ends with its newline)."""
        self._buffer.append(text)
        self._size += len(text)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = get_hub().loop.timer(FLUSH_INTERVAL)
            self._timer.start(self.flush)

    def flush(self) -> None:
        """Write what is buffered now."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if not self._buffer:
            return
        data = "".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        if self.path != "-" and time.monotonic() - self._checked >= REOPEN_CHECK_INTERVAL:
            self._reopen_if_moved()
        if self._fd < 0:
            return
        payload = data.encode("utf-8", "backslashreplace")
        try:
            while payload:
                written = os.write(self._fd, payload)
                payload = payload[written:]
        except OSError as exc:
            print(f"gconnect: cannot write access log {self.path}: {exc}", file=sys.stderr)

    def _reopen_if_moved(self) -> None:
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._inode
        except FileNotFoundError:
            moved = True
        if moved:
            self.reopen()

    def reopen(self) -> None:
        """Open the file again (logrotate's postrotate, SIGUSR1).

        The new file is opened before the old descriptor is closed: if opening
        fails (directory gone, disk full, no descriptor left) we keep writing to
        the old one. Closing first would leave a stale number that the next
        socket reuses, and access lines would go into a stranger's tunnel.
        """
        if self.path == "-":
            return
        try:
            fd, inode = self._open_file()
        except OSError as exc:
            print(f"gconnect: cannot reopen access log {self.path}: {exc}; still writing the old file", file=sys.stderr)
            return
        old, self._fd, self._inode = self._fd, fd, inode
        if old >= 0:
            os.close(old)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0 and self.path != "-":
            os.close(self._fd)
        self._fd = -1
