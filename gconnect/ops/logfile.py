"""The access log's file: one line per tunnel, cheap enough for the hot path.

The logging module costs a LogRecord, a thread lookup, a stat() (to notice
logrotate) and a flush per line; at thousands of tunnels a second that was 14%
of the proxy's CPU (py-spy, bench rate workload). Here a line is one string
append: the buffer is written at most FLUSH_INTERVAL seconds later (or when it
grows past FLUSH_BYTES), and a moved file is noticed by an inode check at most
once a second, or at once on :meth:`reopen` (SIGUSR1).

Lines are written whole or not at all. When the file cannot take them (disk
full, quota, EIO), what a short write left unwritten is kept and retried, so a
line cut at the last free byte is completed, never glued to the next one. Up
to MAX_PENDING_BYTES of lines are held; past that new lines are dropped whole
and counted (:attr:`LogFile.dropped_lines`) until everything held is written,
and then one line saying how many were dropped goes into the file. Processes
sharing the file (``--workers``) do not write after another one's unfinished
line: before each write the file's last byte is read (one fstat and one pread
per flush). Tunnels never wait for the log.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import time
from typing import Any

from gevent import get_hub

log = logging.getLogger(__name__)

#: Lines reach the file within this many seconds; nginx's access_log flush= is
#: the same idea (it defaults to no timed flush at all when buffered).
FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 64 * 1024
REOPEN_CHECK_INTERVAL = 1.0
#: Lines held while the file cannot be written, at most: four FLUSH_BYTES, some
#: 1,300 text lines, which rides out a blip (a second of the busiest rate one
#: process reaches, minutes of a usual one) and never lets a full disk grow the
#: proxy's memory. Past it, lines are dropped whole and counted.
MAX_PENDING_BYTES = 4 * FLUSH_BYTES
#: While writes fail, try again this often: a failed write is one system call,
#: and freed space is noticed within this time even when no tunnel ends.
RETRY_INTERVAL = 0.5
#: A worker sharing the file (``--workers``) may have been cut short mid-line
#: too: we do not write after its unfinished line while it can still finish it,
#: which it does within a RETRY_INTERVAL of there being room. After this long
#: with room, the line gets a newline from us (its writer died).
FOREIGN_LINE_WAIT = 4 * RETRY_INTERVAL
# ".000Z" to ".999Z", made once: formatting the milliseconds per line cost more
# than the rest of the timestamp.
_MILLISECONDS = [f".{ms:03d}Z" for ms in range(1000)]


class LogFile:
    """Append lines to *path* (``-``: stderr), buffered and logrotate-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: Lines that could not be written and were dropped, since start.
        self.dropped_lines = 0
        self._buffer: list[str] = []
        self._size = 0
        self._timer: Any = None  # a libev timer while a flush is scheduled
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        #: The file is regular and we may read it: its last byte can be checked.
        self._seekable = False
        self._checked = 0.0
        self._second = -1
        self._second_text = ""
        #: Encoded lines not yet written, oldest first, at most MAX_PENDING_BYTES.
        self._pending = b""
        #: The file holds the first part of _pending's first line (a short write).
        self._torn = False
        #: Lines dropped since the last line that said so; new lines are dropped
        #: while it is not zero, until _pending is written.
        self._gap = 0
        #: The error of the failure in progress (``ENOSPC``), "" while writes work.
        self._error = ""
        #: When we first saw another writer's unfinished line at the end of the file.
        self._foreign_since = 0.0
        self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._fd = sys.stderr.fileno()
            return
        self._fd, self._inode, self._seekable = self._open_file()

    def _open_file(self) -> tuple[int, tuple[int, int], bool]:
        # O_APPEND and one write() per flush: several worker processes can share
        # the file without tearing each other's lines. Read access only to look
        # at the last byte (see _foreign_line); without it we write blind.
        flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, os.O_RDWR | flags, 0o640)
            readable = True
        except PermissionError:
            fd = os.open(self.path, os.O_WRONLY | flags, 0o640)
            readable = False
        st = os.fstat(fd)
        return fd, (st.st_dev, st.st_ino), readable and stat.S_ISREG(st.st_mode)

    def timestamp(self, now: float) -> str:
        """ISO 8601 UTC with milliseconds; the date part is formatted once a second."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._second_text + _MILLISECONDS[int((now - second) * 1000)]

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
            self._schedule(FLUSH_INTERVAL)

    def dropped_record(self, count: int, error: str) -> str:
        """The line that tells of *count* lines dropped because of *error*."""
        return f"{self.timestamp(time.time())} event=dropped lines={count} error={error}\n"

    def _schedule(self, seconds: float) -> None:
        self._timer = get_hub().loop.timer(seconds)
        self._timer.start(self.flush)

    def flush(self) -> None:
        """Write what is buffered now; what the file does not take is kept and
        retried (up to MAX_PENDING_BYTES), the rest dropped and counted."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._pending:
            # Held since an earlier flush: these go first, and if they go,
            # the lines buffered since need not be dropped.
            self._write_held()
        if self._buffer:
            self._hold("".join(self._buffer).encode("utf-8", "backslashreplace"))
            self._buffer.clear()
            self._size = 0
            if not self._error:
                self._write_held()
        if self._pending and self._fd >= 0:
            self._schedule(RETRY_INTERVAL)

    def _write_held(self) -> None:
        if self._fd < 0:
            return
        if self.path != "-" and time.monotonic() - self._checked >= REOPEN_CHECK_INTERVAL:
            self._reopen_if_moved()
        if self._write_pending() and self._error:
            self._recovered()

    def _recovered(self) -> None:
        error, self._error = self._error, ""
        if not self._gap:
            log.warning("access log %s written again; no line was dropped", self.path)
            return
        # Say what the outage cost in the file itself, where the gap is.
        log.warning("access log %s written again; %d lines were dropped", self.path, self._gap)
        self._pending = self.dropped_record(self._gap, error).encode()
        self._gap = 0
        self._write_pending()

    def _hold(self, data: bytes) -> None:
        """Add *data* (whole lines) to _pending, dropping what does not fit."""
        if not self._gap and len(self._pending) + len(data) <= MAX_PENDING_BYTES:
            self._pending = self._pending + data if self._pending else data
            return
        kept = 0
        if not self._gap:
            room = max(0, MAX_PENDING_BYTES - len(self._pending))
            kept = data.rfind(b"\n", 0, room) + 1
            self._pending += data[:kept]
            if not self._error:
                # Held back by another writer's unfinished line (_foreign_line),
                # not by a failed write.
                self._error = "unfinished_line"
        dropped = data.count(b"\n", kept)
        self._gap += dropped
        self.dropped_lines += dropped

    def _write_pending(self) -> bool:
        """Write _pending; True if all of it was written."""
        if self._seekable:
            if self._torn and not self._torn_line_at_end():
                self._drop_torn_rest()
            if not self._torn and self._foreign_line():
                return False
        try:
            while self._pending:
                written = os.write(self._fd, self._pending)
                if not written:
                    return False  # not done by files; retried like a failure
                self._torn = self._pending[written - 1] != 0x0A
                self._pending = self._pending[written:]
        except OSError as exc:
            self._failing(exc.errno or errno.EIO)
            return False
        return True

    def _failing(self, code: int) -> None:
        if not self._error:
            self._error = errno.errorcode.get(code, str(code))
            log.error(
                "cannot write access log %s: %s; holding up to %d KiB of lines, then dropping them (counted)",
                self.path,
                os.strerror(code),
                MAX_PENDING_BYTES // 1024,
            )

    def _torn_line_at_end(self) -> bool:
        # O_APPEND leaves our offset at the end of what we wrote last.
        try:
            return os.lseek(self._fd, 0, os.SEEK_CUR) == os.fstat(self._fd).st_size
        except OSError:
            return True

    def _drop_torn_rest(self) -> None:
        # Another writer wrote after the head of our line, or the file was
        # truncated (copytruncate): its rest would be a line of its own, torn.
        self._pending = self._pending.partition(b"\n")[2]
        self._torn = False
        self.dropped_lines += 1

    def _foreign_line(self) -> bool:
        """True while the file ends in another writer's unfinished line.

        Its writer completes it once there is room (it retries every
        RETRY_INTERVAL). If there has been room for FOREIGN_LINE_WAIT and the
        line is still unfinished, its writer died with it: we end it with a
        newline of our own, so that at least our lines stay whole.
        """
        try:
            size = os.fstat(self._fd).st_size
            if not size or os.pread(self._fd, 1, size - 1) == b"\n":
                self._foreign_since = 0.0
                return False
            room = os.fstatvfs(self._fd).f_bfree
        except OSError:
            return False
        now = time.monotonic()
        if not room:
            # Its writer cannot finish yet, nor could we write.
            self._failing(errno.ENOSPC)
        if not room or not self._foreign_since:
            self._foreign_since = now
            return True
        if now - self._foreign_since < FOREIGN_LINE_WAIT:
            return True
        try:
            os.write(self._fd, b"\n")
        except OSError:
            return True
        self._foreign_since = 0.0
        return False

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
            fd, inode, seekable = self._open_file()
        except OSError as exc:
            print(f"gconnect: cannot reopen access log {self.path}: {exc}; still writing the old file", file=sys.stderr)
            return
        if self._torn:
            self._finish_torn_line()
        old, self._fd, self._inode, self._seekable = self._fd, fd, inode, seekable
        if old >= 0:
            os.close(old)

    def _finish_torn_line(self) -> None:
        # The head of the line is in the old file: its rest goes there, or nowhere.
        rest = self._pending.partition(b"\n")[0] + b"\n"
        try:
            if os.write(self._fd, rest) == len(rest):
                self._pending = self._pending[len(rest) :]
                self._torn = False
                return
        except OSError:
            pass
        self._drop_torn_rest()

    def close(self) -> None:
        """Flush, and close the file; lines it still cannot take are counted as dropped."""
        self.flush()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._pending:
            lost = self._pending.count(b"\n")
            self.dropped_lines += lost
            log.error("access log %s: %d lines could not be written before closing", self.path, lost)
            self._pending = b""
        if self._fd >= 0 and self.path != "-":
            os.close(self._fd)
        self._fd = -1
