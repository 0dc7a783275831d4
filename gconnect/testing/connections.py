"""Which TCP connections a process holds and whether it accepts, from /proc (IPv4, the current
network namespace).

A test that kills a worker uses these to tell the tunnels the victim held (which may end with it)
from everyone else's (which must not); a benchmark, to know when a replacement accepts.
"""

from __future__ import annotations

from gconnect.testing.procfs import open_fds

#: /proc/net/tcp's state column for a listening socket (include/net/tcp_states.h: TCP_LISTEN).
TCP_LISTEN = "0A"


def socket_inodes(pid: int) -> dict[str, int]:
    """Socket inode -> descriptor number in *pid*."""
    return {link[8:-1]: fd for fd, link in open_fds(pid).items() if link.startswith("socket:[")}


def tcp_table() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket in this namespace."""
    rows = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = (int(fields[i].split(":")[1], 16) for i in (1, 2))
            rows.append((local, remote, fields[3], fields[9]))
    return rows


def client_ports_held_by(pid: int, proxy_port: int) -> set[int]:
    """The client ports of the connections to *proxy_port* that process *pid* holds."""
    inodes = socket_inodes(pid)
    return {remote for local, remote, _, inode in tcp_table() if local == proxy_port and remote and inode in inodes}


def accepting(pid: int, proxy_port: int) -> bool:
    """Whether *pid* has its listening socket on *proxy_port* in its epoll set: it accepts (a
    worker that is starting, or has stopped accepting, has not, or not now)."""
    inodes = socket_inodes(pid)
    listening = {
        inodes[inode]
        for local, _, tcp_state, inode in tcp_table()
        if local == proxy_port and tcp_state == TCP_LISTEN and inode in inodes
    }
    if not listening:
        return False
    for fd, link in open_fds(pid).items():
        if link != "anon_inode:[eventpoll]":
            continue
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                registered = {int(line.split()[1]) for line in f if line.startswith("tfd:")}
        except FileNotFoundError:
            continue
        if registered & listening:
            return True
    return False
