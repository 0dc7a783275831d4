"""The TLS name check's cost: CPU per ClientHello in process, and instructions per tunnel.

Times :class:`~gconnect.tunnel.clienthello.ClientHelloReader` (fed whole, and in
1,460-byte segments) and :func:`~gconnect.tunnel.namecheck.check` on two
ClientHellos: the one Python's ssl sends (OpenSSL 3.0, ~520 bytes), and a
browser-like one of ~1.8 KiB (GREASE, an X25519MLKEM768 + X25519 key share, ECH
GREASE, 18 extensions). Process CPU time (``time.process_time``), the best of 7
repetitions, so other processes on a busy machine inflate it less than wall time.

With ``--instructions``, also the proxy's instructions per tunnel under
callgrind (``bench/instructions.py``'s method: a load on the machine does not
move them), ``--tls-name-check off`` against ``report``: each tunnel CONNECTs to
a name and sends Python's ClientHello naming it, which an echo target returns.

Run from the repository root::

    python bench/clienthello.py [--instructions]
"""

from __future__ import annotations

import ssl
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gconnect.tunnel.clienthello import ClientHelloReader
from gconnect.tunnel.hostrules import HostRules
from gconnect.tunnel.namecheck import check

NAME = "registry.npmjs.org"


def python_hello() -> bytes:
    session = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=NAME)
    try:
        session.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def browser_like_hello() -> bytes:
    def ext(kind: int, data: bytes) -> bytes:
        return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data

    name = NAME.encode()
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    shares = (0x11EC).to_bytes(2, "big") + (1216).to_bytes(2, "big") + bytes(1216) + b"\x00\x1d\x00\x20" + bytes(32)
    extensions = b"".join(
        [
            ext(0x0A0A, b""),
            ext(0x0000, len(entry).to_bytes(2, "big") + entry),
            ext(0x0017, b""),
            ext(0xFF01, b"\x00"),
            ext(0x000A, b"\x00\x08\x0a\x0a\x11\xec\x00\x1d\x00\x17"),
            ext(0x000B, b"\x01\x00"),
            ext(0x0023, b""),
            ext(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
            ext(0x0005, b"\x01\x00\x00\x00\x00"),
            ext(0x000D, b"\x00\x10" + bytes(16)),
            ext(0x0012, b""),
            ext(0x0033, len(shares).to_bytes(2, "big") + shares),
            ext(0x002D, b"\x01\x01"),
            ext(0x002B, b"\x06\x0a\x0a\x03\x04\x03\x03"),
            ext(0x001B, b"\x02\x00\x02"),
            ext(0x4469, b"\x00\x03\x02h2"),
            ext(0xFE0D, bytes(250)),
            ext(0x1A1A, b"\x00"),
        ]
    )
    body = b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + b"\x00\x20" + bytes(32) + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


def best(function: object, number: int = 20_000) -> float:
    """Microseconds of process CPU per call, the best of 7 repetitions."""
    times = timeit.repeat(function, number=number, repeat=7, timer=time.process_time)  # type: ignore[arg-type]
    return min(times) / number * 1e6


def instructions(tunnels: int = 200, extra: int = 1000) -> None:
    """Instructions per tunnel, the check off and in report mode (see the module docstring)."""
    import tempfile

    from bench.instructions import count
    from bench.pools import REPO, echo_server

    port = echo_server()
    work = Path(tempfile.mkdtemp(prefix="gconnect-namecheck-"))
    hosts = work / "hosts"
    hosts.write_text(f"127.0.0.1 {NAME}\n")
    target = f"{NAME}:{port}"
    print("| --tls-name-check | instructions per tunnel |")
    print("|---|---:|")
    for mode in ("off", "report"):
        args = ("--hosts-file", str(hosts), "--tls-name-check", mode, "--tls-name-check-ports", str(port))
        small = count(REPO, target, tunnels, work / f"{mode}-small.out", args, python_hello())
        large = count(REPO, target, tunnels + extra, work / f"{mode}-large.out", args, python_hello())
        print(f"| {mode} | {(large - small) // extra:,} |")


def main() -> None:
    if "--instructions" in sys.argv:
        instructions()
    rules = HostRules([".npmjs.org"], [])
    print("| ClientHello | bytes | feed whole µs | feed 1,460-byte segments µs | check() µs |")
    print("|---|---|---|---|---|")
    for label, data in (
        ("Python ssl (OpenSSL 3.0)", python_hello()),
        ("browser-like, PQ key share", browser_like_hello()),
    ):
        segments = [data[i : i + 1460] for i in range(0, len(data), 1460)]

        def in_segments(segments: list[bytes] = segments) -> None:
            reader = ClientHelloReader()
            for segment in segments:
                reader.feed(segment)

        whole = best(lambda data=data: ClientHelloReader().feed(data))
        split = best(in_segments)
        checked = best(lambda data=data: check(data, lambda: None, NAME, False, rules))
        print(f"| {label} | {len(data)} | {whole:.1f} | {split:.1f} | {checked:.1f} |")


if __name__ == "__main__":
    main()
