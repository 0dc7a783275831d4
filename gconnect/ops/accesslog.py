"""The access log's JSON format: a line when a tunnel opens, one when it closes.

``text`` (the default, :class:`~gconnect.logfile.LogFile`) is one ``key=value``
line per tunnel, written when it closes. ``json`` writes one object per line:
``"event": "open"`` when the 200 is sent, so long tunnels are visible while
they live, and ``"event": "close"`` at the end, both with the tunnel's ``id``
so the two can be joined; ``"event": "dropped"`` says how many lines (``lines``)
could not be written, and why (``error``, e.g. ``ENOSPC``). Times (``dns``, ``connect``, ``duration``) are in
seconds; ``time`` is the wall clock in UTC.

Buffering, rotation (SIGUSR1, a moved file noticed within a second),
``copytruncate`` safety (append mode) and whole lines on a full disk are
LogFile's.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .logfile import LogFile

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def fmt_addr(address: object) -> str:
    """``host:port``, ``[v6]:port``; anything else as ``str()``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


class JsonLogFile(LogFile):
    """A LogFile of JSON lines: the time goes inside the object, not in front."""

    def write_json(self, event: str, fields: dict[str, Any]) -> None:
        """Queue one ``{"time", "event", **fields}`` line."""
        stamp = self.timestamp(time.time())
        self.write_raw(_dumps({"time": stamp, "event": event, **fields}) + "\n")

    def dropped_record(self, count: int, error: str) -> str:
        """``{"time", "event": "dropped", "lines", "error"}``."""
        stamp = self.timestamp(time.time())
        return _dumps({"time": stamp, "event": "dropped", "lines": count, "error": error}) + "\n"
