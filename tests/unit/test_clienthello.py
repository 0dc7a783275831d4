"""The ClientHello reader: real ClientHellos from Python's ssl (memory BIOs, no
socket), fed whole, one byte at a time and re-fragmented across records;
crafted malformed ones; hypothesis properties (only its own error on any
bytes, no read past a declared length, names in canonical form). The
ClientHellos of openssl s_client and Chromium: tests/interop."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gconnect.tunnel.clienthello import (
    MAX_CLIENT_HELLO_BYTES,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
)
from gconnect.tunnel.names import canonical_address, canonical_name

from .budget import examples

pytestmark = pytest.mark.timeout(120)


def python_hello(server_hostname: str | None, **options: object) -> bytes:
    """A real ClientHello from Python's ssl, without a socket."""
    context = ssl.create_default_context()
    if server_hostname is None:
        context.check_hostname = False
    for key, value in options.items():
        setattr(context, key, value)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        session.do_handshake()
    return outgoing.read()


def message(extensions: list[tuple[int, bytes]] | None, version: int = 0x0303, session_id: bytes = b"") -> bytes:
    """A ClientHello handshake message (header included) with these extensions (None: no block)."""
    body = version.to_bytes(2, "big") + bytes(32) + bytes([len(session_id)]) + session_id
    body += b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00"
    if extensions is not None:
        block = b"".join(kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data for kind, data in extensions)
        body += len(block).to_bytes(2, "big") + block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni(*names: bytes, name_type: int = 0) -> tuple[int, bytes]:
    entries = b"".join(bytes([name_type]) + len(n).to_bytes(2, "big") + n for n in names)
    return 0, len(entries).to_bytes(2, "big") + entries


def records(msg: bytes, size: int = 2**14) -> bytes:
    """*msg* as handshake records of at most *size* bytes each."""
    pieces = [msg[i : i + size] for i in range(0, len(msg), size)]
    return b"".join(b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece for piece in pieces)


def grown(msg: bytes) -> bytes:
    """*msg* with one byte more in its body than its parts declare."""
    return b"\x01" + (len(msg) - 3).to_bytes(3, "big") + msg[4:] + b"\x00"


def read(data: bytes, step: int = 0) -> ClientHello | None:
    """Feed *data* whole (step 0) or *step* bytes at a time; the first answer."""
    reader = ClientHelloReader()
    chunks = [data] if not step else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        result = reader.feed(chunk)
        if result is not None:
            return result
    return None


def outcome(data: bytes) -> str:
    with pytest.raises(ClientHelloError) as info:
        read(data)
    return info.value.outcome


@pytest.mark.parametrize("step", [0, 1, 7, 300])
def test_python_client_hello(step):
    hello = python_hello("Allowed.Test")
    assert read(hello, step) == ClientHello("allowed.test", False, len(hello))


def test_python_client_hello_without_name():
    hello = python_hello(None)
    assert read(hello) == ClientHello(None, False, len(hello))
    # Python's ssl sends no server_name for an IP address (RFC 6066 §3).
    assert read(python_hello("127.0.0.1")).server_name is None


def test_tls12_only_client():
    hello = python_hello("old.test", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert read(hello, 1).server_name == "old.test"


@pytest.mark.parametrize("size", [1, 2, 100, 511])
def test_split_across_records(size):
    hello = python_hello("split.test")
    fragmented = records(hello[5:], size)
    assert len(fragmented) > len(hello)
    assert read(fragmented, 3) == ClientHello("split.test", False, len(fragmented))


def test_bytes_after_the_client_hello_are_not_read():
    hello = python_hello("a.test")
    trailing = b"\x17\x03\x03\x00\x05early"
    assert read(hello + trailing) == ClientHello("a.test", False, len(hello))


def test_idn_and_ech():
    name = b"xn--bcher-kva.example"
    assert read(records(message([sni(name)]))).server_name == "xn--bcher-kva.example"
    data = records(message([sni(b"Public.Example"), (0xFE0D, b"\x00\x01\x02")]))
    assert read(data) == ClientHello("public.example", True, len(data))


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"GET / HTTP/1.1\r\n", "not_tls"),
        (b"SSH-2.0-OpenSSH_9.9\r\n", "not_tls"),
        (b"\x16\x02\x00", "not_tls"),
        (b"\x80\x2e\x01\x03\x01", "not_tls"),  # an SSLv2-compatible hello
        (records(b"\x02\x00\x00\x00"), "not_tls"),  # a ServerHello
        (b"\x16\x03\x01\x00\x00", "malformed"),  # a zero-length record
        (b"\x16\x03\x01\x40\x01", "malformed"),  # over 2^14
        (records(message([])[:4]) + b"\x17\x03\x03\x00\x01x", "malformed"),
        (records(message([sni(b"a.test"), sni(b"b.test")])), "malformed"),  # two server_name extensions
        (records(message([sni(b"a.test", b"b.test")])), "malformed"),  # two names
        (records(message([sni(b"a.test", name_type=1)])), "malformed"),
        (records(message([sni(b"bad name.test")])), "malformed"),
        (records(message([sni("é.test".encode())])), "malformed"),
        (records(message([sni(b"a.test")], version=0x0203)), "malformed"),
        (records(message([sni(b"a.test")], session_id=bytes(33))), "malformed"),
        (records(message([(0, b"")])), "malformed"),  # an empty server_name extension
        (records(grown(message([sni(b"a.test")]))), "malformed"),  # a byte after the extensions
        (records(b"\x01" + (2**20).to_bytes(3, "big")), "oversize"),
    ],
)
def test_refusals(data, expected):
    assert outcome(data) == expected


