"""The htpasswd file as a provider: its table, reloads, and the slow hashes off the hub.

The file's formats are :mod:`gconnect.auth.htpasswd`'s. bcrypt is slow on
purpose, so every check runs in gevent's thread pool (bcrypt releases the GIL)
and other tunnels' bytes keep flowing while one client's password is checked.

A user name that is not in the file costs one bcrypt check against a dummy
hash, so timing does not say which names exist. The file is re-read when its
mtime, size or inode changes (polled) or on :meth:`HtpasswdProvider.reload`
(SIGHUP); a file that fails to parse keeps the previous table in force.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import bcrypt
import gevent

from ..config import Config
from .htpasswd import DEFAULT_BCRYPT_ROUNDS, WEAK_SCHEMES, AuthFileError, Entry, load_htpasswd, verify_password
from .identity import Credentials, Identity, Rejected

log = logging.getLogger(__name__)

#: How often the auth file's mtime is polled (seconds): inotify-free and cheap.
AUTH_FILE_POLL_SECONDS = 1.0


def file_identity(path: str) -> tuple[int, int, int, int] | None:
    """What changes when *path* is replaced or rewritten (inode, mtime, size, ctime); None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns


class HtpasswdProvider:
    """``--auth-file``: knows the users the file lists."""

    name = "htpasswd"

    def __init__(self, config: Config) -> None:
        self.path = config.auth_file
        self.allow_plaintext = config.allow_plaintext_passwords
        self.ttl = config.auth_cache_ttl
        # A failure is never remembered: a corrected password works at once.
        self.negative_ttl = 0.0
        self._identity = file_identity(self.path)
        self.table = load_htpasswd(self.path, allow_plaintext=self.allow_plaintext)
        self._dummy = self._dummy_entry(self.table)
        self._watcher: Any = None
        #: Called after a reload that changed the table (the authenticator drops its cache).
        self.on_change: Any = None
        self._log_loaded("loaded")

    def describe(self) -> str:
        return f"htpasswd file {self.path} ({len(self.table)} users)"

    def _log_loaded(self, verb: str) -> None:
        log.info("auth file %s %s: %d users", self.path, verb, len(self.table))
        weak: dict[str, list[str]] = {}
        for entry in self.table.values():
            if entry.scheme in WEAK_SCHEMES or entry.scheme == "plain":
                weak.setdefault(entry.scheme, []).append(entry.user)
        for scheme, users in sorted(weak.items()):
            log.warning(
                "auth file %s: %d users have weak %s passwords (%s); re-create them with 'gconnect passwd'",
                self.path,
                len(users),
                scheme,
                ", ".join(users[:5]) + (", ..." if len(users) > 5 else ""),
            )

    @staticmethod
    def _dummy_entry(table: dict[str, Entry]) -> Entry:
        # Same cost as the real entries: an unknown name takes as long as a wrong password.
        rounds = DEFAULT_BCRYPT_ROUNDS
        for entry in table.values():
            if entry.scheme == "bcrypt":
                rounds = int(entry.hashed[4:6])
                break
        salt = bcrypt.gensalt(rounds).decode("ascii")
        return Entry("", "bcrypt", salt + "." * 31)

    def identify(self, credentials: Credentials) -> Identity | None:
        if credentials.scheme != "basic":
            return None
        entry = self.table.get(credentials.user)
        ok = self._verify_off_hub(entry or self._dummy, credentials.password)
        if entry is None:
            return None
        if not ok:
            raise Rejected(self.name, f"wrong password for {credentials.user!r}")
        return Identity(credentials.user, self.name)

    @staticmethod
    def _verify_off_hub(entry: Entry, password: bytes) -> bool:
        # bcrypt holds a CPU for tens of ms and releases the GIL: the hub keeps
        # serving other tunnels while a pool thread hashes.
        return bool(gevent.get_hub().threadpool.spawn(verify_password, entry, password).get())

    def start(self) -> None:
        """Poll the file for changes until :meth:`stop`."""
        if self._watcher is None:
            self._watcher = gevent.spawn(self._watch)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.kill(block=False)
            self._watcher = None

    def _watch(self) -> None:
        while True:
            gevent.sleep(AUTH_FILE_POLL_SECONDS)
            if file_identity(self.path) != self._identity and self.reload() and self.on_change is not None:
                self.on_change()

    def reload(self) -> bool:
        """Re-read the file. On failure keep the table in force and log why."""
        identity = file_identity(self.path)
        try:
            table = load_htpasswd(self.path, allow_plaintext=self.allow_plaintext)
        except AuthFileError as exc:
            self._identity = identity  # one error line per change, not one per poll
            log.error("%s; keeping the %d users loaded before", exc, len(self.table))
            return False
        self._identity = identity
        self.table = table
        self._dummy = self._dummy_entry(table)
        self._log_loaded("reloaded")
        return True
