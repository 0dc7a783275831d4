"""HTTP/2 against HTTP/1.1 on the TLS listener: the cost of opening tunnels and of moving bytes.

``python -m bench.h2 [--rounds 5] [--mib 256]`` starts gconnect with a TLS listener pinned to
CPU 0, runs the clients and targets on CPU 1 in this process, and measures:

* **open**: 100 tunnels over one HTTP/2 connection (one TCP and TLS handshake, 100 HEADERS sent
  at once) against 100 HTTP/1.1 TLS connections opened one after the other (each its own
  handshake and CONNECT), to an idle target: wall time until the last 200, and the proxy's CPU
  (user and kernel, from /proc/PID/stat) for the 100, each the mean of 10 batches;
* **bulk**: one tunnel downloading ``--mib`` MiB from a target, and one uploading as much, over
  one HTTP/2 stream against one HTTP/1.1 TLS tunnel: the proxy's CPU seconds per GB, user and
  kernel apart.

Medians of ``--rounds`` rounds, the two kinds alternating within each round. Writes
``h2.json`` and ``h2.md`` to ``--out`` (bench/results).
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import ssl
import statistics
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from h2.settings import SettingCodes

from bench.tlsproxy import tls_files, write_results
from gconnect.testing.process import ProxyProcess
from gconnect.testing.procfs import tree_cpu_split
from gconnect.tunnel.h2.frames import DataRun, FrameReader, data_frames, window_update

RESULTS = Path(__file__).parent / "results"
TUNNELS = 100
#: The client's receive windows: large, so the client never throttles the proxy.
CLIENT_WINDOW = 16 * 1024 * 1024
CHUNK = 256 * 1024
#: Batches of TUNNELS opened per sample: /proc counts CPU in 10 ms ticks, and one
#: batch over HTTP/2 costs about that much.
OPEN_REPEATS = 10


class Target:
    """A loopback server in a thread: ``idle`` holds connections until EOF; ``source`` sends
    *size* bytes, then EOF, then waits for the client's EOF; ``sink`` reads until EOF."""

    def __init__(self, mode: str, size: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.sock.getsockname()[1]
        self.mode, self.size = mode, size
        #: A sink sets it when one connection has brought *size* bytes.
        self.received = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        block = b"\0" * CHUNK
        with conn:
            try:
                if self.mode == "source":
                    left = self.size
                    while left:
                        left -= conn.send(block[: min(left, CHUNK)])
                    conn.shutdown(socket.SHUT_WR)
                got = 0
                while chunk := conn.recv(1024 * 1024):
                    got += len(chunk)
                    if got == self.size and self.mode == "sink":
                        self.received.set()
            except OSError:
                pass


class H2Tunnels:
    """One HTTP/2 connection to the proxy and its CONNECT streams (python-hyper's h2).

    DATA is framed and parsed as the proxy does it (gconnect.tunnel.h2.frames), h2
    keeping the streams' states, so that this Python client, on one core, keeps up
    with the proxy as a browser's compiled HTTP/2 would and the proxy's CPU per GB is
    not that of a proxy waking for every few frames a slow client sends or takes.
    """

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        context.set_alpn_protocols(["h2"])
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: CLIENT_WINDOW})
        self.conn.increment_flow_control_window(CLIENT_WINDOW * 8)
        self.statuses: dict[int, int] = {}
        self.frames = FrameReader(self.conn.max_inbound_frame_size, preface=False)
        self.unacked: dict[int, int] = {}
        self.received = 0
        self.ended: set[int] = set()
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open(self, target: str, count: int) -> list[int]:
        ids = []
        for _ in range(count):
            stream_id = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", target.encode())])
            ids.append(stream_id)
        self._flush()
        while not all(i in self.statuses for i in ids):
            self._read()
        return ids

    def download(self, stream_id: int) -> None:
        while stream_id not in self.ended:
            self._read()

    def upload(self, stream_id: int, size: int, sink: Target) -> None:
        """Send *size* bytes on *stream_id* as the windows allow, until *sink* has them all."""
        left = size
        while left:
            room = min(self.conn.local_flow_control_window(stream_id), left)
            if not room:
                self._read()  # a WINDOW_UPDATE
                continue
            frame = self.conn.max_outbound_frame_size
            data = memoryview(b"\0" * room)
            self.conn.send_data(stream_id, data[:frame])  # h2 checks the stream's state
            rest = room - min(room, frame)
            self.conn.outbound_flow_control_window -= rest
            self.conn.streams[stream_id].outbound_flow_control_window -= rest
            parts = data_frames(stream_id, data[frame:], frame) if rest else []
            self.sock.sendall(b"".join([self.conn.data_to_send(), *parts]))
            left -= room
        sink.received.wait(120)

    def _read(self) -> None:
        data = self.sock.recv(1024 * 1024)
        if not data:
            raise ConnectionError("proxy closed the connection")
        updates = []
        for item in self.frames.feed(data):
            if isinstance(item, DataRun):
                self.received += item.flow_length
                self.unacked[item.stream_id] = self.unacked.get(item.stream_id, 0) + item.flow_length
                item = item.h2_frame()
            for event in self.conn.receive_data(item):
                if isinstance(event, h2.events.ResponseReceived):
                    self.statuses[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
        for stream_id, n in self.unacked.items():
            if n >= CLIENT_WINDOW // 2:  # the windows h2 does not see (it is given empty DATA frames)
                updates += (window_update(stream_id, n), window_update(0, n))
                self.unacked[stream_id] = 0
        self.sock.sendall(self.conn.data_to_send() + b"".join(updates))

    def close(self) -> None:
        self.sock.close()


def open_h2(port: int, context: ssl.SSLContext, target: str, clients: list[H2Tunnels]) -> None:
    client = H2Tunnels(port, context)
    clients.append(client)
    client.open(target, TUNNELS)


def h1_tunnel(port: int, context: ssl.SSLContext, target: str) -> ssl.SSLSocket:
    context.set_alpn_protocols(["http/1.1"])
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def total() -> dict:
    return {"wall": 0.0, "user": 0.0, "sys": 0.0}


def add(into: dict, sample: dict) -> None:
    """Accumulate *sample* as a share of one batch of TUNNELS (the mean of OPEN_REPEATS)."""
    for key, value in sample.items():
        into[key] += value / OPEN_REPEATS


def measured(pid: int, work) -> dict:
    """Wall seconds and the proxy's (user, kernel) CPU seconds while *work* runs."""
    user0, sys0 = tree_cpu_split(pid)
    started = time.perf_counter()
    work()
    wall = time.perf_counter() - started
    user1, sys1 = tree_cpu_split(pid)
    return {"wall": wall, "user": user1 - user0, "sys": sys1 - sys0}


def start_proxy(cert: str, key: str, **kwargs) -> ProxyProcess:
    """gconnect with a TLS listener, pinned to CPU 0 (*kwargs*: ProxyProcess's, e.g. another tree)."""
    args = ["--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--allow-dest", "127.0.0.0/8", "--access-log", ""]
    args += ["--log-level", "warning", "--tls-cert", cert, "--tls-key", key, "--h2-max-streams", str(TUNNELS)]
    return ProxyProcess(args, cpus={0}, **kwargs)


def one_round(pid: int, port: int, context: ssl.SSLContext, targets: tuple[Target, Target, Target], mib: int) -> dict:
    """One sample of each measurement, the HTTP/2 one first."""
    idle, source, sink = targets
    size = mib * 1024 * 1024
    out = {"open_h2": total(), "open_h1": total()}
    for _ in range(OPEN_REPEATS):
        clients: list[H2Tunnels] = []  # the TCP and TLS handshake counts too
        add(out["open_h2"], measured(pid, lambda: open_h2(port, context, f"127.0.0.1:{idle.port}", clients)))  # noqa: B023
        clients[0].close()
        socks: list[ssl.SSLSocket] = []
        opener = functools.partial(h1_tunnel, port, context, f"127.0.0.1:{idle.port}")
        add(out["open_h1"], measured(pid, lambda: socks.extend(opener() for _ in range(TUNNELS))))  # noqa: B023
        for sock in socks:
            sock.close()
    out.update(bulk_round(pid, port, context, (source, sink), size))
    return out


def bulk_round(
    pid: int, port: int, context: ssl.SSLContext, targets: tuple[Target, Target], size: int, measure=None
) -> dict:
    """One sample of each bulk measurement (*size* bytes down, then up), the HTTP/2 one first;
    *measure* (pid, work) -> sample: measured() unless given."""
    measure = measure or measured
    source, sink = targets
    out = {}
    client = H2Tunnels(port, context)
    (stream_id,) = client.open(f"127.0.0.1:{source.port}", 1)
    out["bulk_h2"] = measure(pid, functools.partial(client.download, stream_id))
    assert client.received == size
    client.close()
    sock = h1_tunnel(port, context, f"127.0.0.1:{source.port}")
    got = []

    def drain() -> None:
        while chunk := sock.recv(1024 * 1024):
            got.append(len(chunk))

    out["bulk_h1"] = measure(pid, drain)
    assert sum(got) == size
    sock.close()
    sink.received.clear()
    client = H2Tunnels(port, context)
    (stream_id,) = client.open(f"127.0.0.1:{sink.port}", 1)
    out["up_h2"] = measure(pid, functools.partial(client.upload, stream_id, size, sink))
    assert sink.received.is_set()
    client.close()
    sink.received.clear()
    sock = h1_tunnel(port, context, f"127.0.0.1:{sink.port}")

    def push() -> None:
        block = b"\0" * (1024 * 1024)
        for _ in range(size // len(block)):
            sock.sendall(block)
        sink.received.wait(120)

    out["up_h1"] = measure(pid, push)
    assert sink.received.is_set()
    sock.close()
    return out


def run(rounds: int, mib: int) -> dict:
    os.sched_setaffinity(0, {1})
    pem, context = tls_files()
    size = mib * 1024 * 1024
    targets = (Target("idle"), Target("source", size), Target("sink", size))
    samples: dict[str, list[dict]] = {
        kind: [] for kind in ("open_h2", "open_h1", "bulk_h2", "bulk_h1", "up_h2", "up_h1")
    }
    with start_proxy(*pem) as proxy:
        for _ in range(rounds):
            for kind, sample in one_round(proxy.pid, proxy.port, context, targets, mib).items():
                samples[kind].append(sample)
            time.sleep(0.5)  # the proxy closes the tunnels of this round
    return summarise(samples, mib, rounds)


def summarise(samples: dict[str, list[dict]], mib: int, rounds: int) -> dict:
    def median(kind: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[kind])

    gb = mib * 1024 * 1024 / 1e9
    result = {"rounds": rounds, "tunnels": TUNNELS, "mib": mib, "samples": samples}
    for proto in ("h2", "h1"):
        result[f"open_{proto}"] = {
            "wall_ms": round(median(f"open_{proto}", "wall") * 1000, 1),
            "proxy_user_ms": round(median(f"open_{proto}", "user") * 1000, 1),
            "proxy_sys_ms": round(median(f"open_{proto}", "sys") * 1000, 1),
        }
        for way in ("bulk", "up"):
            result[f"{way}_{proto}"] = {
                "wall_s": round(median(f"{way}_{proto}", "wall"), 3),
                "proxy_user_s_per_gb": round(median(f"{way}_{proto}", "user") / gb, 3),
                "proxy_sys_s_per_gb": round(median(f"{way}_{proto}", "sys") / gb, 3),
            }
    return result


def markdown(result: dict) -> str:
    o2, o1, b2, b1, u2, u1 = (result[k] for k in ("open_h2", "open_h1", "bulk_h2", "bulk_h1", "up_h2", "up_h1"))
    return "\n".join(
        [
            f"# HTTP/2 vs HTTP/1.1 on the TLS listener (medians of {result['rounds']} rounds)",
            "",
            "Proxy pinned to CPU 0, clients and targets on CPU 1; proxy CPU from /proc/PID/stat.",
            "",
            f"| open {result['tunnels']} tunnels | wall ms | proxy user ms | proxy kernel ms |",
            "|---|---|---|---|",
            f"| one HTTP/2 connection | {o2['wall_ms']} | {o2['proxy_user_ms']} | {o2['proxy_sys_ms']} |",
            f"| {result['tunnels']} HTTP/1.1 TLS connections | {o1['wall_ms']} | {o1['proxy_user_ms']} "
            f"| {o1['proxy_sys_ms']} |",
            "",
            f"| one tunnel, {result['mib']} MiB down | wall s | proxy user s/GB | proxy kernel s/GB |",
            "|---|---|---|---|",
            f"| HTTP/2 stream | {b2['wall_s']} | {b2['proxy_user_s_per_gb']} | {b2['proxy_sys_s_per_gb']} |",
            f"| HTTP/1.1 TLS tunnel | {b1['wall_s']} | {b1['proxy_user_s_per_gb']} | {b1['proxy_sys_s_per_gb']} |",
            "",
            f"| one tunnel, {result['mib']} MiB up | wall s | proxy user s/GB | proxy kernel s/GB |",
            "|---|---|---|---|",
            f"| HTTP/2 stream | {u2['wall_s']} | {u2['proxy_user_s_per_gb']} | {u2['proxy_sys_s_per_gb']} |",
            f"| HTTP/1.1 TLS tunnel | {u1['wall_s']} | {u1['proxy_user_s_per_gb']} | {u1['proxy_sys_s_per_gb']} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.rounds, args.mib)
    write_results(args.out, "h2", result, markdown(result))


if __name__ == "__main__":
    main()
