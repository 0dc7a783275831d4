"""Squid helpers: the protocol codec (bytes only), the helper pool with a real
helper process (tests/authhelper.py), and end to end through the CLI with
Debian squid's own basic_ncsa_auth and with the Python helper (crash, hang,
BH, group= selecting a [groups.NAME] table, the external ACL)."""

from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from pathlib import Path

import gevent
import pytest

from gconnect.auth.helperproto import HelperProtocolError, Reply, encode_request, parse_reply
from gconnect.auth.helpers import RESTART_INTERVAL_SECONDS, HelperPool
from gconnect.errors import AuthUnavailableError

from .conftest import exchange, open_tunnel, read_head, recv_exactly, wait_until
from .test_auth import auth_header, connect_head

pytestmark = pytest.mark.timeout(90)

HELPER = str(Path(__file__).with_name("authhelper.py"))
NCSA = "/usr/lib/squid/basic_ncsa_auth"
# The Python helper's SLOW_SECONDS is 3: an answer within half of it was not held up by the slow one
# (with room for a loaded machine).
FAST_SECONDS = 1.5


def helper_cmd(*args: str) -> str:
    return shlex.join([sys.executable, HELPER, *args])


# The codec


def test_request_fields_are_url_escaped_so_nothing_splits_the_line():
    assert encode_request(["alice", b"pw"]) == b"alice pw\n"
    assert encode_request(["a b", b"p%w\nx"]) == b"a%20b p%25w%0Ax\n"
    assert encode_request(["zoë", "пароль".encode()], 7) == b"7 zo%C3%AB %D0%BF%D0%B0%D1%80%D0%BE%D0%BB%D1%8C\n"


@pytest.mark.parametrize(
    ("line", "concurrent", "expected"),
    [
        (b"OK\n", False, (None, Reply("OK"))),
        (b"OK \n", False, (None, Reply("OK"))),  # basic_ncsa_auth's answer, trailing space and all
        (b"ERR No such user\n", False, (None, Reply("ERR", {}, "No such user"))),
        (
            b'ERR message="wrong password"\n',
            False,
            (None, Reply("ERR", {"message": "wrong password"}, "wrong password")),
        ),
        (b"3 OK group=staff user=a%20b\n", True, (3, Reply("OK", {"group": "staff", "user": "a b"}))),
        (b'0 BH message="say \\"no\\""\r\n', True, (0, Reply("BH", {"message": 'say "no"'}, 'say "no"'))),
        (b"OK tag=ops clt_conn_tag=x\n", False, (None, Reply("OK", {"tag": "ops", "clt_conn_tag": "x"}))),
    ],
)
def test_answers_parse(line, concurrent, expected):
    assert parse_reply(line, concurrent=concurrent) == expected


@pytest.mark.parametrize(
    ("line", "concurrent"),
    [
        (b"\n", False),
        (b"MAYBE\n", False),
        (b"ok\n", False),
        (b"OK\n", True),  # no channel ID
        (b"x OK\n", True),
        (b'OK message="unterminated\n', False),
        (b"\xff\xfe\n", False),
        (b"OK " + b"x" * 40_000 + b"\n", False),
    ],
)
def test_lines_that_are_not_the_protocol_are_errors(line, concurrent):
    with pytest.raises(HelperProtocolError):
        parse_reply(line, concurrent=concurrent)


# The pool, with the Python helper as a real process (in this process's hub)


@pytest.fixture
def pools():
    made: list[HelperPool] = []

    def make(*args: str, children: int = 1, concurrency: int = 0, timeout: float = 5.0) -> HelperPool:
        pool = HelperPool("test", [sys.executable, HELPER, *args], children, concurrency, timeout)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.stop()


def test_pool_answers_ok_and_err_with_pairs(pools):
    pool = pools()
    assert pool.ask(["alice", b"pw"]) == Reply("OK", {"group": "staff"})
    assert pool.ask(["alice", b"nope"]).result == "ERR"
    assert pool.ask(["carol", b"pw"]).pairs == {"user": "carol@corp", "tag": "ops"}
    assert pool.answers == 3 and not pool.failures


@pytest.mark.parametrize(("children", "concurrency"), [(2, 0), (1, 4)])
def test_a_slow_answer_holds_up_no_other_request(pools, children, concurrency):
    pool = pools(*(["--concurrent"] if concurrency else []), children=children, concurrency=concurrency)
    pool.start()
    slow = gevent.spawn(pool.ask, ["slow", b"pw"])
    gevent.sleep(0.05)
    started = time.monotonic()
    assert pool.ask(["alice", b"pw"]).result == "OK"
    assert time.monotonic() - started < FAST_SECONDS
    assert not slow.ready()
    assert slow.get(timeout=10).result == "OK"


