"""Proxy authentication end to end through the CLI: 407, 429, reloads, bcrypt off the hub,
the user in the access log, ``gconnect passwd`` into a file the proxy reads."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from gconnect.auth.htpasswd import detect_scheme

from ..conftest import exchange, open_tunnel, read_head, recv_exactly, wait_until
from ..unit.test_auth import BCRYPT_VECTOR, HASH_VECTORS, basic, bcrypt_line
from .test_errors import proxy_status_error

pytestmark = pytest.mark.timeout(90)


def connect_head(target: str, *headers: bytes) -> bytes:
    lines = b"".join(h + b"\r\n" for h in headers)
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + lines + b"\r\n"


def auth_header(user: str, password: str) -> bytes:
    return b"Proxy-Authorization: " + basic(user, password)


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
