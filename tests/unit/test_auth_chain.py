"""The provider chain in process: its order (configured and default), the
certificate's place in it, a token or certificate alone, the group's rules
table, the configuration's checks and check-config's picture of the chain."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from gconnect.config import Config, UserRules
from gconnect.errors import ClientCertificateRequiredError, ProxyAuthMalformedError, ProxyAuthRequiredError
from gconnect.ops.cli import main
from gconnect.tunnel.policy import Policy

from .test_auth import basic
from .test_auth_certs import PEER
from .test_auth_tokens import AUDIENCE, ISSUER, Keys

pytestmark = pytest.mark.timeout(60)

HELPER = "/usr/lib/squid/basic_ncsa_auth"  # only named: nothing here starts a helper

TLS = {"tls_cert": "proxy.pem", "tls_key": "proxy.key"}


def test_default_order_is_cert_jwt_htpasswd_helper_of_what_is_configured(tmp_path, htpasswd):
    keys = Keys(tmp_path / "jwks.json")
    config = Config(
        **TLS,
        tls_client_ca="ca.pem",
        auth_jwks=str(keys.path),
        auth_jwt_issuer=ISSUER,
        auth_jwt_audience=AUDIENCE,
        auth_file=htpasswd,
        auth_helper="helper",
    )
    assert config.auth_providers() == ("cert", "jwt", "htpasswd", "helper")
    assert Config(auth_helper="h", auth_file=htpasswd).auth_providers() == ("htpasswd", "helper")
    assert Config(auth_helper="h", auth_file=htpasswd, auth_chain=("helper", "htpasswd")).auth_providers() == (
        "helper",
        "htpasswd",
    )
    assert Config().auth_providers() == ()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth_chain": ("ldap",)}, "unknown provider"),
        ({"auth_chain": ("helper", "helper"), "auth_helper": "h"}, "twice"),
        ({"auth_chain": ("htpasswd",)}, "auth_file is not set"),
        ({"tls_client_ca": "ca.pem"}, "needs tls_cert"),
        ({**TLS, "tls_client_crl": "x.crl"}, "needs tls_client_ca"),
        ({"auth_jwks": "k.json", "auth_jwt_issuer": ISSUER}, "audience"),
        ({"auth_jwt_algorithms": ("none",)}, "none"),
        ({"auth_helper_children": 0}, "children"),
        ({"auth_helper_timeout": 0}, "timeout"),
    ],
)
def test_configuration_mistakes_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        Config(**values)


def test_a_certificate_first_wins_over_a_header_and_after_counts_only_without_one(authenticators, htpasswd):
    first = authenticators(**TLS, tls_client_ca="ca.pem", auth_file=htpasswd)
    assert first.identify([basic("alice", "pw")], "10.0.0.1", PEER).provider == "cert"
    assert first.identify([], "10.0.0.1", PEER).user == "svc-a"
    assert first.identify([basic("alice", "pw")], "10.0.0.1", {}).provider == "htpasswd"
    with pytest.raises(ProxyAuthRequiredError):
        first.identify([], "10.0.0.1", {})
    after = authenticators(**TLS, tls_client_ca="ca.pem", auth_file=htpasswd, auth_chain=("htpasswd", "cert"))
    assert after.identify([basic("alice", "pw")], "10.0.0.1", PEER).provider == "htpasswd"
    assert after.identify([], "10.0.0.1", PEER).provider == "cert"


def test_with_certificates_alone_a_client_without_one_is_403_not_asked_for_a_password(authenticators):
    auth = authenticators(**TLS, tls_client_ca="ca.pem")
    assert auth.identify([], "10.0.0.1", PEER).user == "svc-a"
    for values in ([], [basic("alice", "pw")]):
        with pytest.raises(ClientCertificateRequiredError) as info:
            auth.identify(values, "10.0.0.1", {})
        assert (info.value.status, info.value.code) == (403, "cert_required")


def test_bearer_is_malformed_unless_a_token_provider_is_configured(authenticators, htpasswd):
    auth = authenticators(auth_file=htpasswd)
    with pytest.raises(ProxyAuthMalformedError):
        auth.identify([b"Bearer a.b.c"], "10.0.0.1")


def test_a_users_table_wins_over_the_groups_table():
    config = Config(
        allow_port=((443, 443),),
        users=(UserRules("alice", allow_port=((22, 22),)),),
        groups=(UserRules("staff", allow_port=((8443, 8443),)),),
    )
    policy = Policy(config)
    assert policy.for_identity("alice", "staff").check_port(22) is None
    assert policy.for_identity("bob", "staff").check_port(8443) is None
    assert policy.for_identity("bob", None) is policy
    assert policy.for_identity("bob", "other") is policy


def test_check_config_shows_the_chain_and_the_groups(tmp_path, htpasswd):
    path = tmp_path / "gconnect.toml"
    path.write_text(
        f'auth-file = "{htpasswd}"\nauth-helper = "{sys.executable} {HELPER}"\n'
        'external-acl-helper = "/usr/local/bin/acl"\n\n[groups.staff]\nallow-port = ["8443"]\n'
    )
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "[groups.staff]" in result.output
    assert "#   group staff: allow-host = []; deny-host = []; allow-port = [8443];" in result.output.replace('"', "")
    lines = result.output.splitlines()
    chain = lines.index("# Authentication chain (the first provider that knows the user decides):")
    assert lines[chain + 1].startswith(f"#   1. htpasswd: htpasswd file {htpasswd}")
    assert lines[chain + 2].startswith("#   2. helper: Squid basic auth helper")
    assert lines[chain + 3] == "# External ACL after the rules: '/usr/local/bin/acl'"


def test_check_config_fails_when_the_chain_cannot_be_built(tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    path = tmp_path / "gconnect.toml"
    path.write_text(f'auth-jwks = "{jwks}"\nauth-jwt-issuer = "{ISSUER}"\nauth-jwt-audience = "{AUDIENCE}"\n')
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert "the authentication chain cannot be built" in result.output and "no key" in result.output
