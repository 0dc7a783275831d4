"""The access log's text lines, field by field, from records alone (no process)."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from gconnect.auth.identity import Identity
from gconnect.ops.accesslog import TextAccessLog
from gconnect.tunnel.forward.context import RequestRecord

pytestmark = pytest.mark.timeout(30)

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def lines(log: TextAccessLog, path) -> list[str]:
    log.flush()
    return path.read_text().splitlines()


def test_a_tunnel_line_has_every_optional_field_in_its_place(tmp_path):
    log = TextAccessLog(str(tmp_path / "access.log"))
    tunnel = SimpleNamespace(
        address=("2001:db8::1", 4000),
        user="alice",
        identity=Identity("alice", "htpasswd"),
        target="example.com:443",
        dialled="192.0.2.1:443",
        via=None,
        status=200,
        end_reason="client_eof",
        would_deny="rule",
        sni="example.com",
        sni_check="match",
        bytes_up=5,
        bytes_down=7,
        started=time.monotonic(),
        side=SimpleNamespace(protocol="h2", stream_id=3),
    )
    log.closed(tunnel)
    (line,) = lines(log, tmp_path / "access.log")
    assert re.fullmatch(
        STAMP + r" client=\[2001:db8::1\]:4000 user=alice target=example.com:443 addr=192.0.2.1:443 via=- "
        r"status=200 up=5 down=7 duration=\d+\.\d{3} reason=client_eof proto=h2 stream=3 "
        r"would_deny=rule auth=htpasswd sni=example.com sni_check=match",
        line,
    ), line


def test_forwarded_requests_of_one_connection_each_get_their_line(tmp_path):
    log = TextAccessLog(str(tmp_path / "access.log"))
    address = ("127.0.0.1", 5555)
    for method, path in ((b"GET", None), (b"POST", "/a b")):
        record = RequestRecord(address, method)
        record.target, record.status, record.end_reason, record.path = "origin.test:80", 200, "complete", path
        log.forwarded(record)
    other = RequestRecord(("127.0.0.2", 6666), b"-")
    log.forwarded(other)
    got = lines(log, tmp_path / "access.log")
    head = STAMP + r" client=127.0.0.1:5555 user=- target=origin.test:80 addr=-"
    head += r" via=- status=200 up=0 down=0 duration=\d+\.\d{3} reason=complete method="
    assert re.fullmatch(head + "GET scheme=http", got[0]), got[0]
    assert re.fullmatch(head + "POST scheme=http path=/a%20b", got[1]), got[1]
    # Another connection's address is formatted anew.
    other_line = r" client=127.0.0.2:6666 user=- target=- .* status=0 .* reason=error method=- scheme=http$"
    assert re.search(other_line, got[2]), got[2]
