"""The peers Debian ships: installing them, their versions, and their command lines.

Squid, tinyproxy, Apache Traffic Server and Apache httpd are installed with ``apt-get`` when
missing and run as foreground instances of their own, each with the committed configuration in
``bench/peers/`` rendered into a temporary run directory (``@PORT@``, ``@RUNDIR@``, ``@THREADS@``);
never the packaged service, and nothing under /etc is changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent.parent / "peers"
APT_TIMEOUT_S = 900.0
VERSION_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Peer:
    """One Debian peer target: its package, the program it runs, and its event threads."""

    package: str
    program: str
    # Threads serving connections, for the peers that take a count (Traffic Server's event threads).
    threads: int = 1


PEERS = {
    "squid": Peer("squid", "squid"),
    "tinyproxy": Peer("tinyproxy", "tinyproxy"),
    "ats": Peer("trafficserver", "traffic_server"),
    "ats-2t": Peer("trafficserver", "traffic_server", threads=2),
    "httpd": Peer("apache2", "apache2"),
}


class InstallFailed(Exception):
    """apt-get could not install a peer; the message has the end of its output."""


def _program(peer: Peer) -> str | None:
    # apache2 is in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(peer.program) or shutil.which(peer.program, path="/usr/sbin:/usr/bin")


def ensure_installed(name: str) -> str:
    """Install the peer's package if its program is missing; return the program's path."""
    peer = PEERS[name]
    found = _program(peer)
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", peer.package],
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT_S,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    found = _program(peer)
    if done.returncode != 0 or not found:
        raise InstallFailed(f"apt-get install {peer.package} failed: {done.stderr.strip()[-300:]}")
    return found


def version(name: str) -> str:
    """The first line the peer prints about its version."""
    program = ensure_installed(name)
    flag = "--version" if PEERS[name].package == "trafficserver" else "-v"
    done = subprocess.run(
        [program, flag], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if PEERS[name].package == "apache2":
        lines = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Server version:")]
    return lines[0] if lines else "unknown"


def render(template: str, port: int, rundir: Path, threads: int = 1) -> str:
    """A committed configuration with its placeholders filled in."""
    text = template.replace("@PORT@", str(port)).replace("@RUNDIR@", str(rundir))
    return text.replace("@THREADS@", str(threads))


def _render_file(source: Path, target: Path, port: int, rundir: Path, threads: int = 1) -> Path:
    target.write_text(render(source.read_text(), port, rundir, threads))
    return target


# Traffic Server finds its configuration, logs and runtime files through a runroot: every
# directory of its layout, the programs and plugins left where Debian put them.
ATS_RUNROOT = """\
prefix: /usr
exec_prefix: /usr
bindir: /usr/bin
sbindir: /usr/sbin
includedir: /usr/include
libdir: /usr/lib/trafficserver
libexecdir: /usr/lib/trafficserver/modules
sysconfdir: {rundir}/etc
datadir: {rundir}
localstatedir: {rundir}
runtimedir: {rundir}
logdir: {rundir}
cachedir: {rundir}
"""


def command(name: str, port: int, rundir: Path) -> tuple[list[str], str | None]:
    """The peer's command line with its configuration written into rundir, and the user that
    must own rundir (None: root keeps it)."""
    peer = PEERS[name]
    program = ensure_installed(name)
    if name == "squid":
        conf = _render_file(PEERS_DIR / "squid.conf", rundir / "squid.conf", port, rundir)
        return [program, "-N", "-f", str(conf)], "proxy"
    if name == "tinyproxy":
        conf = _render_file(PEERS_DIR / "tinyproxy.conf", rundir / "tinyproxy.conf", port, rundir)
        return [program, "-d", "-c", str(conf)], None
    if peer.package == "trafficserver":
        etc = rundir / "etc"
        etc.mkdir()
        for source in sorted((PEERS_DIR / "ats").iterdir()):
            _render_file(source, etc / source.name, port, rundir, peer.threads)
        runroot = rundir / "runroot.yaml"
        runroot.write_text(ATS_RUNROOT.format(rundir=rundir))
        return [program, f"--run-root={runroot}"], None
    if name == "httpd":
        conf = _render_file(PEERS_DIR / "httpd.conf", rundir / "httpd.conf", port, rundir)
        # The parent stays root and its children serve as www-data; they share the run directory.
        return [program, "-f", str(conf), "-DFOREGROUND"], "www-data"
    raise ValueError(f"unknown Debian peer {name!r}")
