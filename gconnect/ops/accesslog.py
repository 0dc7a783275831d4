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
the wall clock in UTC. With ``--accounting-interval``, each user who moved
bytes in an interval gets an ``event=account`` record (``"event": "account"``)
with that interval's ``up``, ``down``, ``tunnels`` and ``requests``
(:mod:`gconnect.ops.accounting`).

Both read a finished :class:`~gconnect.tunnel.tunnel.Tunnel`'s public
attributes once, in :meth:`AccessLog.closed`, called from the tunnel's one
exit through :class:`~gconnect.ops.observer.ProcessObserver`. Buffering, rotation (SIGUSR1,
a moved file noticed within a second), ``copytruncate`` safety (append mode)
and whole lines on a full disk are :class:`~gconnect.ops.logfile.LogFile`'s.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..auth.authenticator import log_safe
from ..config import hostport
from .logfile import LogFile

if TYPE_CHECKING:
    from ..tunnel.observer import ForwardedRecord
    from ..tunnel.observer import TunnelRecord as Tunnel

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def fmt_addr(address: object) -> str:
    """``host:port``, ``[v6]:port``; anything else as ``str()``."""
    if isinstance(address, tuple) and len(address) >= 2:
        return hostport(str(address[0]), address[1])
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
    #: Whether the records show the step times (``dns``, ``connect``, ``first_byte``).
    timings = False

    def __init__(self, path: str) -> None:
        self.file = self.file_class(path)
        #: The last client address formatted, and its text: a keep-alive
        #: connection's requests share one address tuple.
        self._address: object = None
        self._client = "-"

    def client(self, address: object) -> str:
        """*address* as a record shows it (:func:`fmt_addr`), formatted once per client connection."""
        if address is not self._address:
            self._address, self._client = address, fmt_addr(address)
        return self._client

    @property
    def dropped_lines(self) -> int:
        """Lines lost to a full disk (or another write failure) so far."""
        return self.file.dropped_lines

    def opened(self, tunnel: Tunnel) -> None:
        """The 200 was sent."""

    def closed(self, tunnel: Tunnel) -> None:
        """The client is done, whatever the outcome."""
        raise NotImplementedError

    def forwarded(self, request: ForwardedRecord) -> None:
        """A forwarded http:// request is done, whatever the outcome."""
        raise NotImplementedError

    def account(self, user: str, figures: dict[str, Any]) -> None:
        """The periodic accounting record of *user*: ``up``, ``down``, ``tunnels``,
        ``requests`` and ``seconds`` of the interval, and ``quota_used`` and
        ``quota`` (the period's bytes so far) when the user has a quota."""
        raise NotImplementedError

    def reopen(self) -> None:
        self.file.reopen()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TextAccessLog(AccessLog):
    """One ``key=value`` line per client, at its end."""

    def closed(self, tunnel: Tunnel, extra: str = "") -> None:
        # The optional fields are added to the short tail, and the line (with
        # its time) is built once: one record per forwarded request.
        user = log_safe(tunnel.user) if tunnel.user else "-"
        # A stream of a connection (0: the connection itself); a connection's only request has none.
        side = tunnel.side
        if side.stream_id is not None:
            extra = f" proto={side.protocol} stream={side.stream_id}{extra}"
        if tunnel.would_deny:
            extra += f" would_deny={tunnel.would_deny}"
        if tunnel.identity is not None:
            # Which provider vouched for the user: htpasswd, helper, jwt or cert.
            extra += f" auth={tunnel.identity.provider}"
        if tunnel.sni_check:
            extra += f" sni={tunnel.sni or '-'} sni_check={tunnel.sni_check}"
        file = self.file
        file.write_raw(
            f"{file.timestamp(time.time())} client={self.client(tunnel.address)} user={user} "
            f"target={tunnel.target} addr={tunnel.dialled} via={tunnel.via or '-'} status={tunnel.status} "
            f"up={tunnel.bytes_up} down={tunnel.bytes_down} "
            f"duration={time.monotonic() - tunnel.started:.3f} reason={tunnel.end_reason}{extra}\n"
        )

    def account(self, user: str, figures: dict[str, Any]) -> None:
        values = " ".join(f"{key}={value}" for key, value in figures.items())
        self.file.write(f"event=account user={log_safe(user)} {values}")

    def forwarded(self, request: ForwardedRecord) -> None:
        # The method, and the path only when --log-path asks.
        extra = f" method={request.method} scheme={request.scheme}"
        if request.path is not None:
            extra += f" path={_quote_path(request.path)}"
        self.closed(request, extra)


class JsonAccessLog(AccessLog):
    """JSON lines: one at the 200, one at the end (only that one for a refusal)."""

    file_class = JsonLogFile
    timings = True

    def _common(self, tunnel: Tunnel) -> dict[str, Any]:
        started = tunnel.started
        fields: dict[str, Any] = {
            "id": f"{id(tunnel):x}-{started:.6f}",
            "client": self.client(tunnel.address),
            "user": tunnel.user,
            "target": tunnel.target,
            "addr": tunnel.dialled,
            "via": tunnel.via,
            "dns": _since(started, tunnel.resolved_at),
            "connect": _since(tunnel.resolved_at, tunnel.connected_at) if tunnel.resolved_at else None,
        }
        if tunnel.would_deny:
            fields["would_deny"] = tunnel.would_deny
        if tunnel.identity is not None:
            fields["auth"] = tunnel.identity.provider
        if tunnel.sni_check:
            fields["sni"] = tunnel.sni
            fields["sni_check"] = tunnel.sni_check
        side = tunnel.side
        if side.stream_id is not None:
            fields["proto"] = side.protocol
            fields["stream"] = side.stream_id
        return fields

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        stamp = self.file.timestamp(time.time())
        self.file.write_raw(_dumps({"time": stamp, "event": event, **fields}) + "\n")

    def opened(self, tunnel: Tunnel) -> None:
        self._write("open", self._common(tunnel))

    def closed(self, tunnel: Tunnel, extra: dict[str, Any] | None = None) -> None:
        fields = self._common(tunnel)
        if extra:
            fields.update(extra)
        fields["status"] = tunnel.status
        fields["up"] = tunnel.bytes_up
        fields["down"] = tunnel.bytes_down
        fields["reason"] = tunnel.end_reason
        # Accept to the first byte from the target reaching the client.
        fields["first_byte"] = _since(tunnel.started, tunnel.first_byte_at)
        fields["duration"] = round(time.monotonic() - tunnel.started, 6)
        self._write("close", fields)

    def account(self, user: str, figures: dict[str, Any]) -> None:
        self._write("account", {"user": user, **figures})

    def forwarded(self, request: ForwardedRecord) -> None:
        extra = {"method": request.method, "scheme": request.scheme}
        if request.path is not None:
            extra["path"] = request.path
        self.closed(request, extra)


def open_access_log(path: str, log_format: str) -> AccessLog | None:
    """The access log for ``--access-log PATH`` (None for ``""``: off)."""
    if not path:
        return None
    return JsonAccessLog(path) if log_format == "json" else TextAccessLog(path)