def test_channel_ids_match_answers_that_come_back_out_of_order(pools):
    pool = pools("--concurrent", concurrency=8)
    asks = [gevent.spawn(pool.ask, [user, b"pw"]) for user in ("slow", "alice", "bob", "carol", "slow", "alice")]
    gevent.joinall(asks, timeout=10, raise_error=True)
    assert [g.value.result for g in asks] == ["OK", "OK", "ERR", "OK", "OK", "OK"]
    assert asks[1].value.pairs == {"group": "staff"} and asks[3].value.pairs["tag"] == "ops"


def test_a_burst_before_any_child_started_is_shared_between_them(pools):
    pool = pools(children=3)
    asks = [gevent.spawn(pool.ask, ["alice", b"pw"]) for _ in range(12)]
    gevent.joinall(asks, timeout=20, raise_error=True)
    assert all(g.value.result == "OK" for g in asks)
    assert all(child.alive for child in pool.children) and not pool.failures


@pytest.mark.parametrize(("user", "kind"), [("crash", "crash"), ("bh", "bh"), ("junk", "protocol")])
def test_crash_bh_and_junk_are_503_never_a_login_and_counted(pools, user, kind):
    pool = pools()
    with pytest.raises(AuthUnavailableError) as info:
        pool.ask([user, b"pw"])
    assert info.value.status == 503 and info.value.proxy_status == "proxy_internal_error"
    assert pool.failures[kind] == 1
    # The helper is started again (after the restart interval) and answers the next request.
    gevent.sleep(RESTART_INTERVAL_SECONDS)
    assert pool.ask(["alice", b"pw"]).result == "OK"


def test_a_hung_helper_times_out_is_killed_and_replaced(pools):
    pool = pools(timeout=0.5)
    pool.start()
    pid = pool.children[0].proc.pid
    started = time.monotonic()
    with pytest.raises(AuthUnavailableError):
        pool.ask(["hang", b"pw"])
    assert 0.5 <= time.monotonic() - started < 2
    assert pool.failures["timeout"] == 1
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text())
    gevent.sleep(RESTART_INTERVAL_SECONDS)
    assert pool.ask(["alice", b"pw"]).result == "OK"
    assert pool.children[0].proc.pid != pid


def test_stop_ends_helpers_that_ignore_eof_together_and_fails_their_requests():
    pool = HelperPool("test", ["sleep", "100"], 3, 0, 30.0)
    pool.start()
    pids = [child.proc.pid for child in pool.children]
    waiting = gevent.spawn(pool.ask, ["alice", b"pw"])
    gevent.sleep(0.1)
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 2.5  # one STOP_WAIT_SECONDS for all, not one each
    waiting.join(5)
    assert isinstance(waiting.exception, AuthUnavailableError)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert not pool.failures  # a shutdown is not a helper's failure


def test_a_command_that_cannot_start_is_503(tmp_path):
    pool = HelperPool("test", [str(tmp_path / "missing")], 1, 0, 1.0)
    with pytest.raises(AuthUnavailableError):
        pool.ask(["alice", b"pw"])
    assert pool.failures["start"] == 1


# End to end: the CLI with real helpers


@pytest.fixture
def ncsa_file(tmp_path):
    if not os.access(NCSA, os.X_OK):
        pytest.skip(f"{NCSA} missing: apt-get install squid (the README's test command does)")
    path = tmp_path / "squid.htpasswd"
    # apr1 of "builder" and SHA-512 crypt of "right", from tests/test_auth.py's vectors.
    path.write_text(
        "bob:$apr1$Bx.2ZQel$cC3gLj3Vow.skxUASM5HF1\n"
        "six:$6$KfdsA1iBfpoNRUK0$aWEG3QasUWXuQqKi49aqy47fCZH8889CYWMxVA61SfzR9Ugpp3rsuU56vH3fBLCSX3sgOwJwuId5es2a28dIO1\n"
    )
    return path


def tunnel_echo(proxy, target: str, user: str, password: str) -> None:
    headers = f"Host: {target}\r\n".encode() + auth_header(user, password) + b"\r\n"
    with open_tunnel(proxy, target, headers=headers) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"


def test_squids_basic_ncsa_auth_decides_through_the_chain(start_proxy, echo, ncsa_file):
    proxy = start_proxy("--auth-helper", shlex.join([NCSA, str(ncsa_file)]), "--auth-helper-children", "2")
    tunnel_echo(proxy, echo.target, "bob", "builder")
    tunnel_echo(proxy, echo.target, "six", "right")
    for user, password in (("bob", "wrong"), ("nobody", "builder"), ("bob builder", "x")):
        status, headers, _ = exchange(proxy, connect_head(echo.target, auth_header(user, password)))
        assert status == 407 and "proxy-authenticate" in headers
    line = proxy.wait_access("user=six")
    assert " auth=helper" in line and "status=200" in line


