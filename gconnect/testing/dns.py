"""A small authoritative DNS server on a loopback port, for tests and benchmarks.

A fake with the real interface: UDP and TCP on 127.0.0.1, answers built by
dnspython. Behaviour per name: addresses with a TTL, NXDOMAIN, SERVFAIL, or an
answer held back until an event is set (a slow server).
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import threading
from collections import Counter

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


@dataclasses.dataclass
class Record:
    a: list[str] = dataclasses.field(default_factory=list)
    aaaa: list[str] = dataclasses.field(default_factory=list)
    ttl: int = 300
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    #: When set, answers wait until this event is set (or forever: a timeout).
    hold: threading.Event | None = None


class DNSServer:
    """Serve ``records`` (lower-case names without the trailing dot)."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.queries: Counter[tuple[str, str]] = Counter()
        self.received = threading.Condition()
        self._udp, self._tcp = self._bind_pair()
        self.port = self._udp.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()

    @staticmethod
    def _bind_pair() -> tuple[socket.socket, socket.socket]:
        # UDP and TCP on one port number: port 0 picks UDP's, TCP may find it taken.
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, **kwargs: object) -> Record:
        record = Record(**kwargs)  # type: ignore[arg-type]
        self.records[name.lower().rstrip(".")] = record
        return record

    def count(self, name: str, rdtype: str | None = None) -> int:
        with self.received:
            return sum(n for (q, t), n in self.queries.items() if q == name and (rdtype is None or t == rdtype))

    def wait_for_query(self, name: str, timeout: float = 5.0) -> bool:
        with self.received:
            return self.received.wait_for(lambda: any(q == name for q, _ in self.queries), timeout)

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self.received:
            self.queries[(name, rdtype)] += 1
            self.received.notify_all()
        record = self.records.get(name)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if record is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        if record.hold is not None and not record.hold.wait(30):
            return None
        response.set_rcode(record.rcode)
        if record.rcode != dns.rcode.NOERROR:
            return response.to_wire()
        addrs = record.a if rdtype == "A" else record.aaaa if rdtype == "AAAA" else []
        if addrs:
            response.answer.append(dns.rrset.from_text(question.name, record.ttl, "IN", rdtype, *addrs))
        return response.to_wire()

    def _serve_udp(self) -> None:
        while not self._closed:
            try:
                wire, peer = self._udp.recvfrom(4096)
            except OSError:
                return
            threading.Thread(target=self._reply_udp, args=(wire, peer), daemon=True).start()

    def _reply_udp(self, wire: bytes, peer: tuple) -> None:
        reply = self.answer(wire)
        if reply is not None and not self._closed:
            try:
                self._udp.sendto(reply, peer)
            except OSError:
                pass

    def _serve_tcp(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._reply_tcp, args=(conn,), daemon=True).start()

    def _reply_tcp(self, conn: socket.socket) -> None:
        with conn:
            header = conn.recv(2, socket.MSG_WAITALL)
            if len(header) < 2:
                return
            wire = conn.recv(struct.unpack("!H", header)[0], socket.MSG_WAITALL)
            reply = self.answer(wire)
            if reply is not None:
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        self._closed = True
        for record in self.records.values():
            if record.hold is not None:
                record.hold.set()
        self._udp.close()
        self._tcp.close()
