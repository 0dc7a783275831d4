"""Client certificates as a provider: the user named by the certificate the TLS
listener verified (``--tls-client-ca``, and ``--tls-client-crl``).

The handshake has already checked the chain, the dates and the CRL; what is
left is reading the name, from the dict ``SSLObject.getpeercert()`` returns:

* ``cn``: the subject's commonName;
* ``ou``: the subject's first organizationalUnitName (Smokescreen's "role");
* ``uri``: the first subjectAltName URI, such as a SPIFFE ID ``spiffe://corp/ns/web``.

When the user comes from the CN or a URI, the first OU (if any) is the
identity's group, which may select a ``[groups.NAME]`` rules table. A client
without a certificate (``--tls-client-cert optional``) is not this provider's:
the next one decides. On HTTP/2 every stream of the connection carries the
connection's certificate, so the identity holds for each of them.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from .identity import Credentials, Identity

#: Subject attribute names as the ssl module spells them.
_SUBJECT_NAMES = {"cn": "commonName", "ou": "organizationalUnitName"}


def subject_values(cert: dict[str, Any], attribute: str) -> list[str]:
    """Every value of *attribute* (ssl module spelling) in the certificate's subject, in order."""
    return [value for rdn in cert.get("subject", ()) for name, value in rdn if name == attribute]


def user_from_cert(cert: dict[str, Any] | None, how: str) -> str | None:
    """The user a verified peer certificate names by *how* (cn, ou, uri); None
    if there is no certificate or it has no such name."""
    if not cert:
        return None
    if how == "uri":
        uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
        return uris[0] if uris else None
    values = subject_values(cert, _SUBJECT_NAMES[how])
    return values[0] if values and values[0] else None


class CertProvider:
    """``--tls-client-ca``: the client's certificate names the user."""

    name = "cert"
    # Nothing to cache: the handshake did the work, reading the name is a dict lookup.
    ttl = 0.0
    negative_ttl = 0.0

    def __init__(self, config: Config) -> None:
        self.how = config.tls_client_identity
        self.ca = config.tls_client_ca
        self.required = config.tls_client_cert == "required"

    def describe(self) -> str:
        return (
            f"client certificate verified against {self.ca} ({'required' if self.required else 'optional'}), "
            f"user from {self.how}"
        )

    def identify(self, credentials: Credentials) -> Identity | None:
        # A header never carries a certificate.
        return None

    def identify_peer(self, cert: dict[str, Any] | None) -> Identity | None:
        """The identity a verified peer certificate gives; None without one (or without the name)."""
        user = user_from_cert(cert, self.how)
        if user is None:
            return None
        group = None
        if self.how != "ou" and cert:
            units = subject_values(cert, "organizationalUnitName")
            group = units[0] if units else None
        return Identity(user, self.name, group)

    def reload(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
