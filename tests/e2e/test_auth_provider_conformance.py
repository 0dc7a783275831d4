"""One conformance suite for the AuthProvider contract (gconnect/auth/identity.py),
run against every provider. A new provider joins by writing a maker: a function
returning the provider, credentials it accepts, credentials of a user it knows
with the wrong secret, and credentials that are not its own."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from gconnect.auth.certs import CertProvider
from gconnect.auth.fileprovider import HtpasswdProvider
from gconnect.auth.helperprovider import HelperProvider
from gconnect.auth.identity import AuthProvider, Credentials, Identity, Rejected
from gconnect.auth.jwtprovider import JwtProvider
from gconnect.config import Config

from ..authhelper import command as helper_cmd
from ..unit.test_auth import bcrypt_line
from ..unit.test_auth_tokens import AUDIENCE, ISSUER, Keys

pytestmark = pytest.mark.timeout(60)


@dataclasses.dataclass
class Made:
    provider: AuthProvider
    #: (credentials, the user they prove)
    good: tuple[Credentials, str]
    #: A user the provider knows, with the wrong secret (None: the provider has no such case).
    wrong: Credentials | None
    #: Credentials that are not this provider's to judge.
    foreign: Credentials


def basic(user: str, password: str) -> Credentials:
    return Credentials("basic", user=user, password=password.encode())


def make_htpasswd(tmp_path) -> Made:
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "pw") + "\n")
    provider = HtpasswdProvider(Config(auth_file=str(path)))
    return Made(provider, (basic("alice", "pw"), "alice"), basic("alice", "nope"), basic("nobody", "pw"))


def make_helper(tmp_path) -> Made:
    provider = HelperProvider(Config(auth_helper=helper_cmd()))
    # A helper answers for every name, so only another scheme is foreign to it.
    return Made(provider, (basic("alice", "pw"), "alice"), basic("alice", "nope"), Credentials("bearer", token="t"))


def make_jwt(tmp_path) -> Made:
    keys = Keys(tmp_path / "jwks.json")
    config = Config(auth_jwks=str(keys.path), auth_jwt_issuer=ISSUER, auth_jwt_audience=AUDIENCE)
    provider = JwtProvider(config)
    good = Credentials("bearer", token=keys.token())
    wrong = Credentials("bearer", token=keys.token(keys.other))
    return Made(provider, (good, "svc-a"), wrong, basic("alice", "pw"))


def make_cert(tmp_path) -> Made:
    provider = CertProvider(Config(tls_cert="c", tls_key="k", tls_client_ca="ca"))
    # Never from a header: every header is foreign; its identity comes from identify_peer.
    return Made(provider, (basic("x", "y"), ""), None, basic("alice", "pw"))


MAKERS: dict[str, Callable[[Any], Made]] = {
    "htpasswd": make_htpasswd,
    "helper": make_helper,
    "jwt": make_jwt,
    "cert": make_cert,
}


@pytest.fixture(params=sorted(MAKERS))
def made(request, tmp_path):
    result = MAKERS[request.param](tmp_path)
    assert result.provider.name == request.param
    result.provider.start()
    yield result
    result.provider.stop()
    result.provider.stop()  # stop twice: a no-op


def test_good_credentials_give_an_identity_naming_the_provider(made):
    credentials, user = made.good
    identity = made.provider.identify(credentials)
    if made.provider.name == "cert":
        assert identity is None
        return
    assert isinstance(identity, Identity)
    assert (identity.user, identity.provider) == (user, made.provider.name)


def test_a_known_user_with_the_wrong_secret_is_rejected_by_this_provider(made):
    if made.wrong is None:
        pytest.skip("no secret to get wrong")
    with pytest.raises(Rejected) as info:
        made.provider.identify(made.wrong)
    assert info.value.provider == made.provider.name


def test_foreign_credentials_are_passed_on(made):
    assert made.provider.identify(made.foreign) is None


def test_many_at_once_each_get_their_answer(made):
    if made.provider.name == "cert":
        pytest.skip("nothing to wait for")
    checks = [gevent.spawn(made.provider.identify, made.good[0]) for _ in range(8)]
    if made.wrong is not None:
        checks += [gevent.spawn(made.provider.identify, made.wrong) for _ in range(4)]
    gevent.joinall(checks, timeout=30)
    assert all(c.ready() for c in checks)
    assert all(c.value.user == made.good[1] for c in checks[:8])
    assert all(isinstance(c.exception, Rejected) for c in checks[8:])


def test_ttls_and_reload_and_describe(made):
    assert made.provider.ttl >= 0 and made.provider.negative_ttl >= 0
    assert made.provider.reload() is True
    assert isinstance(made.provider.describe(), str) and made.provider.describe()
