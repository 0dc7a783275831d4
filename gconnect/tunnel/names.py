"""The host grammar, once: host names in one canonical form, IP literals, and
the destination name rules' patterns (``host:port`` is written by
:func:`gconnect.config.hostport`).

Sans I/O. The request parsers (HTTP/1.1 and HTTP/2) and the rule parser both
use this module, so a request and a rule can never disagree on what a name
is: a second copy that drifted would be a way past ``--deny-host``.

The canonical form of a name, for requests and patterns alike: case folded,
one trailing dot removed, internationalised labels mapped by UTS-46
(non-transitional, as browsers do) to their A-label (``xn--``) form, so
``Bücher.Example.`` and ``xn--bcher-kva.example`` are one name. A name whose
last label is numeric (``127.1``, ``0x7f.1``, ``2130706433``), or that maps to
a dotted quad (full-width digits), is not a name: C libraries read such text as
an address, so it is refused rather than guessed at.

Patterns (``--allow-host``, ``--deny-host``), one syntax:

* ``example.com``    that name only;
* ``.example.com``   the name and every name under it (Squid's ``dstdomain``);
* ``*.example.com``  every name under it, not the name itself (Smokescreen's glob);
* ``203.0.113.7``, ``[2001:db8::1]`` or ``2001:db8::1``: that address only.

A pattern is kept as its canonical text: the prefix (``""``, ``"."`` or
``"*."``) and the canonical name, or the canonical address text.
"""

from __future__ import annotations

import re
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

import idna

#: RFC 1035 §2.3.4: 255 octets on the wire, 253 characters written out.
MAX_NAME_CHARS = 253
#: One label: letters, digits, hyphens and (for _srv-style names) underscores;
#: 1-63 characters, no hyphen at either end (RFC 1123 §2.1). Lower case: names
#: are folded before they are matched.
LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"(?:{LABEL}\.)*{LABEL}")
#: Four dot-separated runs of digits: an IPv4 literal, or an error, never a name.
DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
#: A numeric label. inet_aton() reads "127.1", "0x7f.1" and "2130706433" as
#: addresses; WHATWG URL treats a numeric last label as IPv4. A name whose last
#: label is numeric is never a DNS name.
NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


class HostNameError(ValueError):
    """Text that is not a host name (or not a pattern); the message says why."""


def canonical_name(text: str) -> str:
    """*text*'s canonical form (see the module's docstring); HostNameError if it is
    not a host name."""
    if text.isascii():
        name = text.lower()
        for label in name.split(".") if "xn--" in name else ():
            if label.startswith("xn--"):
                try:
                    idna.ulabel(label)
                except (idna.IDNAError, UnicodeError) as exc:
                    raise HostNameError(f"{text!r}: {label!r} is not a valid A-label: {exc}") from None
    else:
        try:
            # UTS-46 maps first (case, width, the ideographic full stop), then
            # each non-ASCII label becomes its A-label.
            mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
            name = ".".join(lbl if lbl.isascii() else idna.alabel(lbl).decode("ascii") for lbl in mapped.split("."))
        except (idna.IDNAError, UnicodeError) as exc:
            raise HostNameError(f"{text!r} is not a valid internationalised name: {exc}") from None
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise HostNameError("empty host name")
    if DOTTED_QUAD.fullmatch(name):
        raise HostNameError(f"ambiguous numeric host {text!r}: not a name, and not a dotted-quad address")
    return check_name(name, text)


def check_name(name: str, text: str) -> str:
    """*name* (folded, without its trailing dot) if it is a host name; HostNameError
    naming *text* (what the client or the rule wrote) otherwise."""
    if len(name) > MAX_NAME_CHARS:
        raise HostNameError(f"host name longer than {MAX_NAME_CHARS} characters")
    if NUMERIC_LABEL.fullmatch(name.rpartition(".")[2]):
        raise HostNameError(f"ambiguous numeric host {text!r}: use a dotted-quad address")
    if not _NAME.fullmatch(name):
        raise HostNameError(f"invalid host name {text!r}")
    return name


def parse_host(text: str) -> tuple[str, int]:
    """A reg-name or IPv4 literal as a request writes it (ASCII, no brackets, no
    port): ``(canonical text, AF_INET)`` for an address, ``(name, 0)`` for a
    name; HostNameError otherwise. A dotted quad with leading zeros is refused,
    since some C libraries read ``010`` as octal: the ambiguity is refused
    rather than guessed at."""
    host = text.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise HostNameError("empty host name")
    if DOTTED_QUAD.fullmatch(host):
        if canonical_ipv4(host) is None:
            raise HostNameError(f"invalid IPv4 address {text!r}")
        return host, AF_INET
    return check_name(host, text), 0


def canonical_ipv4(text: str) -> str | None:
    """*text* if it is a dotted quad of four decimal octets without leading zeros, else None."""
    try:
        # inet_pton, unlike inet_aton, takes only four decimal octets (and is
        # ~10x faster than parsing the text with ipaddress).
        inet_pton(AF_INET, text)
    except OSError:
        return None
    if any(len(octet) > 1 and octet[0] == "0" for octet in text.split(".")):
        return None
    return text


def canonical_address(text: str) -> str | None:
    """The canonical text of an IP literal (``[v6]`` brackets allowed), or None
    if *text* is not one. A dotted quad with leading zeros is refused."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if ":" not in text:
            return None
    try:
        if ":" in text:
            return inet_ntop(AF_INET6, inet_pton(AF_INET6, text))
    except OSError:
        return None
    return canonical_ipv4(text) if DOTTED_QUAD.fullmatch(text) else None


def parse_pattern(text: str) -> str:
    """A host pattern in its canonical text; HostNameError naming what is wrong."""
    pattern = text.strip()
    if not pattern:
        raise HostNameError("empty pattern")
    address = canonical_address(pattern)
    if address is not None:
        return address
    if "/" in pattern:
        raise HostNameError(f"{text!r}: networks belong in --allow-dest / --deny-dest, not in a host pattern")
    if ":" in pattern or "[" in pattern:
        raise HostNameError(f"{text!r}: a pattern has no port (and an IPv6 address must be valid)")
    prefix = ""
    if pattern.startswith("*."):
        prefix, pattern = "*.", pattern[2:]
    elif pattern.startswith("."):
        prefix, pattern = ".", pattern[1:]
    if "*" in pattern:
        raise HostNameError(f"{text!r}: '*' is allowed only as a whole first label (*.example.com)")
    if not pattern or pattern.startswith(".") or ".." in pattern:
        raise HostNameError(f"{text!r}: empty label")
    try:
        return prefix + canonical_name(pattern)
    except HostNameError as exc:
        raise HostNameError(f"{text!r}: {exc}") from None
