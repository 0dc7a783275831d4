"""Plain HTTP forwarding with the tools that need it most: apt's own http
method (apt-helper, which pipelines) and pip against a local index served
over http:// by ``python -m http.server``."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gconnect.testing.process import free_port

from ..conftest import ProxyProcess, wait_listening

pytestmark = pytest.mark.timeout(120)

APT_HELPER = "/usr/lib/apt/apt-helper"


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """``python -m http.server`` over a directory on loopback."""
    root = tmp_path / "www"
    root.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening("127.0.0.1", port)
        yield root, port
    finally:
        server.terminate()
        server.wait(10)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


@pytest.mark.skipif(not os.path.exists(APT_HELPER), reason="apt-helper not installed")
def test_apt_helper_downloads_through_the_proxy(start_proxy, web_root, tmp_path: Path) -> None:
    root, port = web_root
    proxy: ProxyProcess = start_proxy("--forward-port", "1-65535")
    files = {f"f{i}.bin": os.urandom(200_000 + i) for i in range(3)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    args = [
        APT_HELPER,
        "-o",
        f"Acquire::http::Proxy=http://{proxy.host}:{proxy.port}/",
        "-o",
        "APT::Sandbox::User=root",
    ]
    args.append("download-file")
    for name, data in files.items():
        args += [f"http://127.0.0.1:{port}/{name}", str(tmp_path / name), "SHA256:" + hashlib.sha256(data).hexdigest()]
    result = subprocess.run(args, capture_output=True, env=_clean_env(), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, data in files.items():
        assert (tmp_path / name).read_bytes() == data
        assert "status=200" in proxy.wait_access(f"target=127.0.0.1:{port}")


def _wheel(directory: Path, name: str, version: str) -> Path:
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
        wheel.writestr(f"{dist}/RECORD", record)
    return path


def test_pip_download_from_an_http_index(start_proxy, web_root, tmp_path: Path) -> None:
    root, port = web_root
    proxy: ProxyProcess = start_proxy("--forward-port", "1-65535")
    (root / "files").mkdir()
    wheel = _wheel(root / "files", "gconnecttestpkg", "1.0")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "simple" / "gconnecttestpkg").mkdir(parents=True)
    (root / "simple" / "gconnecttestpkg" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>'
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"]
    cmd += ["--index-url", f"http://127.0.0.1:{port}/simple", "--trusted-host", "127.0.0.1"]
    cmd += ["--proxy", f"http://{proxy.host}:{proxy.port}", "-d", str(out), "gconnecttestpkg"]
    result = subprocess.run(cmd, capture_output=True, env=_clean_env(), timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / wheel.name).read_bytes() == wheel.read_bytes()
    line = proxy.wait_access("method=GET")
    assert f"target=127.0.0.1:{port}" in line and "status=200" in line


def _page_origin(upstream_factory):
    import socket as socketlib

    def handler(conn: socketlib.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        path = data.split(b" ")[1]
        body = b"<html><body><p>plain http through gconnect</p></body></html>" if path == b"/" else b""
        status = b"200 OK" if body else b"404 Not Found"
        conn.sendall(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: text/html\r\nContent-Length: %d\r\n" % len(body)
            + b"Connection: close\r\n\r\n"
            + body
        )

    return upstream_factory(handler)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
@pytest.mark.parametrize("listener", ["plain", "tls-h2"])
def test_chromium_loads_an_http_page(start_proxy, start_tls_proxy, upstream_factory, tmp_path, listener) -> None:
    web = _page_origin(upstream_factory)
    if listener == "plain":
        proxy = start_proxy("--forward-port", "1-65535")
        proxy_url = f"http://127.0.0.1:{proxy.port}"
    else:
        proxy = start_tls_proxy("--forward-port", "1-65535")
        proxy_url = f"https://127.0.0.1:{proxy.port}"
    # web.test is in the proxy's hosts file: Chromium resolves nothing itself behind a proxy.
    command = [
        *("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
        f"--proxy-server={proxy_url}",
        "--ignore-certificate-errors",
        "--dump-dom",
        f"http://web.test:{web.port}/",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_clean_env())
    assert "plain http through gconnect" in result.stdout, result.stderr[-2000:]
    line = proxy.wait_access(f"target=web.test:{web.port}")
    assert "method=GET" in line and "status=200" in line
    if listener == "tls-h2":
        assert " proto=h2 stream=" in line
