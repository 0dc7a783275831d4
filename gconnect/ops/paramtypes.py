"""click parameter types for the values gconnect's options take.

Each type turns the text of the command line, a ``GCONNECT_*`` variable or the
config file into the value the Config field holds, or fails with a message
naming the value; ``to_text`` turns a value back into text that converts to
it again (how a supervisor hands its options to its workers). Values that are
already converted (click's defaults) pass through unchanged.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Any

import click

from .. import config as cfg
from ..tunnel.names import HostNameError, parse_pattern


def parse_hostport(text: str, *, default_port: int | None = None, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` (or a bare host when *default_port* is set)."""
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise click.BadParameter(f"{text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise click.BadParameter(f"{text!r}: expected [V6]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text and default_port is None:
        raise click.BadParameter(f"{text!r}: write IPv6 addresses as [V6]:PORT")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise click.BadParameter(f"{text!r}: {host!r} is not an IP address") from None
    if not port_text:
        if default_port is None:
            raise click.BadParameter(f"{text!r}: the port is required (HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise click.BadParameter(f"{text!r}: bad port {port_text!r}")
    return host, int(port_text)


def parse_port_range(text: str) -> tuple[int, int]:
    """``443`` or ``8000-8999``."""
    low_text, dash, high_text = text.partition("-")
    if not dash:
        high_text = low_text
    if not (low_text.isdigit() and high_text.isdigit()):
        raise click.BadParameter(f"{text!r}: expected PORT or LOW-HIGH")
    low, high = int(low_text), int(high_text)
    if not (1 <= low <= high <= 65535):
        raise click.BadParameter(f"{text!r}: ports are 1-65535, low <= high")
    return low, high


def parse_network(text: str) -> cfg.IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc}") from None


def parse_upstream(text: str) -> cfg.ParentProxy:
    """``http://[user:pass@]host:port`` (the port is required)."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "http":
        raise click.BadParameter(f"{text!r}: only http:// parent proxies are supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise click.BadParameter(f"{text!r}: expected http://[user:pass@]host:port and nothing after")
    try:
        port = parts.port
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc}") from None
    if not parts.hostname or port is None:
        raise click.BadParameter(f"{text!r}: the host and port are required (http://host:port)")
    username = urllib.parse.unquote(parts.username or "")
    return cfg.ParentProxy(parts.hostname, port, username, urllib.parse.unquote(parts.password or ""))


def parse_upstream_for(text: str) -> str:
    """A CIDR or IP (matches IP-literal targets) or a host-name glob such as
    ``*.example.com`` (matches names, case-insensitively); returned normalised."""
    text = text.strip().lower()
    if not text:
        raise click.BadParameter("empty pattern")
    if "/" in text or ":" in text or text.replace(".", "").isdigit():
        return str(parse_network(text))
    if not all(c.isalnum() or c in "-._*?[]" for c in text):
        raise click.BadParameter(f"{text!r}: expected a host-name glob (*.example.com) or a CIDR")
    return text


def parse_pool(text: str) -> cfg.UpstreamPool:
    """``NAME URL [URL...] [key=value...]`` (keys: strategy, max-fails,
    fail-timeout, check, check-interval) -> UpstreamPool. URLs hold no spaces."""
    if not text.strip():
        raise click.BadParameter("empty pool: expected NAME URL [URL...]")
    name, *tokens = text.split()
    urls, options = [], dict[str, Any]()
    for token in tokens:
        key, eq, value = token.partition("=")
        if "://" in token:
            urls.append(parse_upstream(token))
        elif eq and key.replace("_", "-") in cfg.POOL_KEYS:
            field = cfg.POOL_KEYS[key.replace("_", "-")]
            try:
                options[field] = (
                    value if field in ("strategy", "check") else (int(value) if field == "max_fails" else float(value))
                )
            except ValueError:
                raise click.BadParameter(f"{text!r}: {key}: not a number: {value!r}") from None
        else:
            raise click.BadParameter(f"{text!r}: {token!r} is neither a URL nor one of {', '.join(cfg.POOL_KEYS)}")
    try:
        return cfg.UpstreamPool(name, tuple(urls), **options)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_route(text: str) -> cfg.Route:
    """``PATTERN[,PATTERN...]=VIA`` (VIA: a pool's name or ``direct``) -> Route."""
    patterns, eq, via = text.rpartition("=")
    if not eq or not via.strip():
        raise click.BadParameter(f"{text!r}: expected PATTERN[,PATTERN...]=POOL or ...=direct")
    try:
        return cfg.Route(tuple(parse_upstream_for(p) for p in patterns.split(",") if p.strip()), via.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


#: Size suffixes: SI (k, M, G, T: powers of 1000, as "MB/s" on a link) and IEC (Ki, Mi, Gi, Ti).
_BYTE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BYTE_PATTERN = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(i?)(?:b|bytes?)?\s*", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``1500000``, ``2M``, ``2MB``, ``10MiB``, ``1.5G`` -> a whole number of bytes."""
    match = _BYTE_PATTERN.fullmatch(text)
    if match is None:
        raise click.BadParameter(f"{text!r}: expected a byte count such as 500k, 2M, 10MiB or 1500000")
    number, prefix, binary = match.groups()
    if binary and not prefix:
        raise click.BadParameter(f"{text!r}: 'i' needs a prefix (KiB, MiB, GiB)")
    unit = 1024 ** "kmgt".index(prefix.lower()) * 1024 if binary else _BYTE_UNITS[prefix.lower()]
    return int(float(number) * unit)


class ValueType(click.ParamType):
    """A type whose text is parsed by one function; ``""`` is None when *optional*."""

    def __init__(self, optional: bool = False) -> None:
        self.optional = optional

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def to_text(self, value: Any) -> str:
        return "" if value is None else str(value)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        if self.optional and not value:
            return None
        try:
            return self.parse(value)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


class HostPort(ValueType):
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ``localhost`` is 127.0.0.1."""

    name = "HOST:PORT"

    def __init__(self, default_port: int | None = None, optional: bool = False) -> None:
        super().__init__(optional)
        self.default_port = default_port
        if default_port is not None:
            self.name = "HOST[:PORT]"

    def parse(self, text: str) -> tuple[str, int]:
        return parse_hostport(text, default_port=self.default_port)

    def to_text(self, value: Any) -> str:
        return "" if value is None else cfg.hostport(*value)


class PortRange(ValueType):
    """``443`` or ``8000-8999`` -> (low, high)."""

    name = "PORT[-PORT]"

    def parse(self, text: str) -> tuple[int, int]:
        return parse_port_range(text)

    def to_text(self, value: Any) -> str:
        low, high = value
        return str(low) if low == high else f"{low}-{high}"


class ByteCount(ValueType):
    """A byte count with an optional SI or IEC suffix (:func:`parse_bytes`) -> int."""

    name = "BYTES"

    def parse(self, text: str) -> int:
        return parse_bytes(text)


class Network(ValueType):
    """A CIDR (or a bare address, its /32 or /128) -> an ip_network."""

    name = "CIDR"

    def parse(self, text: str) -> cfg.IPNetwork:
        return parse_network(text)


def url_text(value: cfg.ParentProxy) -> str:
    """The parent's URL with its password: str(ParentProxy) hides it; this is the one place that spells it."""
    quote = urllib.parse.quote
    auth = f"{quote(value.username, safe='')}:{quote(value.password, safe='')}@" if value.username else ""
    return f"http://{auth}{cfg.hostport(value.host, value.port)}"


class UpstreamURL(ValueType):
    """``http://[user:pass@]host:port`` -> ParentProxy; ``""`` is None."""

    name = "URL"

    def parse(self, text: str) -> cfg.ParentProxy:
        return parse_upstream(text)

    def to_text(self, value: Any) -> str:
        return "" if value is None else url_text(value)


class UpstreamPoolSpec(ValueType):
    """``NAME URL [URL...] [key=value...]`` -> UpstreamPool."""

    name = "POOL"

    def split_envvar_value(self, rv: str) -> Any:
        # A pool's text holds spaces: GCONNECT_UPSTREAMS separates pools with ';'.
        return [part for part in rv.split(";") if part.strip()]

    def parse(self, text: str) -> cfg.UpstreamPool:
        return parse_pool(text)

    def to_text(self, value: Any) -> str:
        defaults = cfg.UpstreamPool(value.name, value.urls)
        options = [
            f"{key}={getattr(value, field)}"
            for key, field in cfg.POOL_KEYS.items()
            if getattr(value, field) != getattr(defaults, field)
        ]
        return " ".join([value.name, *(url_text(url) for url in value.urls), *options])


class RouteSpec(ValueType):
    """``PATTERN[,PATTERN...]=VIA`` -> Route."""

    name = "ROUTE"

    def parse(self, text: str) -> cfg.Route:
        return parse_route(text)

    def to_text(self, value: Any) -> str:
        return ",".join(value.patterns) + "=" + value.via


class SourceAddress(ValueType):
    """An IP address to bind dialled sockets to."""

    name = "ADDR"

    def parse(self, text: str) -> str:
        try:
            return str(ipaddress.ip_address(text.strip("[]")))
        except ValueError:
            raise click.BadParameter(f"{text!r} is not an IP address") from None


class UpstreamPattern(ValueType):
    """A host-name glob or a CIDR, normalised."""

    name = "PATTERN"

    def parse(self, text: str) -> str:
        return parse_upstream_for(text)


class HostPattern(ValueType):
    """A destination name pattern (tunnel/names.py) -> its canonical text."""

    name = "PATTERN"

    def parse(self, text: str) -> str:
        try:
            return parse_pattern(text)
        except HostNameError as exc:
            raise click.BadParameter(str(exc)) from None


def to_text(param_type: click.ParamType, value: Any) -> str:
    """*value* as text that *param_type* converts back to it."""
    return param_type.to_text(value) if isinstance(param_type, ValueType) else str(value)
