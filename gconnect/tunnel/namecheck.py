"""The name inside the tunnel: the ClientHello's server name against the CONNECT target.

Sans I/O. :func:`check` feeds the ClientHello reader from a ``receive``
callable the tunnel supplies and :func:`decide` names the outcome (both pure
given their inputs); :func:`refuses` says whether a mode (``off``, ``report``,
``enforce``: ``--tls-name-check``) closes the tunnel for it. The outcomes, and
what ``enforce`` does with each (``report`` lets every one through, marked in
the access log and counted; ``off`` reads nothing)::

    match               the server name equals the CONNECT host         pass
    mismatch            another name                                   close
    ip_literal_allowed  IP target; the server name passes the user's
                        name rules (every name does without rules)      pass
    ip_literal_denied   IP target; the name rules refuse the name      close
    ip_literal_no_sni   IP target, no server name: RFC 6066 §3 allows
                        no IP in server_name, and the name rules have
                        judged the address already                      pass
    no_sni              a name target, no server name                  close
    ech_mismatch        Encrypted ClientHello whose outer name is not
                        the CONNECT host: the real name is hidden      close
    not_tls             not a TLS handshake record / not a ClientHello close
    malformed           a ClientHello outside the grammar              close
    oversize            past the reader's size cap                     close
    timeout             no complete ClientHello by the deadline (a
                        server that speaks first, a stalled client)    close
    eof                 the client closed before a complete one: it
                        cannot send the rest, so nothing is hidden      pass

An Encrypted ClientHello whose outer name *is* the CONNECT host is a ``match``:
that name is what the name rules allowed, and Chromium sends a GREASE ECH
extension (with the real name outside) on every connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .clienthello import ClientHello, ClientHelloError, ClientHelloReader
from .hostrules import HostRules
from .names import canonical_address

#: How long the client has, after the 200, to send a complete ClientHello; at
#: most the header deadline. HAProxy's documented pattern for ``req.ssl_sni``
#: is ``tcp-request inspect-delay 5s``; a client sends its ClientHello the
#: moment it reads the 200, so only a server-speaks-first protocol (or a
#: client stalled for seconds) meets it.
NAME_CHECK_SECONDS = 5.0
#: The fatal alert a closed TLS client gets (RFC 8446 §6: level 2 fatal,
#: unrecognized_name 112, which RFC 6066 §3 names for a server name it will not
#: serve), in a plaintext record as before any ServerHello.
UNRECOGNIZED_NAME_ALERT = b"\x15\x03\x03\x00\x02\x02\x70"

#: The end reason of a tunnel the check closed.
NAME_CHECK_REFUSED = "tls_name_refused"
#: Outcomes ``enforce`` lets through; every other one closes the tunnel.
PASSING = frozenset({"match", "ip_literal_allowed", "ip_literal_no_sni", "eof"})
_AFTER_A_HELLO = frozenset(
    {"match", "mismatch", "ip_literal_allowed", "ip_literal_denied", "ip_literal_no_sni", "no_sni", "ech_mismatch"}
)
OUTCOMES = (
    "match",
    "mismatch",
    "ip_literal_allowed",
    "ip_literal_denied",
    "ip_literal_no_sni",
    "no_sni",
    "ech_mismatch",
    "not_tls",
    "malformed",
    "oversize",
    "timeout",
    "eof",
)


class NameCheck(NamedTuple):
    """One tunnel's check: its outcome, and the server name seen (None: none,
    or no complete ClientHello). The bytes read are the client side's, which
    its relay passes on unchanged."""

    outcome: str
    server_name: str | None

    @property
    def tls_client(self) -> bool:
        """A complete ClientHello was read: the client speaks TLS and an alert means something to it."""
        return self.outcome in _AFTER_A_HELLO


def check(
    early: bytes,
    receive: Callable[[], bytes | None],
    host: str,
    ip_literal: bool,
    rules: HostRules | None,
) -> NameCheck:
    """Read one ClientHello from *early* (the bytes that came with the request)
    and what *receive* returns next (``b""`` at the client's EOF, None when the
    caller's deadline has passed), then :func:`decide`. Reading stops at the
    first answer; *receive*'s OSError is the caller's."""
    reader = ClientHelloReader()
    try:
        hello = reader.feed(early) if early else None
        while hello is None:
            chunk = receive()
            if not chunk:
                return NameCheck("eof" if chunk == b"" else "timeout", None)
            hello = reader.feed(chunk)
    except ClientHelloError as exc:
        return NameCheck(exc.outcome, None)
    return NameCheck(decide(hello, host, ip_literal, rules), hello.server_name)


def decide(hello: ClientHello, host: str, ip_literal: bool, rules: HostRules | None) -> str:
    """The outcome for a complete ClientHello *hello* in a tunnel to *host*
    (canonical, as the request grammar gives it; an address when *ip_literal*),
    under the user's name rules *rules* (None: none)."""
    name = hello.server_name
    if name == host:
        return "match"
    if ip_literal:
        if name is None:
            return "ip_literal_no_sni"
        if rules is None:
            return "ip_literal_allowed"
        refusal = rules.judge(name, 1 if canonical_address(name) is not None else 0)
        return "ip_literal_allowed" if refusal is None else "ip_literal_denied"
    if name is None:
        return "no_sni"
    return "ech_mismatch" if hello.ech else "mismatch"


def refuses(outcome: str, mode: str) -> bool:
    """True if *mode* closes a tunnel whose check ended in *outcome*."""
    return mode == "enforce" and outcome not in PASSING
