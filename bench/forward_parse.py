"""CPU per forwarded request's heads, in process: ``python -m bench.forward_parse``.

Parses a small absolute-form GET with the forwarding parser, renders the head
sent on, parses a small response and renders the head the client gets: the
grammar's share of a forwarded request, without sockets. CPU time
(process_time), minimum and median of seven runs of 5,000.

``--instructions`` counts instead (callgrind, user space): the keep-alive GET
and response of :mod:`bench.forward_instructions`, read and written as the
exchange does (one request parser renewed per request, a response parser per
response), in two runs of ``--loops`` and three times as many; the difference
over the extra loops is one request's. ``--baseline DIR`` counts another tree
the same way. Not a test.
"""

from __future__ import annotations

import argparse
import inspect
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gconnect.tunnel.forward.render import Outgoing, max_forwards, request_head, response_head
from gconnect.tunnel.forward.request import ForwardRequestParser
from gconnect.tunnel.forward.response import ResponseParser

REQUEST = (
    b"GET http://127.0.0.1:8080/small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n"
    b"Date: Sun, 06 Dec 2026 23:47:08 GMT\r\n\r\n" + b"x" * 100
)
#: What bench.forward's client and origin send.
BENCH_REQUEST = b"GET http://127.0.0.1:8080/small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BENCH_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
OUT = Outgoing(via_name="gconnect", client="", absolute=False, credentials="", received="")
SUMMARY = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)
_CHILD_IMPORTS = f"""
from gconnect.tunnel.forward.render import Outgoing, max_forwards, request_head, response_head
from gconnect.tunnel.forward.request import ForwardRequestParser
from gconnect.tunnel.forward.response import ResponseParser
BENCH_REQUEST = {BENCH_REQUEST!r}
BENCH_RESPONSE = {BENCH_RESPONSE!r}
"""


def one() -> None:
    request = ForwardRequestParser(65536).feed(REQUEST)
    assert request is not None
    request_head(request, OUT, True)
    response = ResponseParser(65536, False).feed(RESPONSE)
    assert response is not None
    response_head(response, "gconnect", "1.1", True)


def keep_alive_loop(n: int) -> None:
    """*n* requests and responses as one keep-alive connection's exchange reads and writes them."""
    parser = ForwardRequestParser(65536)
    out = Outgoing(via_name="gconnect", received="1.1")
    for _ in range(n):
        request = parser.feed(BENCH_REQUEST)
        assert request is not None
        max_forwards(request)
        request_head(request, out, request.keep_alive)
        response = ResponseParser(65536, request.method == b"HEAD").feed(BENCH_RESPONSE)
        assert response is not None
        response_head(response, "gconnect", request.version, request.keep_alive and response.keep_alive)
        parser = parser.renew(request)


def instructions(tree: Path, loops: int) -> int:
    """User-space instructions per request of :func:`keep_alive_loop` in *tree*."""
    counts = []
    for n in (loops, 3 * loops):
        with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
            # The loop's own source, so a baseline tree runs it with its own gconnect.
            code = f"{_CHILD_IMPORTS}\n{inspect.getsource(keep_alive_loop)}\nkeep_alive_loop({n})"
            # -B: neither run writes bytecode, so both pay the same imports.
            valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}"]
            command = [*valgrind, sys.executable, "-B", "-c", code]
            subprocess.run(command, cwd=tree, env={"PYTHONPATH": str(tree)}, check=True, capture_output=True)
            match = SUMMARY.search(Path(out.name).read_text(errors="replace"))
            if match is None:
                raise RuntimeError(f"no summary in callgrind's output for {tree}")
            counts.append(int(match.group(1)))
    return round((counts[1] - counts[0]) / (2 * loops))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind")
    parser.add_argument("--loops", type=int, default=1000)
    parser.add_argument("--baseline", help="another gconnect tree (a directory) to count too")
    options = parser.parse_args()
    if options.instructions:
        trees = {"this tree": Path(__file__).resolve().parents[1]}
        if options.baseline:
            trees["baseline"] = Path(options.baseline)
        for label, tree in trees.items():
            print(f"{label}: {instructions(tree, options.loops):,} instructions per request's heads", flush=True)
        return
    runs = []
    for _ in range(7):
        start = time.process_time()
        for _ in range(5000):
            one()
        runs.append((time.process_time() - start) / 5000 * 1e6)
    print(f"µs of CPU per request and response head: min {min(runs):.1f}, median {statistics.median(runs):.1f}")


if __name__ == "__main__":
    main()
