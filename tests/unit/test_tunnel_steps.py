"""A Tunnel's steps, in process: TunnelServices built from a Config in one call,
a scripted client side, real sockets on loopback for the dial.

The scripted side is a ClientSide (the contract in gconnect/tunnel/client.py)
that hands the tunnel a ready request and records what the tunnel asked of it;
the observer records what a tunnel reports. Nothing here is a fake socket.
"""

from __future__ import annotations

import gc
import ipaddress
import socket
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from gconnect.config import Config, UserRules
from gconnect.errors import GConnectError
from gconnect.tunnel.head import ConnectRequest
from gconnect.tunnel.namecheck import UNRECOGNIZED_NAME_ALERT
from gconnect.tunnel.services import TunnelServices
from gconnect.tunnel.tunnel import Tunnel

from .test_clienthello import python_hello

pytestmark = pytest.mark.timeout(30)

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class ScriptedRelay:
    """A relay handle the test ends by hand."""

    end_reason = ""
    first_byte_at = 0.0
    bytes_down = 0

    def __init__(self, early: bytes, on_done: Callable[[Any], None]) -> None:
        self.bytes_up = len(early)
        self.on_done = on_done

    def abort(self, reason: str) -> None:
        self.end_reason = reason
        self.on_done(self)


class ScriptedSide:
    """A client side that asks for *request* and records the tunnel's calls."""

    protocol = "http/1.1"
    stream_id = None

    def __init__(
        self,
        request: ConnectRequest | None,
        *,
        hold: Event | None = None,
        cert: dict[str, Any] | None = None,
        ahead: tuple[bytes | None, ...] = (),
    ) -> None:
        self.address = ("127.0.0.9", 40000)
        self.cert = cert
        self.request = request
        self.hold = hold
        #: What read_ahead answers in turn (bytes, b"" at EOF, None past the deadline).
        self.ahead = list(ahead)
        self.last: bytes | None = None
        self.calls: list[str] = []
        self.refused: GConnectError | None = None
        self.outbound: Any = None
        self.relay: ScriptedRelay | None = None
        self.closed_with: tuple[int, str] | None = None

    def admit(self) -> None:
        self.calls.append("admit")

    def peer_certificate(self) -> dict[str, Any] | None:
        return self.cert

    def read_request(self) -> ConnectRequest:
        self.calls.append("read_request")
        if self.hold is not None:
            self.hold.wait()  # a client that never finishes its head
        assert self.request is not None
        return self.request

    def established(self) -> None:
        self.calls.append("established")

    def refuse(self, exc: GConnectError) -> None:
        self.calls.append("refuse")
        self.refused = exc

    def read_ahead(self, deadline: float) -> bytes | None:
        self.calls.append("read_ahead")
        return self.ahead.pop(0)

    def end_with(self, data: bytes) -> None:
        self.calls.append("end_with")
        self.last = data

    def start_relay(self, outbound: Any, early: bytes, on_done: Callable[[Any], None]) -> ScriptedRelay:
        self.calls.append("start_relay")
        self.outbound = outbound
        self.relay = ScriptedRelay(early, on_done)
        return self.relay

    def drain(self) -> None:
        self.calls.append("drain")

    def close(self, status: int, end_reason: str) -> None:
        self.calls.append("close")
        self.closed_with = (status, end_reason)


class Recorder:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.done = Event()

    def opened(self, tunnel: Any) -> None:
        self.events.append(("opened", tunnel.target))

    def would_deny(self, tunnel: Any, reason: str) -> None:
        self.events.append(("would_deny", reason))

    def closed(self, tunnel: Any) -> None:
        self.events.append(("closed", (tunnel.status, tunnel.end_reason)))
        self.done.set()


@pytest.fixture
def target() -> Iterator[socket.socket]:
    """A listening socket on loopback: the kernel completes the dial, nobody accepts."""
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def services_for(recorder: Recorder, **settings: Any) -> TunnelServices:
    # A per-address limit, so that the tests can see each step count and release the client.
    settings.setdefault("max_clients_per_ip", 1000)
    return TunnelServices.from_config(Config(**settings), observer=recorder)


def open_to(target: socket.socket) -> tuple[Recorder, TunnelServices, int]:
    """A recorder, services that let tunnels through to *target* (its port, on loopback), and the port."""
    recorder = Recorder()
    port = target.getsockname()[1]
    return recorder, services_for(recorder, allow_port=((port, port),), allow_dest=LOOPBACK), port


