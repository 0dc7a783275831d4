"""Destination name rules end to end through the CLI: every pattern form, case,
trailing dot and IDN spellings, IP literals under an allow-list, deny over allow,
refused names never reaching DNS, the parent proxy, per-user tables, report
mode, and SIGHUP changing the rules under open tunnels."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import bcrypt
import http_sfv
import pytest

from gconnect.testing.dns import Record

from ..conftest import open_tunnel, read_head, recv_exactly, wait_until
from .test_metrics import metrics_url, scrape

pytestmark = pytest.mark.timeout(60)

NAMES = (
    "exact.test",
    "a.exact.test",
    "suffix.test",
    "a.b.suffix.test",
    "bad.suffix.test",
    "glob.test",
    "a.glob.test",
    "other.test",
    "xn--bcher-kva.example",
)


@pytest.fixture
def names(hosts_file: Path) -> Path:
    """The hosts file with NAMES mapped to 127.0.0.1 (the proxy reads it at start)."""
    hosts_file.write_text(hosts_file.read_text() + "127.0.0.1 " + " ".join(NAMES) + "\n")
    return hosts_file


def connect(proxy, target: str | bytes, *headers: bytes) -> tuple[int, dict[str, str], bytes]:
    raw = target.encode() if isinstance(target, str) else target
    head = b"CONNECT " + raw + b" HTTP/1.1\r\nHost: " + raw + b"\r\n" + b"".join(headers) + b"\r\n"
    with proxy.connect() as sock:
        sock.sendall(head)
        head_bytes, body = read_head(sock)
    lines = head_bytes.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), fields, body


def proxy_status(headers: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """The Proxy-Status members, parsed by http-sfv (RFC 8941), not by us."""
    parsed = http_sfv.List()
    parsed.parse(headers["proxy-status"].encode())
    return [(str(member.value), {k: str(v) for k, v in member.params.items()}) for member in parsed]


def test_each_pattern_form_case_and_trailing_dot(start_proxy, echo, names):
    proxy = start_proxy(
        "--allow-host", "exact.test", "--allow-host", ".suffix.test", "--allow-host", "*.glob.test",
        "--deny-host", "bad.suffix.test",
    )  # fmt: skip
    port = echo.port
    expected = {
        "exact.test": 200,
        "EXACT.Test.": 200,
        "a.exact.test": 403,
        "suffix.test": 200,
        "a.b.suffix.test": 200,
        "A.B.SUFFIX.TEST.": 200,
        "bad.suffix.test": 403,  # deny wins over allow
        "glob.test": 403,  # *. is strictly below
        "a.glob.test": 200,
        "other.test": 403,
    }
    got = {host: connect(proxy, f"{host}:{port}")[0] for host in expected}
    assert got == expected
    _status, headers, _ = connect(proxy, f"bad.suffix.test:{port}")
    assert proxy_status(headers) == [
        (
            "gconnect",
            {"error": "http_request_denied", "details": "host bad.suffix.test is denied (deny-host bad.suffix.test)"},
        )
    ]
    proxy.wait_access("target=bad.suffix.test")
    lines = proxy.access_lines()
    assert any(
        "target=bad.suffix.test" in line and "status=403" in line and "reason=host_denied" in line for line in lines
    )
    assert any("target=other.test" in line and "reason=host_not_allowed" in line for line in lines)


def test_idn_in_both_spellings_is_one_name(start_proxy, echo, names):
    # The pattern in Unicode with a capital and a trailing dot; requests in both spellings.
    proxy = start_proxy("--allow-host", "Bücher.Example.")
    with open_tunnel(proxy, f"XN--BCHER-KVA.example.:{echo.port}") as sock:
        sock.sendall(b"a-label")
        assert recv_exactly(sock, 7) == b"a-label"
    # curl (libidn2) maps the Unicode spelling to its A-label on the wire, as clients do;
    # the echo answers curl's request with itself, so only the tunnel's 200 matters here.
    subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-m", "5", "-p", "-x", f"http://127.0.0.1:{proxy.port}",
         f"http://BÜCHER.example:{echo.port}/"],
        timeout=30, check=False,
    )  # fmt: skip
    assert connect(proxy, f"bucher.example:{echo.port}")[0] == 403
    # A raw UTF-8 request-target is not HTTP (RFC 3986 reg-name is ASCII): 400.
    assert connect(proxy, f"bücher.example:{echo.port}".encode())[0] == 400
    wait_until(lambda: sum("status=200" in line for line in proxy.access_lines()) == 2)
    allowed = [line for line in proxy.access_lines() if "status=200" in line]
    assert all(f"target=xn--bcher-kva.example:{echo.port} " in line for line in allowed), allowed


def test_ip_literals_under_an_allow_list(start_proxy, echo, names):
    proxy = start_proxy("--allow-host", "exact.test")
    # An allow-list cannot be bypassed by dialling the address instead of the name.
    status, headers, _ = connect(proxy, f"127.0.0.1:{echo.port}")
    assert status == 403 and proxy_status(headers)[0][1]["error"] == "http_request_denied"
    assert connect(proxy, f"exact.test:{echo.port}")[0] == 200
    listed = start_proxy("--allow-host", "127.0.0.1", "--allow-host", "[::1]")
    assert connect(listed, f"127.0.0.1:{echo.port}")[0] == 200
    assert connect(listed, f"127.0.0.2:{echo.port}")[0] == 403
    assert connect(listed, f"exact.test:{echo.port}")[0] == 403


def test_an_allowed_name_still_has_its_addresses_checked(start_proxy, echo, names, dns_server):
    # The built-in destination policy (no --allow-dest): exact.test leads to loopback.
    proxy = start_proxy(
        "--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--hosts-file", str(names),
        "--dns-server", dns_server.address, "--allow-host", "exact.test", defaults=False,
    )  # fmt: skip
    status, headers, body = connect(proxy, f"exact.test:{echo.port}")
    assert status == 403 and b"not a public address" in body
    assert proxy_status(headers)[0][1]["error"] == "destination_ip_prohibited"
    assert echo.accepted == 0


def test_numeric_non_literals_are_400_before_any_rule(start_proxy, echo, names):
    # (As a pattern, 127.1 is refused at start: see test_bad_patterns_are_refused_at_start.)
    proxy = start_proxy("--deny-host", "exact.test")
    for target in ("127.1", "0x7f.1", "2130706433"):
        status, headers, _ = connect(proxy, f"{target}:{echo.port}")
        assert status == 400, target
        assert proxy_status(headers)[0][1]["error"] == "http_request_error"


@pytest.mark.parametrize(
    "value,message",
    [
        ("a*.example.com", "'*' is allowed only"),
        ("*.*.example.com", "'*' is allowed only"),
        ("example..com", "empty label"),
        ("example.com:443", "no port"),
        ("127.1", "ambiguous numeric host"),
        ("a" * 250 + ".com", "longer than 253"),
        ("10.0.0.0/8", "--allow-dest"),
    ],
)
def test_bad_patterns_are_refused_at_start(value, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "serve", "--listen", "127.0.0.1:0", "--deny-host", value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--deny-host" in result.stderr and message in result.stderr, result.stderr
    config = tmp_path / "gconnect.toml"
    config.write_text(f"allow-host = [{json.dumps(value)}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "check-config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0 and "allow-host" in result.stderr and message in result.stderr, result.stderr


def test_refused_names_never_reach_dns(start_proxy, echo, dns_server):
    for name in ("leak.test", "outside.test", "inside.test"):
        dns_server.records[name] = Record(a=["127.0.0.1"], ttl=0)
    proxy = start_proxy("--allow-host", ".inside.test", "--deny-host", "leak.test", "--allow-host", "leak.test")
    before = dict(dns_server.queries)
    assert connect(proxy, f"leak.test:{echo.port}")[0] == 403
    assert connect(proxy, f"outside.test:{echo.port}")[0] == 403
    assert connect(proxy, f"inside.test:{echo.port}")[0] == 200
    asked = {name for (name, _), count in dns_server.queries.items() if count > before.get((name, _), 0)}
    # The allowed name was looked up (so the counter works); the refused ones never were.
    assert any(name.startswith("inside.test") for name in asked), asked
    assert not any(name.startswith(("leak.test", "outside.test")) for name in asked), asked


class CountingParent:
    """A parent proxy that counts connections and refuses with its own Proxy-Status."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(
                    b"HTTP/1.1 403 Forbidden\r\nProxy-Status: parent.example; error=destination_ip_prohibited\r\n"
                    b"Content-Length: 0\r\n\r\n"
                )


