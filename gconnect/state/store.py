"""The totals of a service kept across restarts: one SQLite file in ``--state-dir``.

One process owns the file (the supervisor with workers, the proxy alone
without), and only its keeper thread uses it: it is read once at start and
written whole every :data:`~gconnect.defaults.STATE_FLUSH_SECONDS` and at stop,
never from the hub. A write is one transaction: a crash leaves the last one.

Each row is a total's key, this service's sum, and how much of it the fleet
(``--shared-state``) has been told, so what a restart finds unpushed is pushed
then, and nothing is counted twice.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping

FILE_NAME = "totals.sqlite3"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, value INTEGER NOT NULL, pushed INTEGER NOT NULL)",
    # The fleet's epoch marker that "pushed" refers to (gconnect.state.fleet).
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class Store:
    """The state directory's SQLite file of totals."""

    def __init__(self, directory: str) -> None:
        """Open (or create) the file; OSError if the directory or the file cannot be used."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, FILE_NAME)
        try:
            # Used by one thread at a time (the keeper's), not always the one that opened it.
            self.db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            for statement in SCHEMA:
                self.db.execute(statement)
        except sqlite3.Error as exc:
            raise OSError(f"state file {self.path}: {exc}") from exc

    def load(self) -> tuple[dict[str, tuple[int, int]], str]:
        """Every key's (value, pushed), and the fleet epoch "pushed" refers to ("" if none)."""
        rows = self.db.execute("SELECT key, value, pushed FROM totals")
        totals = {key: (value, pushed) for key, value, pushed in rows}
        epoch = self.db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        return totals, epoch[0] if epoch else ""

    def save(self, totals: Mapping[str, int], pushed: Mapping[str, int], epoch: str = "") -> None:
        """Replace the file's contents with *totals*, *pushed* and *epoch* (keys in neither are dropped)."""
        rows = [(key, totals.get(key, 0), pushed.get(key, 0)) for key in {*totals, *pushed}]
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM totals")
            db.executemany("INSERT INTO totals (key, value, pushed) VALUES (?, ?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('epoch', ?)", (epoch,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
