"""The ClientHellos of real clients that are programs of their own, captured
on loopback and read by the reader: openssl s_client (with and without a
server name) and Chromium (GREASE, an X25519MLKEM768 key share, GREASE ECH)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import pytest

from gconnect.tunnel.clienthello import ClientHello, ClientHelloReader

from ..conftest import chromium_command
from ..unit.test_clienthello import read, records

pytestmark = pytest.mark.timeout(120)


def openssl_hello(*args: str) -> bytes:
    """The first flight of ``openssl s_client`` *args*, captured by a listener on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got: list[bytes] = []

    def capture() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        reader = ClientHelloReader()
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk or reader.feed(chunk) is not None:
                    break
        got.append(bytes(reader.buffer))

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    thread.join(10)
    listener.close()
    return got[0]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_s_client():
    hello = openssl_hello("-servername", "Other.Test.")
    assert read(hello, 1).server_name == "other.test"
    assert read(openssl_hello("-noservername")).server_name is None


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_chromium_client_hello(tmp_path):
    """Chromium's own first flight, captured on loopback: GREASE, an X25519MLKEM768
    key share (so over 1.5 KiB), a GREASE ECH extension with the real name outside."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    port = listener.getsockname()[1]
    command = chromium_command(
        tmp_path, "--host-resolver-rules=MAP chromium.test 127.0.0.1", "--dump-dom", f"https://chromium.test:{port}/"
    )
    browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = listener.accept()
        conn.settimeout(10)
        reader = ClientHelloReader()
        with conn:
            result = None
            while result is None:
                chunk = conn.recv(65536)
                assert chunk
                result = reader.feed(chunk)
    finally:
        browser.kill()
        browser.wait(30)
        listener.close()
    hello = bytes(reader.buffer[: result.consumed])
    assert len(hello) > 1500
    for step in (0, 1, 1460):
        assert read(hello, step) == ClientHello("chromium.test", True, len(hello))
    assert read(records(hello[5:], 512), 100).server_name == "chromium.test"
