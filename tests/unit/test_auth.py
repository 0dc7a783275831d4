"""Proxy authentication: the htpasswd formats, the Basic header, the cache, the
failure limiter, and end to end through the CLI (407, 429, reloads, bcrypt off
the hub, the user in the access log, ``gconnect passwd``)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import bcrypt
import pytest
from click.testing import CliRunner

from gconnect.auth.authenticator import Authenticator, FailureLimiter, log_safe, parse_basic_credentials
from gconnect.auth.htpasswd import (
    MAX_SHA_CRYPT_ROUNDS,
    AuthFileError,
    Entry,
    detect_scheme,
    parse_htpasswd,
    verify_password,
)
from gconnect.config import Config
from gconnect.errors import AuthRateLimitedError, ProxyAuthFailedError, ProxyAuthMalformedError, ProxyAuthRequiredError
from gconnect.ops.cli import main

from ..conftest import exchange, open_tunnel, read_head, recv_exactly, wait_until
from ..e2e.test_errors import proxy_status_error

pytestmark = pytest.mark.timeout(90)


def bcrypt_line(user: str, password: str, rounds: int = 4) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
    return f"{user}:$2y${hashed[4:]}"


def basic(user: str | bytes, password: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(u + b":" + p)


def connect_head(target: str, *headers: bytes) -> bytes:
    lines = b"".join(h + b"\r\n" for h in headers)
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + lines + b"\r\n"


def auth_header(user: str, password: str) -> bytes:
    return b"Proxy-Authorization: " + basic(user, password)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# The file and the hashes

LONG = "x" * 100  # longer than every digest, so the algorithms' repeat-the-key steps run more than once
UTF8 = "zoë-пароль"
# Made once by the tools, not by the code under test (Debian 12: apache2-utils
# 2.4.71, OpenSSL 3.0.19). htpasswd picks a random salt, so running its command
# again gives another hash of the same password:
#   htpasswd -nbm USER PASSWORD            apr1         htpasswd -nbs USER PASSWORD   {SHA}
#   htpasswd -nb2 [-r ROUNDS] USER PASSWORD  $5$        htpasswd -nb5 [-r ROUNDS] USER PASSWORD  $6$
#   openssl passwd -apr1|-5|-6 -salt SALT PASSWORD      (SALT may start with rounds=N$)
#   printf %s PASSWORD | openssl dgst -sha1 -binary | openssl base64    ({SHA} without the prefix)
HASH_VECTORS = [
    ("htpasswd -nbm", "builder", "$apr1$Bx.2ZQel$cC3gLj3Vow.skxUASM5HF1"),
    ("htpasswd -nbm", "right", "$apr1$285wpGVz$8YHQsco0JkbCx8xOFgPYk1"),
    ("htpasswd -nbm", LONG, "$apr1$WBa6IVdd$SM6pCjdxYkjmPQiUpOFYr."),
    ("openssl passwd -apr1 -salt a", UTF8, "$apr1$a$/Zc/Ifz0dnHGJfxbJIaua."),
    ("openssl passwd -apr1 -salt ''", "right", "$apr1$$8PChII4Ma7Mi6Ls14IMf/."),
    ("openssl passwd -apr1 -salt 12345678", "", "$apr1$12345678$sHuPAw7VA9xjRbJz7zKV7/"),
    ("openssl passwd -apr1 -salt saltsalt", "with: colon and spaces", "$apr1$saltsalt$bYZQ18QHCjoyF4p2oH65f1"),
    ("htpasswd -nbs", "right", "{SHA}0nofEXcSAJSXFLGvmfBIpBb11vQ="),
    ("htpasswd -nbs", "", "{SHA}2jmj7l5rSw0yVb/vlWAYkK/YBwk="),
    ("openssl dgst -sha1", UTF8, "{SHA}iP1M3mJ30zXTsjIDRMNOi38En0E="),
    ("openssl dgst -sha1", LONG, "{SHA}UOSDaQ7EgfSvf2+1JLK5nrFxZWU="),
    ("htpasswd -nb2", "right", "$5$CMaJBaYjPXBWceHh$6ZyH7ynM.zATyEE8yFg.ZHRU2/3b2SiB0gVApSYml7A"),
    ("htpasswd -nb2 -r 1000", UTF8, "$5$rounds=1000$9hCBMuiER67rQ9W9$MpXxFpYwr.bfQivQFzie3gHNRYczubdzdvB/gm3L533"),
    # rounds=10 is below the minimum: crypt(3) and openssl use (and write) 1000.
    (
        "openssl passwd -5 -salt 'rounds=10$short'",
        "right",
        "$5$rounds=1000$short$vqCB.gQd4cM9wCjJRUaNwvr524cot.gceIt4tP6hwb0",
    ),
    # A salt over 16 characters is cut to 16.
    (
        "openssl passwd -5 -salt saltsaltsaltsaltTOOLONG",
        LONG,
        "$5$saltsaltsaltsalt$PdjBQvZ7a9uF9OL.l1Y1VjPIu172MCgb54fzoBAiuh1",
    ),
    (
        "htpasswd -nb5",
        "right",
        "$6$KfdsA1iBfpoNRUK0$aWEG3QasUWXuQqKi49aqy47fCZH8889CYWMxVA61SfzR9Ugpp3rsuU56vH3fBLCSX3sgOwJwuId5es2a28dIO1",
    ),
    (
        "htpasswd -nb5 -r 20000",
        LONG,
        "$6$rounds=20000$QqQzNvEaCO8FBznW$HG8XA0GhF.IK4HGpxDPqUxjtOZLAUp.UzSjOvi6tp51/n4y3xY1kZZ4NT69DyAo7JcFLNEUhdPxhIbhl9YwFm/",
    ),
    (
        "htpasswd -nb5",
        "",
        "$6$Ij9oUMS6Dzxw2/m9$XLMEoOuOxvEwcptROrjDo.4q.Zp8v51aRrdJioesrbFd..pLiO0sUVADiQoYsi7WtpyAKSvyEluK9p145KKpx.",
    ),
    (
        "openssl passwd -6 -salt 'rounds=5000$explicit'",
        "right",
        "$6$rounds=5000$explicit$u5WU5W1dgzejPrcH9K4V8abA.kJu8QHtbjJ/nsHA5kZd0PR73kI/7/sshd/yH42jeyGdrEHlTstvb7NYNi06A.",
    ),
    (
        "openssl passwd -6 -salt abcdefghijklmnop",
        "with: colon and spaces",
        "$6$abcdefghijklmnop$7u1lVs9kSSElKCF9RLX7FznWJIQ.7.f604qkCzFn1i5yn470ckVLicpKe4zw3a0tLnF51WjbYFKkE.ZwSZVNK0",
    ),
    (
        "openssl passwd -6 -salt x",
        UTF8,
        "$6$x$LrvQrnic.78g49ivKt.9IGgwfx3qu/AjpelS7SGdPWL8NmvEkZvVHNIribct5nXZwYF1Zy5rwKgLDYg6CWr/E0",
    ),
    (
        "openssl passwd -6 -salt 'rounds=1001$r'",
        LONG,
        "$6$rounds=1001$r$Fp7X/yr.Y.6dgbi.PbU2EpbAUq0SQstufL9UQ3iqTyQJMGMfUjoBogOl4WRSqXmZSFPRWwx6Xd7ibtpYNw3ab0",
    ),
]
SCHEME_OF_PREFIX = {"$apr1$": "apr1", "{SHA}": "sha1", "$5$": "sha256_crypt", "$6$": "sha512_crypt"}
BCRYPT_VECTOR = ("htpasswd -nbB -C 4", "right", "$2y$04$yJ7GID9sKtqkBxgX/./IiOzENs1KlFQwK6tJud3fwKGDoZfVy/ZFG")


def test_detect_scheme_for_every_htpasswd_format():
    assert detect_scheme(BCRYPT_VECTOR[2]) == "bcrypt"
    assert detect_scheme("$2b$04$" + "a" * 53) == "bcrypt"
    assert detect_scheme("$2a$04$" + "a" * 53) == "bcrypt"
    for _, _, hashed in HASH_VECTORS:
        prefix = next(p for p in SCHEME_OF_PREFIX if hashed.startswith(p))
        assert detect_scheme(hashed) == SCHEME_OF_PREFIX[prefix]
    assert detect_scheme("secret") == "plain"
    assert detect_scheme("abJnggxhB/yWI") == "plain"  # DES crypt: not supported, treated as plaintext


@pytest.mark.parametrize(
    ("made_by", "password", "hashed"),
    [BCRYPT_VECTOR, *HASH_VECTORS],
    ids=[f"{made_by} {hashed[:12]}" for made_by, _, hashed in [BCRYPT_VECTOR, *HASH_VECTORS]],
)
def test_every_accepted_format_matches_vectors_from_htpasswd_and_openssl(made_by, password, hashed):
    (entry,) = parse_htpasswd(f"u:{hashed}\n").values()
    right = password.encode()
    assert verify_password(entry, right), made_by
    wrongs = [right + b"x", right + b"\x00"]
    if right:
        wrongs += [right[:-1], bytes([right[0] ^ 1]) + right[1:], b""]
    for wrong in wrongs:
        assert not verify_password(entry, wrong), (made_by, wrong)


@pytest.mark.parametrize(
    "hashed",
    [bcrypt_line("u", "right").split(":", 1)[1], "right"],
    ids=["bcrypt", "plain"],
)
def test_verify_password_bcrypt_and_plain(hashed):
    entry = Entry("u", detect_scheme(hashed), hashed)
    assert verify_password(entry, b"right")
    assert not verify_password(entry, b"wrong")
    assert not verify_password(entry, b"")
    assert not verify_password(entry, b"right\x00")


def test_weak_formats_need_no_third_party_module_and_warn_nothing():
    # passlib warned on import on 3.11 (it imports the deprecated crypt module)
    # and lost its C crypt on 3.13: the checks are standard-library code now.
    text = "".join(f"u{i}:{hashed}\n" for i, (_, _, hashed) in enumerate(HASH_VECTORS))
    passwords = [password for _, password, _ in HASH_VECTORS]
    script = (
        "import sys\n"
        "from gconnect.auth.htpasswd import parse_htpasswd, verify_password\n"
        f"table = parse_htpasswd({text!r})\n"
        f"passwords = {passwords!r}\n"
        "assert all(verify_password(table[f'u{i}'], p.encode()) for i, p in enumerate(passwords))\n"
        "assert not {'passlib', 'crypt', '_crypt'} & set(sys.modules), sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_sha_crypt_rounds_past_the_limit_refuse_the_file():
    # crypt(3) allows 999,999,999 rounds: some twenty minutes of Python per guess.
    salt_and_checksum = HASH_VECTORS[13][2].rpartition("$")[2]
    within = f"u:$5$rounds={MAX_SHA_CRYPT_ROUNDS}$short${salt_and_checksum}\n"
    assert parse_htpasswd(within)["u"].scheme == "sha256_crypt"
    with pytest.raises(AuthFileError, match=r"line 2: user 'v' has a SHA-crypt hash of 1,000,001 rounds"):
        parse_htpasswd(within + within.replace("u:", "v:").replace(str(MAX_SHA_CRYPT_ROUNDS), "1000001"))


def test_bcrypt_uses_only_72_bytes_like_htpasswd():
    long = b"x" * 72
    entry = Entry("u", "bcrypt", bcrypt.hashpw(long, bcrypt.gensalt(4)).decode())
    assert verify_password(entry, long + b"anything after byte 72 is ignored by bcrypt")


@pytest.mark.parametrize(
    "hashed",
    [
        "$2y$04$short",
        "$apr1$bad",
        "$apr1$salt$tooshort",
        "$apr1$saltsaltX$cC3gLj3Vow.skxUASM5HF1",  # salt over 8 bytes
        "$apr1$a$b$cC3gLj3Vow.skxUASM5HF1",
        "{SHA}not base64",
        "$5$",
        "$5$salt",
        "$5$rounds=$salt$6ZyH7ynM.zATyEE8yFg.ZHRU2/3b2SiB0gVApSYml7A",
        "$5$rounds=١٠٠٠$salt$6ZyH7ynM.zATyEE8yFg.ZHRU2/3b2SiB0gVApSYml7A",  # Arabic-Indic digits
        "$5$salt$6ZyH7ynM.zATyEE8yFg.ZHRU2/3b2SiB0gVApSYml7",  # checksum one short
        "$5$salt$6ZyH7ynM.zATyEE8yFg.ZHRU2/3b2SiB0gVApSYml7A=",
        "$6$salt$short",
        "$6$saltsaltsaltsaltX$" + "a" * 86,  # salt over 16 bytes
    ],
)
def test_corrupt_hash_is_a_failed_check_not_a_crash(hashed):
    (entry,) = parse_htpasswd(f"u:{hashed}\n").values()
    assert entry.scheme != "plain"
    assert not verify_password(entry, b"pw")
    assert not verify_password(entry, b"")


def test_parse_htpasswd_skips_comments_and_first_entry_wins():
    text = "# users\n\n" + bcrypt_line("alice", "a") + "\n" + bcrypt_line("alice", "b") + "\n" + bcrypt_line("bob", "c")
    table = parse_htpasswd(text)
    assert sorted(table) == ["alice", "bob"]
    assert verify_password(table["alice"], b"a")


def test_plaintext_refused_unless_allowed():
    with pytest.raises(AuthFileError, match="line 2: user 'bob' has a plaintext"):
        parse_htpasswd(bcrypt_line("alice", "a") + "\nbob:secret\n")
    table = parse_htpasswd("bob:secret\n", allow_plaintext=True)
    assert table["bob"].scheme == "plain"


@pytest.mark.parametrize("line", ["nocolon", ":hash", "user:"])
def test_malformed_lines_are_refused_with_their_number(line):
    with pytest.raises(AuthFileError, match="line 1"):
        parse_htpasswd(line + "\n", allow_plaintext=True)


# The header


def test_parse_basic_credentials():
    assert parse_basic_credentials(basic("alice", "pa:ss")) == ("alice", b"pa:ss")
    assert parse_basic_credentials(b"basic   " + base64.b64encode(b"a:")) == ("a", b"")
    assert parse_basic_credentials(basic("zoë", "pw")) == ("zoë", b"pw")


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Basic",
        b"Basic ",
        b"Bearer abc",
        b"Digest username=a",
        b"Basic !!!notbase64",
        b"Basic " + base64.b64encode(b"nocolon"),
        b"Basic " + base64.b64encode(b":password-without-user"),
        b"Basic " + base64.b64encode(b"\xff\xfe:pw"),
        b"Basic YWxpY2U6cHc",  # missing padding
        b"Basic " + b"A" * 10_000,
    ],
)
def test_malformed_credentials_are_407_errors(value):
    with pytest.raises(ProxyAuthMalformedError) as info:
        parse_basic_credentials(value)
    assert info.value.status == 407


def test_log_safe_keeps_one_token():
    assert log_safe("alice") == "alice"
    assert log_safe("a b=c%") == "a%20b%3Dc%25"
    assert " " not in log_safe("zoë\n")


# The limiter and the cache, with a fake clock


def test_failure_limiter_bucket_refills_and_refunds():
    clock = FakeClock()
    limiter = FailureLimiter(3, clock=clock)
    for _ in range(3):
        limiter.take("10.0.0.1")
    with pytest.raises(AuthRateLimitedError) as info:
        limiter.take("10.0.0.1")
    assert info.value.status == 429
    assert dict(info.value.headers)["Retry-After"] == "20"  # one token per 20 s at 3/minute
    limiter.take("10.0.0.2")  # another address is not affected
    clock.now += 20
    limiter.take("10.0.0.1")
    with pytest.raises(AuthRateLimitedError):
        limiter.take("10.0.0.1")
    limiter.refund("10.0.0.1")
    limiter.take("10.0.0.1")


def make_authenticator(tmp_path, text: str, clock=None, **overrides) -> Authenticator:
    path = tmp_path / "htpasswd"
    path.write_text(text)
    config = Config(auth_file=str(path), **overrides)
    return Authenticator(config, clock=clock or time.monotonic)


def test_authenticate_missing_wrong_and_right(tmp_path):
    auth = make_authenticator(tmp_path, bcrypt_line("alice", "pw") + "\n", auth_realm="corp")
    with pytest.raises(ProxyAuthRequiredError) as info:
        auth.authenticate([], "10.0.0.1")
    assert dict(info.value.headers)["Proxy-Authenticate"] == 'Basic realm="corp"'
    with pytest.raises(ProxyAuthFailedError):
        auth.authenticate([basic("alice", "nope")], "10.0.0.1")
    with pytest.raises(ProxyAuthFailedError):
        auth.authenticate([basic("mallory", "pw")], "10.0.0.1")
    with pytest.raises(ProxyAuthMalformedError) as malformed:
        auth.authenticate([basic("alice", "pw"), basic("alice", "pw")], "10.0.0.1")
    assert dict(malformed.value.headers)["Proxy-Authenticate"] == 'Basic realm="corp"'
    assert auth.authenticate([basic("alice", "pw")], "10.0.0.1") == "alice"


def test_cache_hit_skips_the_hash_and_expires(tmp_path):
    clock = FakeClock()
    auth = make_authenticator(tmp_path, bcrypt_line("alice", "pw", rounds=12) + "\n", clock, auth_cache_ttl=60)
    header = basic("alice", "pw")
    started = time.perf_counter()
    assert auth.authenticate([header], "10.0.0.1") == "alice"
    first = time.perf_counter() - started
    started = time.perf_counter()
    assert auth.authenticate([header], "10.0.0.1") == "alice"
    cached = time.perf_counter() - started
    assert cached < first / 20, (first, cached)
    # The cache holds keyed digests, never the header or the password.
    assert all(header not in key and b"pw" not in key for key in auth._cache)
    clock.now += 61
    assert auth._cache and next(iter(auth._cache.values()))[1] < clock.now
    assert auth.authenticate([header], "10.0.0.1") == "alice"


def test_rate_limited_address_gets_429_without_hashing_but_cached_header_passes(tmp_path):
    clock = FakeClock()
    auth = make_authenticator(tmp_path, bcrypt_line("alice", "pw", rounds=12) + "\n", clock, auth_failures_per_minute=2)
    good = basic("alice", "pw")
    assert auth.authenticate([good], "10.0.0.1") == "alice"  # now cached; the refund keeps the bucket full
    for _ in range(2):
        with pytest.raises(ProxyAuthFailedError):
            auth.authenticate([basic("alice", "guess")], "10.0.0.1")
    started = time.perf_counter()
    with pytest.raises(AuthRateLimitedError):
        auth.authenticate([basic("alice", "guess")], "10.0.0.1")
    assert time.perf_counter() - started < 0.05  # a cost-12 bcrypt takes hundreds of ms
    assert auth.authenticate([good], "10.0.0.1") == "alice"


def test_reload_swaps_the_table_clears_the_cache_and_keeps_it_on_error(tmp_path):
    auth = make_authenticator(tmp_path, bcrypt_line("alice", "pw") + "\n")
    assert auth.authenticate([basic("alice", "pw")], "10.0.0.1") == "alice"
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("bob", "pw") + "\n")
    assert auth.reload()
    with pytest.raises(ProxyAuthFailedError):
        auth.authenticate([basic("alice", "pw")], "10.0.0.1")  # the cached success is gone too
    path.write_text("bob:plaintext\n")
    assert not auth.reload()
    assert auth.authenticate([basic("bob", "pw")], "10.0.0.1") == "bob"


def test_a_reload_during_a_check_is_not_answered_from_the_old_table(tmp_path):
    import gevent

    auth = make_authenticator(tmp_path, bcrypt_line("alice", "pw") + "\n", auth_cache_ttl=60)
    check = gevent.spawn(auth.authenticate, [basic("alice", "pw")], "10.0.0.1")
    gevent.sleep(0)  # the check is now hashing in the thread pool
    assert not check.ready()
    (tmp_path / "htpasswd").write_text(bcrypt_line("bob", "pw") + "\n")  # alice removed
    assert auth.reload()
    check.join(10)
    assert isinstance(check.exception, ProxyAuthFailedError)
    assert not auth._cache  # and nothing was cached for the removed user


# End to end through the CLI


@pytest.fixture
def htpasswd(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "wonderland") + "\n" + "bob:" + HASH_VECTORS[0][2] + "\n")  # apr1 of "builder"
    return path


@pytest.fixture
def auth_proxy(start_proxy, htpasswd):
    return start_proxy("--auth-file", str(htpasswd), "--auth-realm", "test realm")


def test_no_credentials_gets_407_with_the_realm(auth_proxy, echo):
    status, headers, body = exchange(auth_proxy, connect_head(echo.target))
    assert status == 407
    assert headers["proxy-authenticate"] == 'Basic realm="test realm"'
    assert b"authentication required" in body
    assert proxy_status_error(headers["proxy-status"]) == "http_request_denied"
    assert echo.accepted == 0
    line = auth_proxy.wait_access("status=407")
    assert "user=- " in line and "reason=auth_required" in line


def test_wrong_password_and_unknown_user_get_the_same_407(auth_proxy, echo):
    answers = set()
    for user, password in (("alice", "nope"), ("nobody", "wonderland")):
        status, headers, body = exchange(auth_proxy, connect_head(echo.target, auth_header(user, password)))
        answers.add((status, headers["proxy-authenticate"], body))
    assert answers == {(407, 'Basic realm="test realm"', b"proxy authentication failed\n")}
    assert echo.accepted == 0


MALFORMED_HEADERS = [
    b"Proxy-Authorization: Basic !!!",
    b"Proxy-Authorization: Basic " + base64.b64encode(b"no-colon"),
    b"Proxy-Authorization: Basic " + base64.b64encode(b"\xc3\x28:pw"),
    b"Proxy-Authorization: Bearer token",
    b"Proxy-Authorization: Basic",
    b"Proxy-Authorization: " + b"B" * 8000,
    auth_header("alice", "wonderland") + b"\r\n" + auth_header("alice", "wonderland"),
]


@pytest.mark.parametrize("header", MALFORMED_HEADERS)
def test_malformed_proxy_authorization_is_407_never_a_crash(auth_proxy, echo, header):
    status, headers, _ = exchange(auth_proxy, connect_head(echo.target, header))
    assert status == 407
    assert headers["proxy-authenticate"] == 'Basic realm="test realm"'
    with open_tunnel(
        auth_proxy,
        echo.target,
        headers=f"Host: {echo.target}\r\n".encode() + auth_header("alice", "wonderland") + b"\r\n",
    ) as sock:
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"


def test_right_credentials_open_the_tunnel_and_name_the_user_in_the_log(auth_proxy, echo):
    for user, password in (("alice", "wonderland"), ("bob", "builder")):
        headers = f"Host: {echo.target}\r\n".encode() + auth_header(user, password) + b"\r\n"
        with open_tunnel(auth_proxy, echo.target, headers=headers) as sock:
            sock.sendall(b"hello")
            assert recv_exactly(sock, 5) == b"hello"
        line = auth_proxy.wait_access(f"user={user} ")
        assert "status=200" in line
    # apr1 is accepted, with a warning that it is weak.
    assert any("weak apr1" in line and "bob" in line for line in auth_proxy.lines)


def test_each_format_opens_a_tunnel_and_a_wrong_password_does_not(start_proxy, tmp_path, echo):
    firsts = {}
    for made_by, password, hashed in [BCRYPT_VECTOR, *HASH_VECTORS]:
        firsts.setdefault(detect_scheme(hashed), (made_by, password, hashed))
    path = tmp_path / "htpasswd"
    path.write_text("".join(f"{scheme}:{hashed}\n" for scheme, (_, _, hashed) in firsts.items()))
    proxy = start_proxy("--auth-file", str(path))
    for scheme, (made_by, password, _) in firsts.items():
        status, _, _ = exchange(proxy, connect_head(echo.target, auth_header(scheme, password + "x")))
        assert status == 407, made_by
        headers = f"Host: {echo.target}\r\n".encode() + auth_header(scheme, password) + b"\r\n"
        with open_tunnel(proxy, echo.target, headers=headers) as sock:
            sock.sendall(scheme.encode())
            assert recv_exactly(sock, len(scheme)) == scheme.encode()
        assert "status=200" in proxy.wait_access(f"user={scheme} ")
    assert sorted(firsts) == ["apr1", "bcrypt", "sha1", "sha256_crypt", "sha512_crypt"]


def test_curl_proxy_user(auth_proxy, tls_server, ca_file):
    url = f"https://tls.test:{tls_server.port}/"
    common = [
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        str(ca_file),
        "--proxy",
        f"http://127.0.0.1:{auth_proxy.port}",
    ]
    ok = subprocess.run([*common, "--proxy-user", "alice:wonderland", url], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "hello over tls\n"
    refused = subprocess.run([*common, "--proxy-user", "alice:x", url], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "407" in refused.stderr


def test_failed_logins_are_rate_limited_with_429_before_hashing(start_proxy, tmp_path, echo):
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "wonderland", rounds=12) + "\n")
    proxy = start_proxy("--auth-file", str(path), "--auth-failures-per-minute", "3")
    for _ in range(3):
        status, _, _ = exchange(proxy, connect_head(echo.target, auth_header("alice", "guess")))
        assert status == 407
    started = time.monotonic()
    status, headers, body = exchange(proxy, connect_head(echo.target, auth_header("alice", "guess")))
    elapsed = time.monotonic() - started
    assert status == 429 and "retry-after" in headers, body
    assert elapsed < 0.2, elapsed  # no cost-12 bcrypt ran (that takes ~0.3-0.5 s here)
    assert "reason=auth_rate_limited" in proxy.wait_access("status=429")
    # Over the limit even the right password is not checked: guessing gains nothing.
    status, _, _ = exchange(proxy, connect_head(echo.target, auth_header("alice", "wonderland")))
    assert status == 429
    assert echo.accepted == 0


def test_a_burst_carrying_one_new_header_shares_one_check(start_proxy, tmp_path, echo):
    # 32 connections at once with credentials not yet cached: one bcrypt check,
    # one attempt from the failure bucket (which here holds only 2), 32 tunnels.
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "pw", rounds=12) + "\n")
    proxy = start_proxy("--auth-file", str(path), "--auth-failures-per-minute", "2")
    headers = f"Host: {echo.target}\r\n".encode() + auth_header("alice", "pw") + b"\r\n"
    raw = f"CONNECT {echo.target} HTTP/1.1\r\n".encode() + headers + b"\r\n"
    socks = [proxy.connect() for _ in range(32)]
    for sock in socks:
        sock.sendall(raw)
    answers = [read_head(sock)[0] for sock in socks]
    for sock in socks:
        sock.close()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers), {a[:40] for a in answers}


def test_bcrypt_check_does_not_stop_other_tunnels(start_proxy, tmp_path, echo):
    # A cost-14 check takes a second or more; a tunnel opened before keeps echoing meanwhile.
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("fast", "pw") + "\n" + bcrypt_line("slow", "pw", rounds=14) + "\n")
    proxy = start_proxy("--auth-file", str(path))
    headers = f"Host: {echo.target}\r\n".encode() + auth_header("fast", "pw") + b"\r\n"
    tunnel = open_tunnel(proxy, echo.target, headers=headers)
    done = threading.Event()
    slow_result = {}

    def slow_login() -> None:
        slow_result["answer"] = exchange(proxy, connect_head("127.0.0.1:1", auth_header("slow", "pw")))
        done.set()

    started = time.monotonic()
    threading.Thread(target=slow_login, daemon=True).start()
    round_trips = []
    while not done.is_set():
        t0 = time.monotonic()
        tunnel.sendall(b"ping")
        assert recv_exactly(tunnel, 4) == b"ping"
        round_trips.append(time.monotonic() - t0)
    slow_check = time.monotonic() - started
    tunnel.close()
    assert slow_result["answer"][0] == 502  # authenticated, then port 1 refused the connection
    assert slow_check > 0.5, slow_check  # the check really was slow ...
    assert len(round_trips) > 20 and max(round_trips) < slow_check / 4, (slow_check, max(round_trips))


def test_auth_file_change_is_picked_up_without_dropping_tunnels(start_proxy, tmp_path, echo):
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "pw") + "\n")
    proxy = start_proxy("--auth-file", str(path))
    headers = f"Host: {echo.target}\r\n".encode() + auth_header("alice", "pw") + b"\r\n"
    tunnel = open_tunnel(proxy, echo.target, headers=headers)
    # Replaced by rename, as editors and 'gconnect passwd' do: alice out, carol in.
    new = tmp_path / "htpasswd.new"
    new.write_text(bcrypt_line("carol", "pw2") + "\n")
    os.replace(new, path)
    wait_until(lambda: any("reloaded: 1 users" in line for line in proxy.lines))
    status, _, _ = exchange(proxy, connect_head(echo.target, auth_header("alice", "pw")))
    assert status == 407
    carol = f"Host: {echo.target}\r\n".encode() + auth_header("carol", "pw2") + b"\r\n"
    open_tunnel(proxy, echo.target, headers=carol).close()
    # The tunnel alice opened before the change is still carrying bytes.
    tunnel.sendall(b"still")
    assert recv_exactly(tunnel, 5) == b"still"
    tunnel.close()


def test_sighup_reloads_and_a_broken_file_keeps_the_old_users(start_proxy, tmp_path, echo):
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "pw") + "\n")
    proxy = start_proxy("--auth-file", str(path))
    path.write_text("alice:plaintext-now\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("keeping the 1 users loaded before" in line for line in proxy.lines))
    headers = f"Host: {echo.target}\r\n".encode() + auth_header("alice", "pw") + b"\r\n"
    open_tunnel(proxy, echo.target, headers=headers).close()
    assert any("plaintext" in line and "ERROR" in line for line in proxy.lines)


def test_plaintext_file_refused_at_start_unless_allowed(start_proxy, tmp_path, echo):
    path = tmp_path / "htpasswd"
    path.write_text("alice:secret\n")
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "serve", "--listen", "127.0.0.1:0", "--auth-file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "plaintext" in result.stderr and "Traceback" not in result.stderr
    proxy = start_proxy("--auth-file", str(path), "--allow-plaintext-passwords")
    headers = f"Host: {echo.target}\r\n".encode() + auth_header("alice", "secret") + b"\r\n"
    open_tunnel(proxy, echo.target, headers=headers).close()
    assert any("weak plain" in line for line in proxy.lines)


def test_without_auth_file_no_credentials_are_needed(proxy, echo):
    open_tunnel(proxy, echo.target).close()
    assert "user=- " in proxy.wait_access("status=200")


# gconnect passwd


def test_passwd_creates_then_updates_a_bcrypt_entry(tmp_path):
    path = tmp_path / "users"
    runner = CliRunner()
    result = runner.invoke(main, ["passwd", str(path), "alice", "--rounds", "4"], input="s3cret\ns3cret\n")
    assert result.exit_code == 0, result.output
    assert "added alice" in result.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_text(path.read_text() + "# a comment\n" + bcrypt_line("bob", "b") + "\n")
    result = runner.invoke(main, ["passwd", str(path), "alice", "--rounds", "4"], input="n3w\nn3w\n")
    assert result.exit_code == 0 and "updated alice" in result.output
    table = parse_htpasswd(path.read_text())
    assert sorted(table) == ["alice", "bob"]
    assert table["alice"].hashed.startswith("$2y$04$")
    assert verify_password(table["alice"], b"n3w") and not verify_password(table["alice"], b"s3cret")
    assert "# a comment" in path.read_text()


def test_passwd_refuses_mismatch_bad_names_and_long_passwords(tmp_path):
    path = tmp_path / "users"
    runner = CliRunner()
    mismatch = runner.invoke(main, ["passwd", str(path), "alice"], input="a\nb\na\na\n")
    assert "do not match" in mismatch.output
    bad = runner.invoke(main, ["passwd", str(path), "al:ice", "--rounds", "4"], input="pw\npw\n")
    assert bad.exit_code == 1 and "invalid user name" in bad.output
    long = "x" * 73
    too_long = runner.invoke(main, ["passwd", str(path), "bob", "--rounds", "4"], input=f"{long}\n{long}\n")
    assert too_long.exit_code == 1 and "72 bytes" in too_long.output


def test_passwd_from_a_pipe_makes_a_file_the_proxy_accepts(start_proxy, tmp_path, echo):
    path = tmp_path / "users"
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "passwd", str(path), "dave", "--rounds", "4"],
        input="pipe-pw\npipe-pw\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    proxy = start_proxy("--auth-file", str(path))
    headers = f"Host: {echo.target}\r\n".encode() + auth_header("dave", "pipe-pw") + b"\r\n"
    open_tunnel(proxy, echo.target, headers=headers).close()
    assert "user=dave " in proxy.wait_access("status=200")


def test_auth_runs_before_the_port_policy(start_proxy, htpasswd, echo):
    # An anonymous client learns nothing about which ports or hosts are allowed.
    proxy = start_proxy("--listen", "127.0.0.1:0", "--auth-file", str(htpasswd), defaults=False)
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(connect_head("127.0.0.1:22"))
        head, _ = read_head(sock)
    assert head.startswith(b"HTTP/1.1 407 ")


def test_passwd_into_an_unwritable_place_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        main, ["passwd", str(tmp_path / "missing-dir" / "users"), "alice", "--rounds", "4"], input="pw\npw\n"
    )
    assert result.exit_code == 1 and "cannot write" in result.output
    assert not isinstance(result.exception, OSError)


def test_json_access_log_names_the_user_on_open_and_close(start_proxy, htpasswd, echo):
    import json

    proxy = start_proxy("--auth-file", str(htpasswd), "--log-format", "json")
    headers = f"Host: {echo.target}\r\n".encode() + auth_header("alice", "wonderland") + b"\r\n"
    open_tunnel(proxy, echo.target, headers=headers).close()
    exchange(proxy, connect_head(echo.target, auth_header("alice", "wrong")))
    wait_until(lambda: len(proxy.access_lines()) >= 3)
    records = {(r["event"], r.get("status")): r for r in map(json.loads, proxy.access_lines())}
    assert records[("open", None)]["user"] == "alice"
    assert records[("close", 200)]["user"] == "alice"
    assert records[("close", 407)]["user"] is None
    assert records[("close", 407)]["reason"] == "auth_failed"


def test_failure_bucket_counts_the_client_a_proxy_header_names(start_proxy, htpasswd, echo):
    # Behind a load balancer every connection comes from the balancer: the bucket
    # must be the client's, or one guesser would lock everyone out.
    proxy = start_proxy(
        "--auth-file",
        str(htpasswd),
        "--auth-failures-per-minute",
        "1",
        "--proxy-protocol",
        "--proxy-protocol-from",
        "127.0.0.0/8",
    )

    def attempt(source: str, password: str) -> bytes:
        with proxy.connect() as sock:
            sock.sendall(f"PROXY TCP4 {source} 127.0.0.1 40000 {proxy.port}\r\n".encode())
            sock.sendall(connect_head(echo.target, auth_header("alice", password)))
            return read_head(sock)[0].split(b"\r\n")[0]

    assert attempt("203.0.113.5", "guess").startswith(b"HTTP/1.1 407 ")
    assert attempt("203.0.113.5", "guess").startswith(b"HTTP/1.1 429 ")
    assert attempt("198.51.100.9", "wonderland").startswith(b"HTTP/1.1 200 ")
    assert attempt("198.51.100.9", "guess").startswith(b"HTTP/1.1 407 ")
    assert "client=203.0.113.5:40000 user=- " in proxy.wait_access("status=429")


def test_workers_each_enforce_the_auth_file(start_proxy, htpasswd, echo):
    proxy = start_proxy("--workers", "2", "--auth-file", str(htpasswd))
    headers = f"Host: {echo.target}\r\n".encode() + auth_header("alice", "wonderland") + b"\r\n"
    for _ in range(6):  # SO_REUSEPORT spreads these over both workers
        status, _, _ = exchange(proxy, connect_head(echo.target))
        assert status == 407
        with open_tunnel(proxy, echo.target, headers=headers) as sock:
            sock.sendall(b"w")
            assert recv_exactly(sock, 1) == b"w"
