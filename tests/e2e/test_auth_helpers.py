"""Squid helpers as gconnect runs them: the helper pool with a real helper
process (tests/authhelper.py: channel IDs, slow, hung, crashing, BH, junk), the
chain around it, the external ACL in the tunnel's check step, and end to end
through the CLI (503 with Proxy-Status, logged and counted; a slow helper
holding up no one; answers cached; group= choosing a [groups.NAME] table)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import gevent
import pytest

from gconnect.auth.helperproto import Reply
from gconnect.auth.helpers import RESTART_INTERVAL_SECONDS, HelperPool
from gconnect.errors import AuthUnavailableError, ProxyAuthFailedError
from gconnect.tunnel.tunnel import Tunnel

from ..authhelper import command as helper_cmd
from ..conftest import exchange, open_tunnel, read_head, recv_exactly, wait_until
from ..unit.test_auth import basic
from ..unit.test_tunnel_steps import LOOPBACK, Recorder, ScriptedSide, request_for, run, services_for, target
from .test_auth import auth_header, connect_head
from .test_metrics import metrics_url, scrape

pytestmark = pytest.mark.timeout(90)

HELPER = str(Path(__file__).parents[1] / "authhelper.py")
__all__ = ["target"]  # the fixture, shared with the tunnel steps' tests

FAST_SECONDS = 1.5


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


def test_htpasswd_then_helper_each_decides_for_its_users(authenticators, htpasswd):
    auth = authenticators(auth_file=htpasswd, auth_helper=helper_cmd())
    assert auth.identify([basic("alice", "pw")], "10.0.0.1").provider == "htpasswd"
    # The file knows carol: her wrong password is refused there, the helper is not asked.
    with pytest.raises(ProxyAuthFailedError):
        auth.identify([basic("carol", "pw")], "10.0.0.1")
    # The file does not know dave: the helper does.
    assert auth.identify([basic("dave", "pw")], "10.0.0.1").provider == "helper"


def test_the_configured_order_lets_the_helper_decide_first(authenticators, htpasswd):
    auth = authenticators(auth_file=htpasswd, auth_helper=helper_cmd(), auth_chain=("helper", "htpasswd"))
    identity = auth.identify([basic("alice", "pw")], "10.0.0.1")
    assert (identity.provider, identity.group) == ("helper", "staff")
    # The helper answers ERR for carol's file password: it decided, the file is not asked.
    with pytest.raises(ProxyAuthFailedError):
        auth.identify([basic("carol", "file-pw")], "10.0.0.1")


def test_waiters_on_a_failing_helper_share_its_503_and_nobody_gets_in(authenticators):
    auth = authenticators(auth_helper=helper_cmd(), auth_helper_timeout=0.5)
    header = basic("hang", "pw")
    checks = [gevent.spawn(auth.identify, [header], "10.0.0.1") for _ in range(4)]
    gevent.joinall(checks, timeout=10)
    assert all(isinstance(check.exception, AuthUnavailableError) for check in checks)
    assert auth.helper_pools()[0].failures["timeout"] == 1
    # A 503 is the proxy's trouble, not a failed login: the bucket is refunded.
    assert auth.limiter.count("10.0.0.1") == 0


def test_the_external_acl_refuses_after_the_rules_and_before_any_dial(target):
    recorder = Recorder()
    port = target.getsockname()[1]
    helper = helper_cmd("--acl")
    services = services_for(recorder, allow_port=((port, port),), allow_dest=LOOPBACK, external_acl_helper=helper)
    try:
        side = ScriptedSide(request_for(port, host="deny.test"))
        run(Tunnel(services, side))
        assert side.calls == ["admit", "read_request", "refuse", "close"]
        assert side.refused is not None and (side.refused.status, side.refused.code) == (403, "external_denied")
        allowed = ScriptedSide(request_for(port))
        tunnel = Tunnel(services, allowed)
        run(tunnel)
        assert tunnel.status == 200
        allowed.relay.abort("client_eof")  # type: ignore[union-attr]
    finally:
        services.external_acl.stop()  # type: ignore[union-attr]


def tunnel_echo(proxy, target: str, user: str, password: str) -> None:
    headers = f"Host: {target}\r\n".encode() + auth_header(user, password) + b"\r\n"
    with open_tunnel(proxy, target, headers=headers) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"


@pytest.mark.parametrize(
    ("user", "kind"), [("crash", "crash"), ("bh", "bh"), ("hang", "timeout"), ("junk", "protocol")]
)
def test_a_failing_helper_is_a_503_with_proxy_status_logged_and_counted(start_proxy, echo, user, kind):

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


def test_a_forwarded_request_goes_through_the_external_acl_too(start_proxy, tmp_path):
    # Forwarding asks the same chain and the same decision helper as a tunnel (before any DNS or dial).
    log = tmp_path / "acl.log"
    proxy = start_proxy("--external-acl-helper", helper_cmd("--acl", "--log", str(log)))
    status, headers, _ = exchange(proxy, b"GET http://deny.test/x HTTP/1.1\r\nHost: deny.test\r\n\r\n")
    assert status == 403 and "error=http_request_denied" in headers["proxy-status"]
    assert "reason=external_denied" in proxy.wait_access("status=403")
    assert log.read_text().splitlines() == ["- 127.0.0.1 deny.test 80"]