def run(tunnel: Tunnel) -> None:
    greenlet = tunnel.greenlet = gevent.spawn(tunnel.run)
    greenlet.join(timeout=10)
    assert greenlet.dead


def request_for(port: int, host: str = "127.0.0.1", early: bytes = b"") -> ConnectRequest:
    family = socket.AF_INET if host[0].isdigit() else 0
    return ConnectRequest(host, port, family, "1.1", [(b"Host", f"{host}:{port}".encode())], early)


def test_a_tunnel_goes_through_every_step_and_leaves_through_close(target):
    recorder, services, port = open_to(target)
    side = ScriptedSide(request_for(port, early=b"hello"))
    tunnel = Tunnel(services, side)
    assert len(services.tunnels) == 1
    run(tunnel)
    assert side.calls == ["admit", "read_request", "established", "start_relay"]
    assert side.outbound.sock.getpeername()[:2] == ("127.0.0.1", port)
    assert tunnel.dialled == f"127.0.0.1:{port}" and tunnel.status == 200
    assert services.limits.count("127.0.0.9") == 1
    assert recorder.events == [("opened", f"127.0.0.1:{port}")]

    side.relay.abort("shutdown")  # type: ignore[union-attr]
    assert side.calls[-1] == "close" and side.closed_with == (200, "shutdown")
    assert recorder.events[-1] == ("closed", (200, "shutdown"))
    assert tunnel.bytes_up == 5
    assert side.outbound.sock.fileno() == -1, "the outbound socket is closed"
    assert services.limits.count("127.0.0.9") == 0 and len(services.tunnels) == 0


def test_a_closed_tunnel_is_freed_without_the_garbage_collector(target):
    # A tunnel per client: a reference cycle through it would wait for a collection.
    _, services, port = open_to(target)
    side = ScriptedSide(request_for(port))
    tunnel = Tunnel(services, side)
    run(tunnel)
    gc.collect()
    gc.disable()
    try:
        relay, side.relay = side.relay, None  # the scripted side's own reference, not the tunnel's
        assert relay is not None
        relay.abort("shutdown")
        freed = weakref.ref(tunnel)
        del tunnel, relay
        assert freed() is None
    finally:
        gc.enable()


def test_an_abort_after_the_handshake_leaves_its_runner_to_the_next_tunnel(target):
    # The runner that ran a handshake serves the next one: a late abort must not reach it.
    recorder = Recorder()
    services = services_for(recorder)  # no port allowed: refused at once
    first = Tunnel(services, ScriptedSide(request_for(target.getsockname()[1])))
    first.start(gevent.get_hub(), at_once=False)
    assert recorder.done.wait(5)
    runner = services.runners.take(gevent.get_hub())
    assert first.greenlet is None and not runner.dead
    first.abort("shutdown")
    gevent.sleep(0.01)  # the loop's callbacks run
    assert not runner.dead and recorder.events[-1] == ("closed", (403, first.end_reason))


def test_a_port_outside_the_rules_is_refused_before_any_dial(target):
    recorder = Recorder()
    port = target.getsockname()[1]
    services = services_for(recorder, allow_dest=LOOPBACK)  # only port 443
    side = ScriptedSide(request_for(port))
    run(Tunnel(services, side))
    assert side.calls == ["admit", "read_request", "refuse", "close"]
    assert side.refused is not None and side.refused.status == 403
    assert recorder.events == [("closed", (403, side.refused.code))]
    assert services.limits.count("127.0.0.9") == 0


def test_a_private_destination_is_refused_by_default(target):
    recorder = Recorder()
    port = target.getsockname()[1]
    side = ScriptedSide(request_for(port))
    run(Tunnel(services_for(recorder, allow_port=((port, port),)), side))
    assert side.refused is not None and side.refused.status == 403
    assert side.refused.code == "denied" and "127.0.0.1" in str(side.refused)


def test_report_mode_tells_the_observer_and_lets_the_tunnel_through(target):
    recorder = Recorder()
    port = target.getsockname()[1]
    services = services_for(
        recorder,
        allow_port=((port, port),),
        allow_dest=LOOPBACK,
        allow_host=("allowed.test",),
        host_rules_mode="report",
    )
    side = ScriptedSide(request_for(port))
    tunnel = Tunnel(services, side)
    run(tunnel)
    assert ("would_deny", "host_not_allowed") in recorder.events
    assert tunnel.status == 200 and tunnel.would_deny == "host_not_allowed"
    side.relay.abort("client_eof")  # type: ignore[union-attr]


