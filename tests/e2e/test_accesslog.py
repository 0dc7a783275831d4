"""The access log: JSON open/close lines, and rotation (move + SIGUSR1 reopen,
move noticed without a signal, copytruncate)."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from ..conftest import exchange, open_tunnel, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(60)


def json_lines(proxy) -> list[dict]:
    return [json.loads(line) for line in proxy.access_lines()]


def test_json_open_line_while_the_tunnel_lives_and_close_line_after(start_proxy, echo):
    proxy = start_proxy("--log-format", "json")
    sock = open_tunnel(proxy, f"echo.test:{echo.port}")
    opened = wait_until(lambda: [r for r in json_lines(proxy) if r["event"] == "open"])[0]
    assert opened["target"] == f"echo.test:{echo.port}"
    assert opened["addr"] == f"127.0.0.1:{echo.port}"
    assert opened["client"] == "{}:{}".format(*sock.getsockname())
    assert opened["user"] is None and opened["via"] is None
    assert opened["dns"] >= 0 and opened["connect"] >= 0
    assert "status" not in opened

    sock.sendall(b"12345")
    assert recv_exactly(sock, 5) == b"12345"
    sock.close()
    closed = wait_until(lambda: [r for r in json_lines(proxy) if r["event"] == "close"])[0]
    assert closed["id"] == opened["id"]
    assert closed["status"] == 200 and closed["reason"] == "client_eof"
    assert closed["up"] == 5 and closed["down"] == 5
    assert closed["duration"] >= closed["dns"] + closed["connect"]
    # The first echoed byte reached the client after the connect, before the end.
    assert closed["dns"] + closed["connect"] <= closed["first_byte"] <= closed["duration"]
    assert closed["time"].endswith("Z")


def test_json_refusal_is_one_close_line(start_proxy):
    proxy = start_proxy("--log-format", "json", "--deny-dest", "127.0.0.1/32")
    status, _, _ = exchange(proxy, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    assert status == 403
    record = wait_until(lambda: json_lines(proxy))[0]
    assert record["event"] == "close" and record["status"] == 403 and record["reason"] == "denied"
    assert record["addr"] == "-" and record["connect"] is None
    assert record["first_byte"] is None


def test_text_format_is_unchanged(proxy, echo):
    open_tunnel(proxy, echo.target).close()
    line = proxy.wait_access(f"target={echo.target}")
    assert "status=200 up=0 down=0" in line and "reason=client_eof" in line and "{" not in line


def tunnel_once(proxy, echo) -> None:
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"r")
        assert recv_exactly(sock, 1) == b"r"


def test_sigusr1_reopens_after_a_move(proxy, echo):
    tunnel_once(proxy, echo)
    proxy.wait_access(f"target={echo.target}")
    rotated = proxy.access_log.with_name(proxy.access_log.name + ".1")
    proxy.access_log.rename(rotated)
    proxy.proc.send_signal(signal.SIGUSR1)
    # The new file exists as soon as the signal is handled, before any tunnel.
    wait_until(proxy.access_log.exists)
    tunnel_once(proxy, echo)
    proxy.wait_access(f"target={echo.target}")
    assert len(rotated.read_text().splitlines()) == 1
    assert len(proxy.access_lines()) == 1


def test_a_moved_file_is_noticed_without_a_signal(proxy, echo):
    tunnel_once(proxy, echo)
    proxy.wait_access(f"target={echo.target}")
    rotated = proxy.access_log.with_name(proxy.access_log.name + ".1")
    proxy.access_log.rename(rotated)

    def logged_to_the_new_file() -> bool:
        tunnel_once(proxy, echo)
        return proxy.access_log.exists() and bool(proxy.access_lines())

    # The file's identity is checked at most once a second, on a write.
    wait_until(logged_to_the_new_file, timeout=10, interval=0.2)
    assert f"target={echo.target}" in rotated.read_text()


def test_copytruncate_keeps_writing_at_the_new_end(proxy, echo):
    tunnel_once(proxy, echo)
    proxy.wait_access(f"target={echo.target}")
    with open(proxy.access_log, "r+") as f:
        f.truncate(0)
    tunnel_once(proxy, echo)
    line = proxy.wait_access(f"target={echo.target}")
    # Append mode: no hole of NUL bytes where the old lines were.
    assert proxy.access_log.read_bytes().startswith(line[:10].encode())


def test_a_failed_reopen_keeps_the_old_file_and_never_writes_into_a_tunnel(start_proxy, echo, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    proxy = start_proxy("--access-log", str(logs / "access.log"))
    moved = tmp_path / "moved"
    logs.rename(moved)  # the path can no longer be opened: reopen must fail
    proxy.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: any("cannot reopen access log" in line for line in proxy.lines))
    # New tunnels take the lowest free descriptors. Had the old log descriptor
    # been closed, one of them would now receive access lines.
    for _ in range(3):
        with open_tunnel(proxy, echo.target) as sock:
            sock.sendall(b"exact")
            assert recv_exactly(sock, 5) == b"exact"
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""
    wait_until(lambda: len((moved / "access.log").read_text().splitlines()) == 3)
