"""The command line in-process: option/config parity, parameter parsing, usage errors
(the process lifecycle: tests/e2e/test_cli.py)."""

from __future__ import annotations

import dataclasses
import ipaddress

import click
import pytest
from click.testing import CliRunner

from gconnect import __version__
from gconnect.config import Config
from gconnect.ops.cli import main, serve
from gconnect.ops.options import FILE_ONLY, build_config
from gconnect.ops.paramtypes import parse_hostport, parse_port_range

pytestmark = pytest.mark.timeout(60)


def test_every_config_field_has_an_option_of_the_same_name():
    # --config says where the other options come from; it is not a setting itself.
    options = {p.name for p in serve.params if isinstance(p, click.Option)} - {"config"}
    # The config file's [users.NAME] tables are the one setting with no option.
    fields = {f.name for f in dataclasses.fields(Config)} - set(FILE_ONLY)
    assert FILE_ONLY == ("users",)
    assert options == fields


def test_every_option_has_a_gconnect_envvar():
    for param in serve.params:
        assert param.envvar == "GCONNECT_" + param.name.upper()


def test_defaults_are_safe():
    config = build_config(**serve.make_context("serve", []).params)
    assert config.listen == (("127.0.0.1", 3128),)
    assert config.allow_port == ((443, 443),)
    assert config.allow_dest == ()
    assert config.idle_timeout == 900.0


@pytest.mark.parametrize(
    "text,expected",
    [("127.0.0.1:3128", ("127.0.0.1", 3128)), ("[::1]:8080", ("::1", 8080)), ("localhost:1", ("127.0.0.1", 1))],
)
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "::1:80", "[::1", "host.test:80", "127.0.0.1:70000", "1.2.3.4:x"])
def test_parse_hostport_rejects(text):
    with pytest.raises(click.BadParameter):
        parse_hostport(text)


def test_dns_server_port_defaults_to_53():
    assert parse_hostport("127.0.0.1", default_port=53) == ("127.0.0.1", 53)
    assert parse_hostport("::1", default_port=53) == ("::1", 53)


@pytest.mark.parametrize("text,expected", [("443", (443, 443)), ("8000-8999", (8000, 8999))])
def test_parse_port_range(text, expected):
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["0", "70000", "9-8", "a", "1-", "-5"])
def test_parse_port_range_rejects(text):
    with pytest.raises(click.BadParameter):
        parse_port_range(text)


def test_version_and_help():
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--allow-port" in result.output


def test_bad_option_value_is_a_usage_error():
    result = CliRunner().invoke(main, ["serve", "--allow-port", "0"])
    assert result.exit_code == 2
    assert "ports are 1-65535" in result.output


def test_build_config_parses_networks():
    params = serve.make_context("serve", ["--allow-dest", "10.0.0.0/8", "--deny-dest", "10.1.0.0/16"]).params
    config = build_config(**params)
    assert config.allow_dest == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    "option,text,value",
    [
        ("listen", "[::1]:3128", ("::1", 3128)),
        ("dns_server", "10.0.0.1", ("10.0.0.1", 53)),
        ("allow_port", "8000-8999", (8000, 8999)),
        ("allow_port", "443", (443, 443)),
        ("deny_dest", "10.1.2.3/16", ipaddress.ip_network("10.1.0.0/16")),
        ("upstream_for", "*.Corp.Example", "*.corp.example"),
        ("upstream_for", "10.0.0.0/8", "10.0.0.0/8"),
        ("metrics_listen", "", None),
        ("upstream", "", None),
    ],
)
def test_parameter_types_convert_and_render_back(option, text, value):
    from gconnect.ops.options import BY_NAME
    from gconnect.ops.paramtypes import to_text

    param_type = BY_NAME[option].type
    assert param_type.convert(text, None, None) == value
    assert param_type.convert(to_text(param_type, value), None, None) == value
    assert param_type.convert(value, None, None) == value  # converted values pass through


def test_upstream_renders_back_with_its_password():
    from gconnect.config import ParentProxy
    from gconnect.ops.paramtypes import UpstreamURL

    parent = UpstreamURL().convert("http://us%40er:p%3As%20s@[::1]:3129", None, None)
    assert parent == ParentProxy("::1", 3129, "us@er", "p:s s")
    assert UpstreamURL().convert(UpstreamURL().to_text(parent), None, None) == parent


def test_a_bad_value_names_the_option():
    result = CliRunner().invoke(main, ["serve", "--dns-server", "[::1"])
    assert result.exit_code == 2 and "--dns-server" in result.output and "missing ']'" in result.output