def test_abort_during_the_handshake_kills_it_and_closes_once():
    recorder = Recorder()
    services = services_for(recorder)
    side = ScriptedSide(None, hold=Event())
    tunnel = Tunnel(services, side)
    tunnel.greenlet = gevent.spawn(tunnel.run)
    gevent.sleep(0)  # the greenlet runs up to the held read
    assert side.calls == ["admit", "read_request"]
    tunnel.abort("shutdown")
    tunnel.greenlet.join(timeout=5)
    assert side.calls[-1] == "close" and side.closed_with == (0, "shutdown")
    assert recorder.events == [("closed", (0, "shutdown"))]
    assert len(services.tunnels) == 0


def test_a_takeover_by_another_protocol_is_the_tunnel_s_only_record():
    recorder = Recorder()
    services = services_for(recorder)
    side = ScriptedSide(None)
    side.admit = lambda: lambda: "client_eof"  # type: ignore[method-assign]
    tunnel = Tunnel(services, side)
    run(tunnel)
    assert side.calls == ["close"] and side.closed_with == (0, "client_eof")
    assert recorder.events == [("closed", (0, "client_eof"))]
    assert services.limits.count("127.0.0.9") == 0, "a connection taken over is not counted as a client"


class HoldingSide(ScriptedSide):
    """A side that waits inside refuse or start_relay, as HTTP/1.1's lingering
    close and its send of the early bytes may, until the tunnel is aborted."""

    def __init__(self, request: ConnectRequest, *, hold_in: str) -> None:
        super().__init__(request)
        self.hold_in = hold_in
        self.holding = Event()

    def _hold(self, step: str) -> None:
        if step == self.hold_in:
            self.holding.set()
            Event().wait()  # until killed

    def refuse(self, exc: GConnectError) -> None:
        super().refuse(exc)
        self._hold("refuse")

    def start_relay(self, outbound: Any, early: bytes, on_done: Callable[[Any], None]) -> ScriptedRelay:
        self.calls.append("start_relay")
        self.outbound = outbound
        self._hold("start_relay")
        raise AssertionError("not reached")


def test_abort_while_the_refusal_lingers_still_closes_once(target):
    recorder = Recorder()
    services = services_for(recorder, allow_dest=LOOPBACK)  # only port 443: a refusal
    side = HoldingSide(request_for(target.getsockname()[1]), hold_in="refuse")
    tunnel = Tunnel(services, side)
    tunnel.start(gevent.get_hub(), at_once=False)
    assert side.holding.wait(5)
    tunnel.abort("shutdown")
    assert recorder.done.wait(5)
    assert side.calls == ["admit", "read_request", "refuse", "close"]
    assert recorder.events == [("closed", (403, side.refused.code))]  # type: ignore[union-attr]
    assert services.limits.count("127.0.0.9") == 0 and len(services.tunnels) == 0


def test_abort_while_the_early_bytes_are_sent_closes_the_tunnel(target):
    recorder, services, port = open_to(target)
    side = HoldingSide(request_for(port, early=b"early"), hold_in="start_relay")
    tunnel = Tunnel(services, side)
    tunnel.start(gevent.get_hub(), at_once=False)
    assert side.holding.wait(5)
    tunnel.abort("shutdown")
    assert recorder.done.wait(5)
    assert recorder.events[-1] == ("closed", (200, "shutdown"))
    assert side.outbound.sock.fileno() == -1 and len(services.tunnels) == 0


def test_cancel_after_the_answer_changes_nothing(target):
    recorder, services, port = open_to(target)
    side = ScriptedSide(request_for(port))
    tunnel = Tunnel(services, side)
    run(tunnel)
    tunnel.cancel(GConnectError("too late"))
    gevent.sleep(0)  # the scheduled cancel runs, and finds the tunnel answered
    assert tunnel.status == 200 and len(services.tunnels) == 1 and recorder.events[-1][0] == "opened"
    side.relay.abort("client_eof")  # type: ignore[union-attr]
    assert recorder.events[-1] == ("closed", (200, "client_eof"))


