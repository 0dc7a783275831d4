"""Squid's helper protocol as bytes (gconnect/auth/helperproto.py): requests
escaped so nothing splits a line, answers parsed with channel IDs, pairs and
free text, and lines that are not the protocol refused."""

from __future__ import annotations

import pytest

from gconnect.auth.helperproto import HelperProtocolError, Reply, encode_request, parse_reply


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
