"""The name inside the tunnel: the ClientHello's server name against the CONNECT target.

Pure functions. :func:`decide` names the outcome of one tunnel's check;
:func:`refuses` says whether a mode closes the tunnel for it. The outcomes, and
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

from .clienthello import ClientHello
from .hostrules import HostRules
from .names import canonical_address

MODES = ("off", "report", "enforce")
#: Outcomes ``enforce`` lets through; every other one closes the tunnel.
PASSING = frozenset({"match", "ip_literal_allowed", "ip_literal_no_sni", "eof"})
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
