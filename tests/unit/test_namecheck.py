"""The TLS name check's decision (a pure function) and its configuration: the
option, the config file's key and per-user key, and the policy's mode per port."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gconnect.config import Config, UserRules
from gconnect.ops import configfile
from gconnect.ops.cli import main
from gconnect.ops.options import config_from_file
from gconnect.ops.workermetrics import add_counters, empty_snapshot
from gconnect.tunnel.clienthello import ClientHello
from gconnect.tunnel.hostrules import HostRules
from gconnect.tunnel.namecheck import OUTCOMES, PASSING, NameCheck, check, decide, refuses
from gconnect.tunnel.policy import Policy

from .test_clienthello import python_hello

pytestmark = pytest.mark.timeout(60)

RULES = HostRules([".allowed.test"], ["denied.allowed.test"])


def hello(name: str | None, ech: bool = False) -> ClientHello:
    return ClientHello(name, ech, 100)


@pytest.mark.parametrize(
    "name,ech,host,ip_literal,rules,expected",
    [
        ("a.test", False, "a.test", False, None, "match"),
        ("a.test", True, "a.test", False, RULES, "match"),  # GREASE ECH: the real name outside
        ("b.test", False, "a.test", False, None, "mismatch"),
        ("b.test", True, "a.test", False, None, "ech_mismatch"),
        (None, False, "a.test", False, RULES, "no_sni"),
        ("x.allowed.test", False, "192.0.2.7", True, RULES, "ip_literal_allowed"),
        ("denied.allowed.test", False, "192.0.2.7", True, RULES, "ip_literal_denied"),
        ("other.test", False, "192.0.2.7", True, RULES, "ip_literal_denied"),
        ("other.test", False, "2001:db8::1", True, None, "ip_literal_allowed"),
        (None, False, "192.0.2.7", True, RULES, "ip_literal_no_sni"),
        ("192.0.2.7", False, "192.0.2.7", True, RULES, "match"),  # an IP in server_name, against RFC 6066
        ("192.0.2.8", False, "192.0.2.7", True, RULES, "ip_literal_denied"),
    ],
)
def test_decide(name, ech, host, ip_literal, rules, expected):
    assert decide(hello(name, ech), host, ip_literal, rules) == expected


def test_actions_per_mode():
    assert PASSING < set(OUTCOMES)
    for outcome in OUTCOMES:
        assert not refuses(outcome, "off")
        assert not refuses(outcome, "report")
        assert refuses(outcome, "enforce") == (outcome not in PASSING)
    assert sorted(PASSING) == ["eof", "ip_literal_allowed", "ip_literal_no_sni", "match"]


def test_policy_mode_per_port_and_user():
    config = Config(tls_name_check_ports=((443, 443), (8443, 8444)), users=(UserRules("ci", tls_name_check="enforce"),))
    policy = Policy(config)
    assert Config().tls_name_check == "report"
    assert [policy.name_check_mode(p) for p in (443, 8443, 8444, 8445, 80)] == ["report"] * 3 + ["off"] * 2
    assert policy.users["ci"].name_check_mode(8443) == "enforce"
    assert policy.users["ci"].name_check_mode(22) == "off"
    assert Policy(Config(tls_name_check="off")).name_check_mode(443) == "off"
    with pytest.raises(ValueError):
        Config(tls_name_check="strict")
    with pytest.raises(ValueError):
        Config(users=(UserRules("ci", tls_name_check="strict"),))


def test_config_file_and_user_table(tmp_path: Path):
    path = tmp_path / "gconnect.toml"
    path.write_text(
        'tls-name-check = "enforce"\ntls_name_check_ports = [443, "8000-8080"]\n\n'
        '[users.ci]\ntls-name-check = "report"\nallow-host = [".example"]\n'
    )
    config = config_from_file(str(path), {})
    assert config.tls_name_check == "enforce"
    assert config.tls_name_check_ports == ((443, 443), (8000, 8080))
    assert config.users[0].tls_name_check == "report"
    assert config.for_user(config.users[0]).tls_name_check == "report"
    rendered = configfile.render(config)
    assert 'tls-name-check = "enforce"' in rendered
    assert 'tls-name-check-ports = ["443", "8000-8080"]' in rendered
    assert '[users.ci]\nallow-host = [".example"]\ntls-name-check = "report"' in rendered
    again = tmp_path / "again.toml"
    again.write_text(rendered)
    assert config_from_file(str(again), {}) == config


@pytest.mark.parametrize(
    "text,message",
    [
        ('tls-name-check = "strict"\n', "tls-name-check"),
        ('[users.ci]\ntls-name-check = ["enforce"]\n', "takes one value"),
        ('[users.ci]\ntls-name-check = "strict"\n', "tls-name-check"),
    ],
)
def test_config_file_refusals(tmp_path: Path, text: str, message: str):
    path = tmp_path / "gconnect.toml"
    path.write_text(text)
    with pytest.raises((configfile.ConfigFileError, click.ClickException)) as info:
        config_from_file(str(path), {})
    assert message in str(info.value)


def test_option_on_the_command_line():
    result = CliRunner().invoke(main, ["serve", "--tls-name-check", "bogus"])
    assert result.exit_code == 2
    assert "--tls-name-check" in result.output


def scripted(*chunks: bytes | None):
    """A receive() answering *chunks* in turn (None: the deadline passed, b"": EOF)."""
    pending = list(chunks)
    return lambda: pending.pop(0)


def test_check_reads_one_hello_and_stops_there():
    data = python_hello("a.test")
    early, rest = data[:10], data[10:]
    pieces = [rest[i : i + 50] for i in range(0, len(rest), 50)]
    pieces[-1] += b"\x17\x03\x03\x00\x01x"  # early data right behind it: passed on, not read
    result = check(early, scripted(*pieces), "a.test", False, None)
    assert result == NameCheck("match", "a.test")
    assert result.tls_client


@pytest.mark.parametrize(
    "early,chunks,outcome",
    [
        (b"", [None], "timeout"),
        (b"\x16\x03", [None], "timeout"),
        (b"\x16\x03", [b""], "eof"),
        (b"", [b""], "eof"),
        (b"SSH-2.0-x\r\n", [], "not_tls"),
        (b"", [b"\x16\x03\x01\x00\x00"], "malformed"),
    ],
)
def test_check_without_a_hello(early, chunks, outcome):
    result = check(early, scripted(*chunks), "a.test", False, None)
    assert result == NameCheck(outcome, None)
    assert not result.tls_client
    assert refuses(outcome, "enforce") == (outcome != "eof")


def test_name_check_counters_are_summed_across_workers():
    one = {**empty_snapshot(), "tls_name_checks": [["match", "pass", 3], ["mismatch", "close", 1]]}
    two = {**empty_snapshot(), "tls_name_checks": [["mismatch", "close", 2]]}
    old = {k: v for k, v in empty_snapshot().items() if k != "tls_name_checks"}  # a worker of an older release
    total = empty_snapshot()
    for snap in (one, two, old):
        add_counters(total, snap)
    assert total["tls_name_checks"] == [["match", "pass", 3], ["mismatch", "close", 3]]