def test_name_rules_apply_before_the_parent(start_proxy, echo, names):
    parent = CountingParent()
    try:
        proxy = start_proxy("--upstream", f"http://127.0.0.1:{parent.port}", "--deny-host", ".suffix.test")
        assert connect(proxy, f"a.b.suffix.test:{echo.port}")[0] == 403
        assert parent.accepted == 0
        # A name the rules let through goes to the parent, whose Proxy-Status comes first.
        status, headers, _ = connect(proxy, f"exact.test:{echo.port}")
        assert status == 403 and parent.accepted == 1
        members = proxy_status(headers)
        assert members[0] == ("parent.example", {"error": "destination_ip_prohibited"})
        assert members[1][0] == "gconnect" and members[1][1]["error"] == "http_request_denied"
    finally:
        parent.sock.close()


def auth_file(path: Path, *users: str) -> Path:
    path.write_text("".join(f"{u}:{bcrypt.hashpw(u.encode(), bcrypt.gensalt(4)).decode()}\n" for u in users))
    return path


def credentials(user: str) -> bytes:
    import base64

    return b"Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{user}".encode()) + b"\r\n"


def users_config(path: Path, names: Path, dns: str, auth: Path, echo_port: int) -> Path:
    path.write_text(
        f'listen = "127.0.0.1:0"\nallow-port = ["1-65535"]\nallow-dest = ["127.0.0.0/8"]\n'
        f'hosts-file = "{names}"\ndns-server = ["{dns}"]\nauth-file = "{auth}"\ndrain-timeout = 2\n'
        'deny-host = ["bad.suffix.test"]\n\n'
        '[users.ci-runner]\nallow-host = [".suffix.test"]\n\n'
        f'[users.ops]\ndeny-host = ["exact.test"]\nallow-port = ["{echo_port + 1}"]\n\n'
        "[users.ghost]\nallow-port = [22]\n"
    )
    return path


