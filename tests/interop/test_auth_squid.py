"""Debian squid's own basic_ncsa_auth as gconnect's --auth-helper, against an
htpasswd file, alone and after gconnect's own htpasswd provider."""

from __future__ import annotations

import os
import shlex

import pytest

from ..conftest import exchange
from ..e2e.test_auth import auth_header, connect_head
from ..e2e.test_auth_helpers import tunnel_echo
from ..unit.test_auth import bcrypt_line

pytestmark = pytest.mark.timeout(90)

NCSA = "/usr/lib/squid/basic_ncsa_auth"


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