# Who is asking: the authenticate and check steps with the provider chain


def test_a_certificates_identity_chooses_its_groups_rules(target, proxy_cert, ca_file):
    recorder = Recorder()
    port = target.getsockname()[1]
    settings = {
        "tls_cert": proxy_cert[0],
        "tls_key": proxy_cert[1],
        "tls_client_ca": str(ca_file),
        "allow_dest": LOOPBACK,
        "allow_port": ((1, 1),),
        "groups": (UserRules("staff", allow_port=((port, port),)),),
    }
    cert = {"subject": ((("organizationalUnitName", "staff"),), (("commonName", "svc-a"),))}
    side = ScriptedSide(request_for(port), cert=cert)
    tunnel = Tunnel(services_for(recorder, **settings), side)
    run(tunnel)
    assert tunnel.status == 200 and tunnel.user == "svc-a"
    assert tunnel.identity is not None and (tunnel.identity.provider, tunnel.identity.group) == ("cert", "staff")
    side.relay.abort("client_eof")  # type: ignore[union-attr]
    other = ScriptedSide(request_for(port), cert={"subject": ((("commonName", "svc-b"),),)})
    run(Tunnel(services_for(recorder, **settings), other))
    assert other.refused is not None and other.refused.status == 403  # no group: the global port rule


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_the_name_check_reads_ahead_then_closes_or_relays(target, mode):
    recorder = Recorder()
    port = target.getsockname()[1]
    services = services_for(
        recorder,
        allow_port=((port, port),),
        allow_dest=LOOPBACK,
        tls_name_check=mode,
        tls_name_check_ports=((port, port),),
    )
    hello = python_hello("other.test")
    side = ScriptedSide(request_for(port, host="localhost"), ahead=(hello[:100], hello[100:]))
    tunnel = Tunnel(services, side)
    run(tunnel)
    assert (tunnel.sni, tunnel.sni_check) == ("other.test", "mismatch")
    checked = ["admit", "read_request", "established", "read_ahead", "read_ahead"]
    if mode == "enforce":
        assert side.calls == [*checked, "end_with", "close"]
        assert side.last == UNRECOGNIZED_NAME_ALERT
        assert recorder.events[-1] == ("closed", (200, "tls_name_refused"))
    else:
        assert side.calls == [*checked, "start_relay"]
        side.relay.abort("client_eof")  # type: ignore[union-attr]


def test_the_name_check_reads_nothing_off_its_ports(target):
    port = target.getsockname()[1]
    services = services_for(Recorder(), allow_port=((port, port),), allow_dest=LOOPBACK, tls_name_check="enforce")
    side = ScriptedSide(request_for(port))
    tunnel = Tunnel(services, side)
    run(tunnel)
    assert "read_ahead" not in side.calls and tunnel.sni_check is None
    side.relay.abort("client_eof")  # type: ignore[union-attr]


class Untimed(Recorder):
    """A recorder that reads none of the step times (the metrics alone)."""

    timings = False


@pytest.mark.parametrize("recorder_class", [Recorder, Untimed])
def test_step_times_are_read_only_for_an_observer_that_reads_them(target, recorder_class):
    recorder = recorder_class()
    port = target.getsockname()[1]
    services = services_for(recorder, allow_port=((port, port),), allow_dest=LOOPBACK)
    assert services.timings is (recorder_class is Recorder)
    side = ScriptedSide(request_for(port))
    tunnel = Tunnel(services, side)
    run(tunnel)
    assert tunnel.status == 200 and tunnel.dialled == f"127.0.0.1:{port}"
    if services.timings:
        assert tunnel.started <= tunnel.resolved_at <= tunnel.connected_at
    else:
        assert tunnel.resolved_at == tunnel.connected_at == 0.0
    side.relay.abort("shutdown")  # type: ignore[union-attr]


def test_only_the_json_access_log_asks_for_step_times(tmp_path):
    from gconnect.ops.accesslog import open_access_log
    from gconnect.ops.metrics import Stats
    from gconnect.ops.observer import ProcessObserver

    assert ProcessObserver(Stats(), None).observer().timings is False
    for log_format, timings in (("text", False), ("json", True)):
        access_log = open_access_log(str(tmp_path / log_format), log_format)
        assert ProcessObserver(Stats(), access_log).observer().timings is timings
        access_log.close()
