"""Fixtures for the interoperability tests: third-party programs started for one test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gconnect.testing.process import free_port

from ..conftest import wait_listening

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


@pytest.fixture
def tinyproxy(tmp_path: Path):
    if not Path(TINYPROXY).exists():
        pytest.skip("tinyproxy is not installed (Debian: apt-get install tinyproxy)")
    port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    # No ConnectPort line: tinyproxy then allows CONNECT to any port.
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\nLogLevel Info\n"
        f'LogFile "{tmp_path / "tinyproxy.log"}"\nPidFile "{tmp_path / "tinyproxy.pid"}"\n'
    )
    proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