def test_htpasswd_first_then_helper_each_names_itself(start_proxy, echo, ncsa_file, tmp_path):
    from .test_auth import bcrypt_line

    htpasswd = tmp_path / "local.htpasswd"
    htpasswd.write_text(bcrypt_line("alice", "wonderland") + "\n")
    proxy = start_proxy("--auth-file", str(htpasswd), "--auth-helper", shlex.join([NCSA, str(ncsa_file)]))
    tunnel_echo(proxy, echo.target, "alice", "wonderland")
    tunnel_echo(proxy, echo.target, "bob", "builder")
    # The file knows alice: her wrong password is refused there, the helper is not asked.
    status, _, _ = exchange(proxy, connect_head(echo.target, auth_header("alice", "builder")))
    assert status == 407
    assert " auth=htpasswd" in proxy.wait_access("user=alice")
    assert " auth=helper" in proxy.wait_access("user=bob")


@pytest.mark.parametrize(
    ("user", "kind"), [("crash", "crash"), ("bh", "bh"), ("hang", "timeout"), ("junk", "protocol")]
)
def test_a_failing_helper_is_a_503_with_proxy_status_logged_and_counted(start_proxy, echo, user, kind):
    from .test_metrics import metrics_url, scrape

    proxy = start_proxy("--auth-helper", helper_cmd(), "--auth-helper-timeout", "1", "--metrics-listen", "127.0.0.1:0")
    status, headers, _ = exchange(proxy, connect_head(echo.target, auth_header(user, "pw")))
    assert status == 503
    assert headers["proxy-status"].startswith("gconnect; error=proxy_internal_error")
    assert echo.accepted == 0
    assert "reason=auth_unavailable" in proxy.wait_access("status=503")
    wait_until(lambda: any(f"auth helper: {kind}" in line for line in proxy.lines))
    values = scrape(metrics_url(proxy))
    assert values[f'gconnect_auth_helper_failures_total{{helper="auth",kind="{kind}"}}'] == 1


def test_a_slow_helper_delays_no_other_client(start_proxy, echo):
    proxy = start_proxy("--auth-helper", helper_cmd(), "--auth-helper-children", "2")
    slow_status: list[bytes] = []

    def slow_client() -> None:
        with proxy.connect() as sock:
            sock.sendall(connect_head(echo.target, auth_header("slow", "pw")))
            slow_status.append(read_head(sock)[0].split(b"\r\n")[0])

    slow = threading.Thread(target=slow_client)
    slow.start()
    time.sleep(0.1)
    started = time.monotonic()
    tunnel_echo(proxy, echo.target, "alice", "pw")
    assert time.monotonic() - started < FAST_SECONDS
    assert slow.is_alive()
    slow.join(10)
    assert slow_status == [b"HTTP/1.1 200 Connection established"]


def test_helper_answers_are_cached_ok_and_err_separately(start_proxy, echo, tmp_path):
    log = tmp_path / "asked.log"
    proxy = start_proxy(
        "--auth-helper", helper_cmd("--log", str(log)), "--auth-helper-ttl", "60", "--auth-helper-negative-ttl", "60"
    )
    for _ in range(3):
        tunnel_echo(proxy, echo.target, "alice", "pw")
        assert exchange(proxy, connect_head(echo.target, auth_header("alice", "nope")))[0] == 407
    assert log.read_text().splitlines() == ["alice pw", "alice nope"]


def test_group_from_the_helper_selects_the_groups_table(start_proxy, echo, tmp_path):
    config = tmp_path / "gconnect.toml"
    config.write_text(f'[groups.staff]\nallow-port = ["{echo.port}"]\n\n[groups.ops]\nallow-port = ["1"]\n')
    proxy = start_proxy("--config", str(config), "--auth-helper", helper_cmd())
    tunnel_echo(proxy, echo.target, "alice", "pw")  # group=staff: the echo's port is allowed
    status, _, _ = exchange(proxy, connect_head(echo.target, auth_header("carol", "pw")))
    assert status == 403  # tag=ops: only port 1
    assert "user=carol@corp" in proxy.wait_access("status=403")


def test_external_acl_refuses_with_403_and_caches_per_key(start_proxy, echo, tmp_path):
    log = tmp_path / "acl.log"
    proxy = start_proxy("--external-acl-helper", helper_cmd("--acl", "--log", str(log)))
    tunnel_echo(proxy, echo.target, "anyone", "x")
    tunnel_echo(proxy, echo.target, "anyone", "x")
    status, headers, _ = exchange(proxy, connect_head(f"deny.test:{echo.port}"))
    assert status == 403 and "error=http_request_denied" in headers["proxy-status"]
    assert "reason=external_denied" in proxy.wait_access("status=403")
    lines = log.read_text().splitlines()
    assert lines == [f"- 127.0.0.1 127.0.0.1 {echo.port}", f"- 127.0.0.1 deny.test {echo.port}"]
