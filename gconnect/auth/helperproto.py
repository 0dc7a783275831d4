"""Squid's helper protocol, as bytes: what gconnect writes to a helper and how
its answer reads. Pure functions; :mod:`gconnect.auth.helpers` does the I/O.

A request is one line of URL-escaped fields separated by spaces (``auth_param
basic``: ``user password``; ``external_acl_type``: the format's fields, here
``user client-address host port``), preceded by a channel ID when the helper
runs concurrently (``concurrency=N`` > 0)::

    alice s3cr%20t\\n           3 alice s3cr%20t\\n

An answer is one line: the channel ID when concurrent, then ``OK``, ``ERR`` or
``BH`` (broken helper: it could not decide), then ``key=value`` pairs (a value
may be a ``"quoted string"`` with backslash escapes); words that are not pairs
are the old helpers' free-text message (``ERR No such user``)::

    OK user=alice group=staff\\n        3 ERR message="wrong password"\\n
"""

from __future__ import annotations

import dataclasses
import urllib.parse

#: The answers a helper may give (Squid's Helper::Reply result codes).
RESULTS = ("OK", "ERR", "BH")
#: The longest answer line read: Squid's helper buffer is 32 KiB for Negotiate
#: tokens; Basic and external ACL answers are a few dozen bytes.
MAX_REPLY_BYTES = 32 * 1024


class HelperProtocolError(ValueError):
    """An answer that is not Squid's protocol: treated as BH."""


@dataclasses.dataclass(frozen=True)
class Reply:
    """A helper's answer: ``result`` (OK, ERR or BH), its pairs, its free text."""

    result: str
    pairs: dict[str, str] = dataclasses.field(default_factory=dict)
    message: str = ""


def escape(field: str | bytes) -> str:
    """One request field, URL-escaped (RFC 1738, as Squid's rfc1738_escape):
    no space, newline or ``%`` survives, so a field cannot split the line."""
    data = field.encode("utf-8") if isinstance(field, str) else field
    return urllib.parse.quote_from_bytes(data, safe="")


def encode_request(fields: list[str | bytes], channel: int | None = None) -> bytes:
    """The request line for *fields*, with *channel* in front when concurrent."""
    line = " ".join(escape(f) for f in fields)
    if channel is not None:
        line = f"{channel} {line}"
    return line.encode("ascii") + b"\n"


def _words(text: str) -> list[str]:
    """Split on spaces, keeping ``key="a b"`` whole and undoing backslash escapes in quotes."""
    words: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    started = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
            started = True
        elif ch in " \t" and not quoted:
            if started or current:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if quoted:
        raise HelperProtocolError("unterminated quoted string")
    if started or current:
        words.append("".join(current))
    return words


def parse_reply(line: bytes, *, concurrent: bool) -> tuple[int | None, Reply]:
    """``(channel, Reply)`` from one answer line (with or without its newline).

    Raises HelperProtocolError for a line that is not an answer (no result
    word, a missing or non-numeric channel ID, bad UTF-8, unbalanced quotes).
    """
    if len(line) > MAX_REPLY_BYTES:
        raise HelperProtocolError("answer too long")
    try:
        text = line.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError:
        raise HelperProtocolError("answer is not UTF-8") from None
    words = _words(text)
    channel = None
    if concurrent:
        if not words or not words[0].isdigit():
            raise HelperProtocolError(f"answer without a channel ID: {text[:80]!r}")
        channel = int(words.pop(0))
    if not words or words[0] not in RESULTS:
        raise HelperProtocolError(f"answer is not OK, ERR or BH: {text[:80]!r}")
    pairs: dict[str, str] = {}
    message: list[str] = []
    for word in words[1:]:
        key, equals, value = word.partition("=")
        if equals and key and key.replace("-", "").replace("_", "").isalnum():
            pairs[key] = urllib.parse.unquote(value)
        else:
            message.append(word)
    if "message" in pairs and not message:
        message.append(pairs["message"])
    return channel, Reply(words[0], pairs, " ".join(message))
