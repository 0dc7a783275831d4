"""The TOML config file in-process: keys, precedence, errors with lines, check-config
(SIGHUP reloads: tests/e2e/test_configfile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gconnect.ops import configfile
from gconnect.ops.cli import main, serve
from gconnect.ops.options import build_config, config_from_file

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


def test_a_users_forward_port_replaces_the_global_one_for_that_user(tmp_path):
    from gconnect.errors import PolicyDeniedError
    from gconnect.tunnel.policy import Policy

    path = write(
        tmp_path,
        'forward-port = ["80"]\n\n[users.ci]\nforward-port = ["8080", "9000-9001"]\n\n[users.ops]\nallow-port = [22]\n',
    )
    config = config_from_file(str(path), {})
    policy = Policy(config)
    ci, ops = policy.for_identity("ci", None), policy.for_identity("ops", None)
    for port in (8080, 9001):
        ci.check_forward_port(port)
    for refused, port in ((ci, 80), (policy, 8080), (ops, 8080)):
        with pytest.raises(PolicyDeniedError, match="--forward-port"):
            refused.check_forward_port(port)
    ops.check_forward_port(80)  # a table without forward-port keeps the global one
    # CONNECT's ports are a separate table: ci's forward-port does not widen them.
    with pytest.raises(PolicyDeniedError):
        ci.check_port(8080)
    rendered = configfile.render(config)
    assert '[users.ci]\nforward-port = ["8080", "9000-9001"]' in rendered
    assert '[users.ops]\nallow-port = ["22"]\n' in rendered + "\n"
    assert config_from_file(str(write(tmp_path, rendered, "again.toml")), {}) == config
