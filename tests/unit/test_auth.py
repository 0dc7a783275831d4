"""Proxy authentication in-process: the htpasswd formats, the Basic header, the cache, the
failure limiter, ``gconnect passwd`` through click's runner (end to end: tests/e2e/test_auth.py)."""

from __future__ import annotations

import base64
import os
import stat
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

from .workers import two_workers

pytestmark = pytest.mark.timeout(90)


def bcrypt_line(user: str, password: str, rounds: int = 4) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
    return f"{user}:$2y${hashed[4:]}"


def basic(user: str | bytes, password: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(u + b":" + p)


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


def test_failure_limiter_counts_a_sliding_minute_and_refunds():
    clock = FakeClock()
    clock.now = 600.0  # the start of a minute window
    limiter = FailureLimiter(3, clock=clock)
    for _ in range(3):
        limiter.take("10.0.0.1")
    with pytest.raises(AuthRateLimitedError) as info:
        limiter.take("10.0.0.1")
    assert info.value.status == 429
    # This window's 3 must become the previous one and weigh 2: 60 s, then a third of the next.
    assert dict(info.value.headers)["Retry-After"] == "80"
    limiter.take("10.0.0.2")  # another address is not affected
    clock.now += 79
    with pytest.raises(AuthRateLimitedError):
        limiter.take("10.0.0.1")
    clock.now += 1
    taken = limiter.take("10.0.0.1")  # 3 * (1 - 1/3) + 1 = 3
    with pytest.raises(AuthRateLimitedError):
        limiter.take("10.0.0.1")
    limiter.refund(taken)
    limiter.take("10.0.0.1")
    clock.now += 120  # two windows later nothing is left
    assert limiter.count("10.0.0.1") == 0


def test_failure_limiters_of_two_workers_share_one_count():
    clock = FakeClock()
    clock.now = 600.0
    one, two = (FailureLimiter(4, clock=clock, totals=totals) for totals in two_workers("totals"))
    one.take("10.0.0.1")
    two.take("10.0.0.1")
    one.take("10.0.0.1")
    two.take("10.0.0.1")
    for limiter in (one, two):
        with pytest.raises(AuthRateLimitedError):
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


def test_passwd_into_an_unwritable_place_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        main, ["passwd", str(tmp_path / "missing-dir" / "users"), "alice", "--rounds", "4"], input="pw\npw\n"
    )
    assert result.exit_code == 1 and "cannot write" in result.output
    assert not isinstance(result.exception, OSError)