def test_per_user_tables_with_two_users(start_proxy, echo, names, tmp_path, dns_server):
    auth = auth_file(tmp_path / "htpasswd", "ci-runner", "ops", "plain")
    config = users_config(tmp_path / "gconnect.toml", names, dns_server.address, auth, echo.port)
    proxy = start_proxy("--config", str(config), defaults=False)
    port = echo.port

    def status(user: str, host: str) -> int:
        return connect(proxy, f"{host}:{port}", credentials(user))[0]

    # ci-runner: allow-host replaced; the global deny still holds.
    assert status("ci-runner", "a.b.suffix.test") == 200
    assert status("ci-runner", "exact.test") == 403
    assert status("ci-runner", "bad.suffix.test") == 403
    # ops: deny-host adds to the global one, allow-port replaces the global ports.
    assert status("ops", "other.test") == 403
    assert connect(proxy, f"other.test:{port}", credentials("ops"))[2].startswith(b"port ")
    # A user without a table gets the global policy.
    assert status("plain", "exact.test") == 200
    assert status("plain", "bad.suffix.test") == 403
    # Anonymous clients are asked for credentials before any rule is looked at.
    assert connect(proxy, f"bad.suffix.test:{port}")[0] == 407
    assert any("no user 'ghost' in auth-file" in line for line in proxy.lines)

    check = subprocess.run(
        [sys.executable, "-m", "gconnect", "check-config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    out = check.stdout
    assert '#   ci-runner: allow-host = [".suffix.test"]; deny-host = ["bad.suffix.test"]' in out
    assert '#   ops: allow-host = []; deny-host = ["bad.suffix.test", "exact.test"]; allow-port = ["' in out
    assert "[users.ops]" in out
    assert "no user 'ghost' in auth-file" in check.stderr
    assert "ci-runner" not in check.stderr and "'ops'" not in check.stderr


def test_report_mode_marks_counts_and_lets_through(start_proxy, echo, names):
    proxy = start_proxy(
        "--host-rules-mode", "report", "--allow-host", "exact.test", "--deny-host", "other.test",
        "--metrics-listen", "127.0.0.1:0", "--log-format", "json",
    )  # fmt: skip
    with open_tunnel(proxy, f"a.glob.test:{echo.port}") as sock:
        sock.sendall(b"through")
        assert recv_exactly(sock, 7) == b"through"
    assert connect(proxy, f"other.test:{echo.port}")[0] == 200
    assert connect(proxy, f"exact.test:{echo.port}")[0] == 200
    # Report mode covers the name rules only: the address policy is still enforced.
    assert connect(proxy, f"10.255.255.1:{echo.port}")[0] == 403
    wait_until(lambda: sum('"event":"close"' in line for line in proxy.access_lines()) >= 4)
    closes = [json.loads(line) for line in proxy.access_lines() if '"event":"close"' in line]
    marks = {c["target"].split(":")[0]: c.get("would_deny") for c in closes}
    assert marks == {"a.glob.test": "host_not_allowed", "other.test": "host_denied", "exact.test": None,
                     "10.255.255.1": "host_not_allowed"}  # fmt: skip
    values = scrape(metrics_url(proxy))
    assert values['gconnect_policy_would_deny_total{reason="host_not_allowed"}'] == 2
    assert values['gconnect_policy_would_deny_total{reason="host_denied"}'] == 1


def test_report_mode_text_log_field(start_proxy, echo, names):
    proxy = start_proxy("--host-rules-mode", "report", "--allow-host", "exact.test")
    assert connect(proxy, f"other.test:{echo.port}")[0] == 200
    line = proxy.wait_access("target=other.test")
    assert line.endswith(" would_deny=host_not_allowed")
    assert connect(proxy, f"exact.test:{echo.port}")[0] == 200
    assert "would_deny" not in proxy.wait_access("target=exact.test")


def test_sighup_changes_the_rules_under_open_tunnels(start_proxy, echo, names, tmp_path, dns_server):
    config = tmp_path / "gconnect.toml"
    common = (
        f'listen = "127.0.0.1:0"\nallow-port = ["1-65535"]\nallow-dest = ["127.0.0.0/8"]\n'
        f'hosts-file = "{names}"\ndns-server = ["{dns_server.address}"]\ndrain-timeout = 2\n'
    )
    config.write_text(common + 'allow-host = ["exact.test"]\n')
    proxy = start_proxy("--config", str(config), defaults=False)
    old = open_tunnel(proxy, f"exact.test:{echo.port}")
    assert connect(proxy, f"other.test:{echo.port}")[0] == 403

    config.write_text(common + 'allow-host = ["other.test"]\ndeny-host = ["exact.test"]\n')
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("policy reloaded (generation 1)" in line for line in proxy.lines))
    assert connect(proxy, f"other.test:{echo.port}")[0] == 200
    assert connect(proxy, f"exact.test:{echo.port}")[0] == 403
    # The tunnel opened under the old rules is not touched.
    old.sendall(b"still open")
    assert recv_exactly(old, 10) == b"still open"
    old.close()