def test_no_extensions_and_ip_literal_name():
    assert read(records(message(None))).server_name is None
    assert read(records(message([sni(b"192.0.2.7")]))).server_name == "192.0.2.7"


def test_oversize_across_many_records():
    # Tiny records of a message within the cap can still take more bytes than it.
    msg = message([(0x15, bytes(MAX_CLIENT_HELLO_BYTES // 3)), sni(b"a.test")])
    assert outcome(records(msg, 2)) == "oversize"
    assert read(records(msg)).server_name == "a.test"


def test_a_finished_reader_refuses_more():
    reader = ClientHelloReader()
    assert reader.feed(python_hello("a.test")) is not None
    with pytest.raises(ClientHelloError):
        reader.feed(b"x")


# --- properties ------------------------------------------------------------------------


def feed_all(chunks: list[bytes]) -> ClientHello | None:
    reader = ClientHelloReader()
    try:
        for chunk in chunks:
            result = reader.feed(chunk)
            if result is not None:
                return result
    except ClientHelloError:
        return None
    return None


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_any_bytes_only_its_own_error(chunks, as_tls):
    if as_tls and chunks:
        chunks[0] = b"\x16\x03\x01" + chunks[0]
    result = feed_all(chunks)
    if result is not None:
        assert result.server_name is None or canonical(result.server_name) == result.server_name


REAL = python_hello("mutate.example")
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_ABCXN", min_size=1, max_size=20)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(REAL) - 1), st.integers(0, 255), st.integers(1, 64))
def test_mutated_real_hello(index, value, step):
    data = REAL[:index] + bytes([value]) + REAL[index + 1 :]
    result = feed_all([data[i : i + step] for i in range(0, len(data), step)])
    if result is not None:
        assert result.consumed <= len(data)
        assert result.server_name is None or canonical(result.server_name) == result.server_name


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(label, min_size=1, max_size=4).map(".".join),
    st.lists(st.tuples(st.integers(1, 0xFFFF).filter(lambda k: k != 0xFE0D), st.binary(max_size=40)), max_size=5),
    st.binary(max_size=40),
    st.integers(1, 300),
)
def test_structured_hellos(name, others, trailing, size):
    kinds = [kind for kind, _ in others]
    msg = message([*others, sni(name.encode())])
    data = records(msg, size)
    reader = ClientHelloReader()
    try:
        result = reader.feed(data + trailing)
    except ClientHelloError as exc:
        # Only a duplicate extension type or a name outside the grammar is refused.
        assert exc.outcome == "malformed"
        assert len(set(kinds)) != len(kinds) or _not_a_name(name)
        return
    assert result is not None
    # Trailing bytes are never read: the answer ends where the records holding the message end.
    assert result.consumed == len(data)
    assert result.server_name == canonical(name)
    for cut in range(0, len(data), max(1, len(data) // 7)):
        assert ClientHelloReader().feed(data[:cut]) is None


def canonical(name: str) -> str:
    """The canonical form of a name, or of an IP literal a client put in server_name."""
    return canonical_address(name) or canonical_name(name)


def _not_a_name(name: str) -> bool:
    try:
        canonical(name)
    except ValueError:
        return True
    return False


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_declared_lengths_bound_every_read(declared_list, declared_name):
    # server_name whose inner lengths disagree with its extension's: never read beyond it.
    name = b"a.test"
    entries = b"\x00" + declared_name.to_bytes(2, "big") + name
    ext = declared_list.to_bytes(2, "big") + entries
    msg = message([(0, ext), (0x10, b"\x00\x03\x02h2")])
    try:
        result = read(records(msg))
    except ClientHelloError as exc:
        assert exc.outcome == "malformed"
        assert (declared_list, declared_name) != (len(entries), len(name))
        return
    assert (declared_list, declared_name) == (len(entries), len(name))
    assert result is not None and result.server_name == "a.test"
