"""Client certificates: the user read from the peer certificate dict
(``SSLObject.getpeercert()``) by CN, OU or SAN URI, and the OU as the group."""

from __future__ import annotations

import pytest

from gconnect.auth.certs import CertProvider, user_from_cert
from gconnect.config import Config

PEER = {
    "subject": (
        (("countryName", "XX"),),
        (("organizationName", "Corp"),),
        (("organizationalUnitName", "staff"),),
        (("organizationalUnitName", "second"),),
        (("commonName", "svc-a"),),
    ),
    "subjectAltName": (("DNS", "svc-a.test"), ("URI", "spiffe://corp.test/ns/web/sa/svc-a"), ("URI", "https://x")),
}


@pytest.mark.parametrize(
    ("how", "user"), [("cn", "svc-a"), ("ou", "staff"), ("uri", "spiffe://corp.test/ns/web/sa/svc-a")]
)
def test_the_user_comes_from_the_configured_part(how, user):
    assert user_from_cert(PEER, how) == user


def test_no_certificate_or_no_such_name_is_none():
    assert user_from_cert(None, "cn") is None
    assert user_from_cert({}, "cn") is None
    assert user_from_cert({"subject": ((("commonName", "x"),),)}, "uri") is None
    assert user_from_cert({"subject": ((("organizationName", "Corp"),),)}, "ou") is None


def test_the_ou_is_the_group_unless_it_is_the_user(tmp_path):
    base = {"tls_cert": "c", "tls_key": "k", "tls_client_ca": "ca"}
    identity = CertProvider(Config(**base, tls_client_identity="uri")).identify_peer(PEER)
    assert (identity.user, identity.provider, identity.group) == ("spiffe://corp.test/ns/web/sa/svc-a", "cert", "staff")
    identity = CertProvider(Config(**base, tls_client_identity="ou")).identify_peer(PEER)
    assert (identity.user, identity.group) == ("staff", None)
    assert CertProvider(Config(**base)).identify_peer({}) is None
