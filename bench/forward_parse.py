"""CPU per forwarded request's heads, in process: ``python -m bench.forward_parse``.

Parses a small absolute-form GET with the forwarding parser, renders the head
sent on, parses a small response and renders the head the client gets: the
grammar's share of a forwarded request, without sockets. CPU time
(process_time), minimum and median of seven runs of 5,000. Not a test.
"""

from __future__ import annotations

import statistics
import time

from gconnect.tunnel.forward.render import Outgoing, request_head, response_head
from gconnect.tunnel.forward.request import ForwardRequestParser
from gconnect.tunnel.forward.response import ResponseParser

REQUEST = (
    b"GET http://127.0.0.1:8080/small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n"
    b"Date: Sun, 06 Dec 2026 23:47:08 GMT\r\n\r\n" + b"x" * 100
)
OUT = Outgoing(via_name="gconnect", client="", absolute=False, credentials="", received="")


def one() -> None:
    request = ForwardRequestParser(65536).feed(REQUEST)
    assert request is not None
    request_head(request, OUT, True)
    response = ResponseParser(65536, False).feed(RESPONSE)
    assert response is not None
    response_head(response, "gconnect", "1.1", True)


def main() -> None:
    runs = []
    for _ in range(7):
        start = time.process_time()
        for _ in range(5000):
            one()
        runs.append((time.process_time() - start) / 5000 * 1e6)
    print(f"µs of CPU per request and response head: min {min(runs):.1f}, median {statistics.median(runs):.1f}")


if __name__ == "__main__":
    main()
