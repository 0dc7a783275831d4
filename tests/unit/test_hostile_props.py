"""Property tests for everything that reads client bytes before the tunnel: the
head parser, the target validation, and the Proxy-Authorization header.

The property is the same everywhere: any input yields a parsed result or one of
the mapped client errors (the 4xx the proxy would send), never another
exception. Inputs are arbitrary bytes, and valid requests mutated byte by byte.
"""

from __future__ import annotations

import base64

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gconnect.auth.authenticator import Authenticator, parse_basic_credentials
from gconnect.config import Config
from gconnect.errors import (
    AuthRateLimitedError,
    ClientError,
    MalformedRequestError,
    ProxyAuthMalformedError,
    ProxyAuthRequiredError,
)
from gconnect.tunnel.head import ConnectRequest, RequestParser, parse_authority, parse_host, parse_port

from .budget import examples

pytestmark = pytest.mark.timeout(300)

MAX_HEAD = 1024
PROPS = settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A valid head, built from parts an attacker would vary.
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hostname = st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda h: not h.split(".")[-1].isdigit())
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
host = st.one_of(hostname, ipv4, ipv6)
port = st.integers(1, 65535)
token = st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True)
field_value = st.from_regex(r"[ -~]{0,30}", fullmatch=True).map(str.strip)


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    target = f"{draw(host)}:{draw(port)}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"X-{draw(token)}: {draw(field_value)}")
    if draw(st.booleans()):
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(draw(st.binary(max_size=30))).decode())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@st.composite
def mutated_heads(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_heads()))
    interesting = st.sampled_from(list(b"\x00\r\n :\t[]%@/\x7f\xff+-.0x"))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate", "case"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[pos:pos] = bytes([draw(st.one_of(interesting, st.integers(0, 255)))])
        elif kind == "delete" and pos < len(data):
            del data[pos]
        elif kind == "replace" and pos < len(data):
            data[pos] = draw(st.one_of(interesting, st.integers(0, 255)))
        elif kind == "duplicate":
            end = draw(st.integers(pos, min(len(data), pos + 40)))
            data[pos:pos] = data[pos:end]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "case" and pos < len(data):
            data[pos] = ord(chr(data[pos]).swapcase()) if data[pos] < 128 else data[pos]
    return bytes(data)


def feed_all(data: bytes, cuts: list[int]) -> ConnectRequest | None:
    """Feed *data* split at *cuts*; the request, None if incomplete, or a ClientError."""
    parser = RequestParser(MAX_HEAD)
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        chunk = data[start:cut]
        start = max(start, cut)
        if not chunk:
            continue
        request = parser.feed(chunk)
        if request is not None:
            return request
    return None


def check_request(request: ConnectRequest) -> None:
    assert 1 <= request.port <= 65535
    # What was accepted is something the proxy can dial: it parses back to itself.
    assert parse_authority(request.target.encode()) == (request.host, request.port, request.family)


def parse_or_client_error(data: bytes, cuts: list[int]) -> None:
    try:
        request = feed_all(data, cuts)
    except ClientError as exc:
        assert 400 <= exc.status <= 505
        assert str(exc).isprintable()
        return
    if request is not None:
        check_request(request)


@PROPS
@given(st.binary(max_size=2048), st.lists(st.integers(0, 2048), max_size=5))
def test_arbitrary_bytes_parse_or_map_to_a_client_error(data, cuts):
    parse_or_client_error(data, cuts)


@PROPS
@given(st.binary(max_size=200).map(lambda tail: b"CONNECT " + tail))
def test_arbitrary_bytes_after_the_method(data):
    parse_or_client_error(data, [])


@PROPS
@given(mutated_heads(), st.lists(st.integers(0, 400), max_size=3))
def test_mutated_valid_heads_parse_or_map_to_a_client_error(data, cuts):
    parse_or_client_error(data, cuts)


@PROPS
@given(valid_heads(), st.lists(st.integers(0, 400), max_size=3))
def test_valid_heads_parse_whatever_the_split(data, cuts):
    request = feed_all(data, cuts)
    assert request is not None
    check_request(request)


@PROPS
@given(st.binary(max_size=300))
def test_targets_parse_or_are_malformed(target):
    try:
        h, p, family = parse_authority(target)
    except MalformedRequestError:
        return
    assert 1 <= p <= 65535
    assert family or parse_host(h) == (h, 0)


@PROPS
@given(st.text(max_size=300))
def test_host_names_parse_or_are_malformed(text):
    try:
        h, _ = parse_host(text)
    except MalformedRequestError:
        return
    assert len(h) <= 253 and h == h.lower()


@PROPS
@given(st.binary(max_size=12))
def test_ports_parse_or_are_malformed(text):
    try:
        p = parse_port(text)
    except MalformedRequestError:
        return
    assert 1 <= p <= 65535 and text.isdigit()


@PROPS
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"Basic " + base64.b64encode(b))))
def test_proxy_authorization_values_parse_or_are_407(value):
    try:
        user, password = parse_basic_credentials(value)
    except ProxyAuthMalformedError as exc:
        assert exc.status == 407
        return
    assert user and isinstance(password, bytes)


@pytest.fixture(scope="module")
def authenticator(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    return Authenticator(Config(auth_file=str(path), auth_failures_per_minute=1_000_000))


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.tuples(st.binary(max_size=20), st.binary(max_size=80)).map(
                lambda up: b"Basic " + base64.b64encode(up[0] + b":" + up[1])
            ),
        ),
        max_size=3,
    )
)
def test_authenticate_answers_a_user_or_407_or_429(authenticator, values):
    try:
        user = authenticator.authenticate(values, "192.0.2.1")
    except (ProxyAuthRequiredError, AuthRateLimitedError) as exc:
        assert exc.status in (407, 429)
        if exc.status == 407:
            assert dict(exc.headers)["Proxy-Authenticate"] == 'Basic realm="gconnect"'
        return
    assert user == "alice"
