"""The PAC file served at ``/proxy.pac`` (``--proxy-pac``), sans I/O.

It names this proxy as the client reached it (the Host of the request for
the file): ``PROXY`` on a plain listener, ``HTTPS`` on a TLS one, which lets
browsers use the HTTP/2 listener without flags. With ``--allow-host`` the
file sends only those names to the proxy (it would refuse the rest) and the
others direct; without it, everything goes to the proxy (``--deny-host``
names too: the proxy refuses them, which says why).
"""

from __future__ import annotations

import json


def _condition(pattern: str) -> str:
    if pattern.startswith("*."):
        return f"dnsDomainIs(host, {json.dumps(pattern[1:])})"
    if pattern.startswith("."):
        return f"(host == {json.dumps(pattern[1:])} || dnsDomainIs(host, {json.dumps(pattern)}))"
    return f"host == {json.dumps(pattern)}"


def pac_file(proxy_authority: str, tls: bool, allow_host: tuple[str, ...]) -> bytes:
    """The PAC script for a proxy reached at *proxy_authority* (``host:port``)."""
    route = json.dumps(f"{'HTTPS' if tls else 'PROXY'} {proxy_authority}")
    lines = ["function FindProxyForURL(url, host) {", "  host = host.toLowerCase();"]
    if allow_host:
        lines += [f"  if ({_condition(pattern)}) return {route};" for pattern in allow_host]
        lines.append('  return "DIRECT";')
    else:
        lines.append(f"  return {route};")
    lines.append("}")
    return ("\n".join(lines) + "\n").encode("utf-8")
