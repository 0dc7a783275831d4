"""The TOML config file: keys, precedence, errors with lines, check-config,
and SIGHUP reloading the policy without touching open tunnels."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gconnect.ops import configfile
from gconnect.ops.cli import main, serve
from gconnect.ops.options import build_config, config_from_file

from .conftest import exchange, open_tunnel, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(60)


def write(tmp_path: Path, text: str, name: str = "gconnect.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_values_become_the_config(tmp_path):
    path = write(
        tmp_path,
        'listen = ["127.0.0.1:8080", "[::1]:8080"]\n'
        'allow-port = [443, "8000-8999"]\n'
        'allow_dest = "10.0.0.0/8"\n'
        "idle-timeout = 60\n"
        "max-clients = 100\n"
        'log-format = "json"\n',
    )
    config = config_from_file(str(path), {})
    assert config.listen == (("127.0.0.1", 8080), ("::1", 8080))
    assert config.allow_port == ((443, 443), (8000, 8999))
    assert [str(n) for n in config.allow_dest] == ["10.0.0.0/8"]
    assert config.idle_timeout == 60.0 and config.max_clients == 100 and config.log_format == "json"
    # Unset keys keep their defaults.
    assert config.connect_timeout == 30.0


def test_command_line_overrides_the_file(tmp_path):
    path = write(tmp_path, "idle-timeout = 60\nmax-clients = 100\n")
    ctx = serve.make_context("serve", ["--config", str(path), "--idle-timeout", "5"])
    config = build_config(**ctx.params)
    assert config.idle_timeout == 5.0
    assert config.max_clients == 100


@pytest.mark.parametrize(
    "text,message",
    [
        ("idle-timeout = 60\nallow-prot = 443\n", "gconnect.toml:2: unknown key 'allow-prot'"),
        ('# ports\n\nallow-port = ["443", "0"]\n', "gconnect.toml:3: allow-port: "),
        ("max_clients = 0\n", "gconnect.toml:1: max_clients: "),
        ('relay = "fast"\n', "gconnect.toml:1: relay: "),
        ('listen = "localhost"\n', "gconnect.toml:1: listen: "),
        ('upstream = "socks5://p:1080"\n', "gconnect.toml:1: upstream: "),
        ("allow-port = 443\nallow_port = 8443\n", "given twice"),
        ("idle-timeout = [1, 2]\n", "takes one value"),
        ("[serve]\nlisten = 1\n", "gconnect.toml:1: unknown key 'serve'"),
        ("idle-timeout = 1\n[listen]\nx = 1\n", "gconnect.toml:2: 'listen' must be a value, not a table"),
        ("listen = \n", "gconnect.toml: "),
    ],
)
def test_bad_files_name_the_key_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code != 0
    assert message in result.output, result.output
    # serve refuses the same file before binding anything.
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_rules_between_keys_are_checked_on_the_whole_file(tmp_path):
    path = write(tmp_path, 'upstream-for = ["*.corp.test"]\n')
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code != 0 and "upstream_for needs upstream" in result.output


def test_check_config_prints_what_reads_back_the_same(tmp_path):
    path = write(
        tmp_path,
        'listen = ["[::1]:3129"]\nallow-port = ["443", "8000-8999"]\ndeny-dest = ["10.1.0.0/16"]\n'
        'upstream = "http://u:secret@proxy.test:3128"\nupstream-for = ["*.Corp.test", "10.0.0.0/8"]\n'
        'metrics-listen = "127.0.0.1:9100"\nproxy-protocol = true\nproxy-protocol-from = "10.9.0.0/16"\n',
    )
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "secret" not in result.output and 'upstream = "http://u:***@proxy.test:3128"' in result.output
    assert 'upstream-for = ["*.corp.test", "10.0.0.0/8"]' in result.output
    again = write(tmp_path, result.output.replace("u:***@", "u:secret@"), "again.toml")
    assert config_from_file(str(again), {}) == config_from_file(str(path), {})


def test_render_covers_every_field():
    from gconnect.config import Config

    rendered = configfile.render(Config())
    # users and groups are [users.NAME] and [groups.NAME] tables, none here.
    assert rendered.count("\n") == len(Config.__dataclass_fields__) - 2


def serve_with_file(start_proxy, path: Path):
    return start_proxy("--listen", "127.0.0.1:0", "--config", str(path), defaults=False)


def policy_file(path: Path, hosts_file: Path, dns: str, port: int) -> None:
    path.write_text(
        f'allow-port = ["{port}"]\nallow-dest = ["127.0.0.0/8"]\n'
        f'hosts-file = "{hosts_file}"\ndns-server = ["{dns}"]\nheader-timeout = 5\ndrain-timeout = 2\n'
    )


def test_serve_reads_the_file(start_proxy, echo, tmp_path, hosts_file, dns_server):
    path = tmp_path / "gconnect.toml"
    policy_file(path, hosts_file, dns_server.address, echo.port)
    proxy = serve_with_file(start_proxy, path)
    with open_tunnel(proxy, f"echo.test:{echo.port}") as sock:
        sock.sendall(b"from file")
        assert recv_exactly(sock, 9) == b"from file"


def test_sighup_reloads_policy_and_keeps_open_tunnels(start_proxy, echo, tmp_path, hosts_file, dns_server):
    path = tmp_path / "gconnect.toml"
    policy_file(path, hosts_file, dns_server.address, echo.port)
    proxy = serve_with_file(start_proxy, path)
    old = open_tunnel(proxy, echo.target)

    policy_file(path, hosts_file, dns_server.address, echo.port + 1)  # the echo port no longer allowed
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("policy reloaded (generation 1)" in line for line in proxy.lines))
    status, _, body = exchange(proxy, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 403 and f"port {echo.port} is not allowed".encode() in body
    # The tunnel opened under the old policy still works, and the listener was never closed.
    old.sendall(b"still here")
    assert recv_exactly(old, 10) == b"still here"
    old.close()

    # A broken file is refused with its reason and the running policy stays.
    path.write_text("allow-port = [0]\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any("keeping the current configuration" in line and "allow-port" in line for line in proxy.lines)
    )
    status, _, _ = exchange(proxy, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 403

    # Back to the echo port: allowed again.
    policy_file(path, hosts_file, dns_server.address, echo.port)
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("policy reloaded (generation 2)" in line for line in proxy.lines))
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"


def test_sighup_keeps_command_line_options_and_names_restart_only_changes(
    start_proxy, echo, tmp_path, hosts_file, dns_server
):
    path = tmp_path / "gconnect.toml"
    policy_file(path, hosts_file, dns_server.address, echo.port + 1)
    # --allow-port on the command line wins over the file, before and after reload.
    proxy = start_proxy(
        "--listen", "127.0.0.1:0", "--config", str(path), "--allow-port", str(echo.port), defaults=False
    )
    path.write_text(path.read_text() + "max-clients = 7\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("policy reloaded" in line for line in proxy.lines))
    assert any("need a restart" in line and "max_clients" in line for line in proxy.lines)
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"cli")
        assert recv_exactly(sock, 3) == b"cli"


def test_sighup_without_a_file_is_logged(proxy):
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("nothing to reload" in line for line in proxy.lines))


def test_check_config_from_the_real_cli(tmp_path):
    path = write(tmp_path, 'listen = "127.0.0.1:3999"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert 'listen = ["127.0.0.1:3999"]' in result.stdout
