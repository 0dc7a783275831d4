"""HAProxy's PROXY protocol, versions 1 and 2, as pure code (no sockets).

Spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt ("the PROXY
protocol"); section numbers below are that document's. A load balancer sends
the header first on each connection; it names the client it accepted, so
policy and logs see the real client instead of the balancer.

The version is told from the first bytes: v1 is the text ``PROXY ``, v2 the
12-byte binary signature. Feed what has arrived to :func:`parse` until it
returns a header; the bytes after it are the client's own.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from ..errors import ProxyHeaderError

V1_PREFIX = b"PROXY "
#: §2.1: "a 108-byte buffer is always enough to store all the line and a trailing zero".
V1_MAX_BYTES = 107
#: §2.2: the v2 signature.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_BYTES = 16
#: §2.2 allows 65535 + 16 bytes of address and TLVs; we take what HAProxy sends
#: with every TLV it knows (SSL, unique id, authority, netns) with room to spare.
V2_MAX_BYTES = 4096

_V2_FAMILIES = {0x11: (4, "!4s4sHH"), 0x21: (6, "!16s16sHH")}


@dataclasses.dataclass(frozen=True)
class ProxyHeader:
    """What the balancer said. ``source`` is None for v2 LOCAL (the balancer's
    own health check) and v1 UNKNOWN: then the connection's address stands."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY header at the start of *data*.

    Returns ``(header, length)`` once the whole header is there (the client's
    bytes start at ``data[length:]``), None while more bytes are needed.
    Raises ProxyHeaderError (400) when *data* cannot start a valid header.
    """
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data) if len(data) >= len(V2_SIGNATURE) else None
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data) if len(data) >= len(V1_PREFIX) else None
    raise ProxyHeaderError("expected a PROXY protocol header from the load balancer")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_BYTES} bytes")
        return None
    # §2.1: fields are separated by exactly one space.
    fields = data[:end].decode("ascii", "replace").split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # §2.1: "the receiver must ignore anything presented before the CRLF".
        return ProxyHeader(1, None, None), end + 2
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    version = 4 if fields[1] == "TCP4" else 6
    try:
        src = ipaddress.ip_address(fields[2])
        dst = ipaddress.ip_address(fields[3])
        sport, dport = _port(fields[4]), _port(fields[5])
    except ValueError:
        raise ProxyHeaderError("malformed PROXY v1 address or port") from None
    if src.version != version or dst.version != version:
        raise ProxyHeaderError(f"PROXY v1 {fields[1]} with an address of another family")
    return ProxyHeader(1, (str(src), sport), (str(dst), dport)), end + 2


def _port(text: str) -> int:
    # §2.1: ports are decimal 0-65535 without leading zeros.
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ValueError(text)
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < V2_HEADER_BYTES:
        return None
    ver_cmd, family, length = struct.unpack("!BBH", data[12:16])
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 signature with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 unknown command {command}")
    total = V2_HEADER_BYTES + length
    if total > V2_MAX_BYTES:
        raise ProxyHeaderError(f"PROXY v2 header of {total} bytes is over {V2_MAX_BYTES}")
    if len(data) < total:
        return None
    # §2.2: LOCAL (0) is the balancer speaking for itself; keep the real address.
    if command == 0 or family not in _V2_FAMILIES:
        # UNSPEC and UNIX families carry no TCP client address either.
        return ProxyHeader(2, None, None), total
    ip_version, layout = _V2_FAMILIES[family]
    if length < struct.calcsize(layout):
        raise ProxyHeaderError("PROXY v2 address block too short for its family")
    src, dst, sport, dport = struct.unpack_from(layout, data, V2_HEADER_BYTES)
    make = ipaddress.IPv4Address if ip_version == 4 else ipaddress.IPv6Address
    return ProxyHeader(2, (str(make(src)), sport), (str(make(dst)), dport)), total


def render_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 line (for tests and for sending to a parent that expects one)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def render_v2(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A v2 header; no *source* gives a LOCAL command."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family, layout = (0x11, "!4s4sHH") if src.version == 4 else (0x21, "!16s16sHH")
    block = struct.pack(layout, src.packed, dst.packed, source[1], destination[1])
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(block)) + block
