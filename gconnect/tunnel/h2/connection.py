"""The ``h2`` package's server connection, with one stream error where it has a connection error.

RFC 9113 §8.1.1: a request whose ``content-length`` disagrees with the DATA
it carries (more DATA than it says, or END_STREAM before that much) is
malformed, and "MUST be treated as a stream error of type PROTOCOL_ERROR".
The ``h2`` package (4.x) counts a stream's DATA against its
``content-length`` and raises ``InvalidBodyLengthError`` from
``receive_data``, which then ends the whole connection with GOAWAY: every
other stream of the client would die with the one that lied.
:class:`ServerConnection` catches that one error where ``h2`` handles a
DATA frame, resets that stream with PROTOCOL_ERROR instead and reports a
:class:`StreamMalformed` event in the frame's place; the DATA of that frame
is never delivered, and the frames before and after it in the same read are
handled as usual.

A ``content-length`` that is not digits, or two that differ, are
malformed the same way; ``h2`` raises a plain ``ProtocolError`` for them while
it takes the HEADERS, and that stream alone is reset too (nothing of it was
delivered: no event).

``_receive_data_frame`` and ``_receive_headers_frame`` are ``h2``'s own
(private) dispatch methods, unchanged from 3.0 to 4.4;
``tests/unit/test_h2_connection.py`` feeds a connection bytes from an ``h2``
client and fails if a release moves them.
"""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.exceptions
from h2.errors import ErrorCodes


class StreamMalformed:
    """A stream's DATA disagreed with its ``content-length``: ``h2`` has
    reset the stream (PROTOCOL_ERROR); ``flow_controlled_length`` is the frame's
    (the session gives back the window of the run of DATA it came in)."""

    __slots__ = ("flow_controlled_length", "stream_id", "why")

    def __init__(self, stream_id: int, flow_controlled_length: int, why: str) -> None:
        self.stream_id = stream_id
        self.flow_controlled_length = flow_controlled_length
        self.why = why

    def __repr__(self) -> str:
        return f"<StreamMalformed stream_id:{self.stream_id}, why:{self.why}>"


class ServerConnection(h2.connection.H2Connection):
    """An ``h2`` server connection whose content-length mismatches are stream errors."""

    def _receive_headers_frame(self, frame: Any) -> tuple[list, list]:
        try:
            return super()._receive_headers_frame(frame)  # type: ignore[no-any-return]
        except h2.exceptions.ProtocolError as exc:
            # A content-length that is not digits, or two that differ: h2 raised after
            # decoding the block (the HPACK state moved on) and opening the stream.
            stream = self.streams.get(frame.stream_id)
            if "content-length" not in str(exc) or stream is None or stream.closed:
                raise
            self.reset_stream(frame.stream_id, ErrorCodes.PROTOCOL_ERROR)
            return [], []

    def _receive_data_frame(self, frame: Any) -> tuple[list, list]:
        try:
            return super()._receive_data_frame(frame)  # type: ignore[no-any-return]
        except h2.exceptions.InvalidBodyLengthError as exc:
            # h2 raised after counting the frame against both windows and the
            # stream's state, before any event: the stream is still open to reset.
            self.reset_stream(frame.stream_id, ErrorCodes.PROTOCOL_ERROR)
            why = f"content-length {exc.expected_length}, DATA {exc.actual_length} bytes"
            return [], [StreamMalformed(frame.stream_id, frame.flow_controlled_length, why)]
