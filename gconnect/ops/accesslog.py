"""The access log: one record per client (per request for forwarded
http:// requests, with ``method``, ``scheme`` and, with ``--log-path``,
``path``), from the tunnel's attributes.

``text`` (the default) is one ``key=value`` line per client, written when it
is done (Squid's and nginx's habit). ``json`` writes one object per line:
``"event": "open"`` when the 200 is sent, so long tunnels are visible while
they live, and ``"event": "close"`` at the end, both with the tunnel's ``id``
so the two can be joined; ``"event": "dropped"`` says how many lines (``lines``)
could not be written, and why (``error``, e.g. ``ENOSPC``). Times (``dns``,
``connect``, ``first_byte``, ``duration``) are seconds from accept; ``time`` is
the wall clock in UTC.

Both read a finished :class:`~gconnect.tunnel.tunnel.Tunnel` once, in
:meth:`AccessLog.closed`, the tunnel's one exit. Buffering, rotation (SIGUSR1,
a moved file noticed within a second), ``copytruncate`` safety (append mode)
and whole lines on a full disk are :class:`~gconnect.ops.logfile.LogFile`'s.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..auth.authenticator import log_safe
from .logfile import LogFile

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def fmt_addr(address: object) -> str:
    """``host:port``, ``[v6]:port``; anything else as ``str()``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _quote_path(path: str) -> str:
    """A path as one token of a key=value line: spaces, quotes and controls escaped."""
    return "".join(ch if "!" <= ch <= "~" and ch not in '"\\' else f"%{ord(ch):02X}" for ch in path)


def _since(start: float, moment: float) -> float | None:
    return round(moment - start, 6) if moment else None


class JsonLogFile(LogFile):
    """A LogFile whose own records (the dropped-lines count) are JSON lines too."""

    def dropped_record(self, count: int, error: str) -> str:
        """``{"time", "event": "dropped", "lines", "error"}``."""
        stamp = self.timestamp(time.time())
        return _dumps({"time": stamp, "event": "dropped", "lines": count, "error": error}) + "\n"


class AccessLog:
    """Where the records go; :meth:`opened` and :meth:`closed` say what they hold."""

    file_class: type[LogFile] = LogFile

    def __init__(self, path: str) -> None:
        self.file = self.file_class(path)

    @property
    def dropped_lines(self) -> int:
        """Lines lost to a full disk (or another write failure) so far."""
        return self.file.dropped_lines

    def opened(self, tunnel: Any) -> None:
        """The 200 was sent."""

    def closed(self, tunnel: Any) -> None:
        """The client is done, whatever the outcome."""
        raise NotImplementedError

    def reopen(self) -> None:
        self.file.reopen()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TextAccessLog(AccessLog):
    """One ``key=value`` line per client, at its end."""

    def closed(self, tunnel: Any) -> None:
        host, port = tunnel.address[0], tunnel.address[1]
        user = log_safe(tunnel.user) if tunnel.user else "-"
        # HTTP/2: the stream (0: the connection itself); HTTP/1.1 lines are as they were.
        h2 = "" if tunnel.stream_id is None else f" proto=h2 stream={tunnel.stream_id}"
        # A forwarded http:// request: its method (and its path, when --log-path asks).
        method = getattr(tunnel, "method", None)
        if method is not None:
            h2 += f" method={method} scheme={tunnel.scheme}"
            if tunnel.path is not None:
                h2 += f" path={_quote_path(tunnel.path)}"
        self.file.write(
            f"client={f'[{host}]' if ':' in host else host}:{port} user={user} target={tunnel.target} "
            f"addr={tunnel.dialled} via={tunnel.via or '-'} status={tunnel.status} "
            f"up={tunnel.bytes_up} down={tunnel.bytes_down} "
            f"duration={time.monotonic() - tunnel.started:.3f} reason={tunnel.reason}{h2}"
            + (f" would_deny={tunnel.would_deny}" if tunnel.would_deny else "")
        )


class JsonAccessLog(AccessLog):
    """JSON lines: one at the 200, one at the end (only that one for a refusal)."""

    file_class = JsonLogFile

    def _common(self, tunnel: Any) -> dict[str, Any]:
        started = tunnel.started
        fields: dict[str, Any] = {
            "id": f"{id(tunnel):x}-{started:.6f}",
            "client": fmt_addr(tunnel.address),
            "user": tunnel.user,
            "target": tunnel.target,
            "addr": tunnel.dialled,
            "via": tunnel.via,
            "dns": _since(started, tunnel.resolved_at),
            "connect": _since(tunnel.resolved_at, tunnel.connected_at) if tunnel.resolved_at else None,
        }
        if tunnel.would_deny:
            fields["would_deny"] = tunnel.would_deny
        if tunnel.stream_id is not None:
            fields["proto"] = "h2"
            fields["stream"] = tunnel.stream_id
        method = getattr(tunnel, "method", None)
        if method is not None:
            fields["method"] = method
            fields["scheme"] = tunnel.scheme
            if tunnel.path is not None:
                fields["path"] = tunnel.path
        return fields

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        stamp = self.file.timestamp(time.time())
        self.file.write_raw(_dumps({"time": stamp, "event": event, **fields}) + "\n")

    def opened(self, tunnel: Any) -> None:
        self._write("open", self._common(tunnel))

    def closed(self, tunnel: Any) -> None:
        fields = self._common(tunnel)
        fields["status"] = tunnel.status
        fields["up"] = tunnel.bytes_up
        fields["down"] = tunnel.bytes_down
        fields["reason"] = tunnel.reason
        # Accept to the first byte from the target reaching the client.
        fields["first_byte"] = _since(tunnel.started, tunnel.first_byte_at)
        fields["duration"] = round(time.monotonic() - tunnel.started, 6)
        self._write("close", fields)


def open_access_log(path: str, log_format: str) -> AccessLog | None:
    """The access log for ``--access-log PATH`` (None for ``""``: off)."""
    if not path:
        return None
    return JsonAccessLog(path) if log_format == "json" else TextAccessLog(path)
