"""The session's own DATA framing and receive windows (gconnect.tunnel.h2.frames, .flow),
with bytes alone, checked against hyperframe's parser and serializer."""

from __future__ import annotations

import random

import pytest
from hyperframe.frame import DataFrame, Frame, HeadersFrame, PingFrame, SettingsFrame, WindowUpdateFrame

from gconnect.tunnel.h2.flow import InboundWindows
from gconnect.tunnel.h2.frames import (
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    DataFramer,
    DataRun,
    FrameError,
    FrameReader,
    data_frames,
    window_update,
)

MAX_FRAME = 16_384


def parse_all(data: bytes) -> list[Frame]:
    frames, view = [], memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def data(stream_id: int, payload: bytes, *, end: bool = False, pad: int | None = None) -> DataFrame:
    frame = DataFrame(stream_id, payload)
    if end:
        frame.flags.add("END_STREAM")
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return frame


def conversation() -> list[Frame]:
    rng = random.Random(7)
    return [
        SettingsFrame(0, settings={4: 65535}),
        HeadersFrame(1, b"\x82", flags=["END_HEADERS"]),
        data(1, rng.randbytes(MAX_FRAME)),
        data(1, rng.randbytes(100), pad=20),
        data(1, b""),
        data(3, rng.randbytes(5000)),
        data(3, rng.randbytes(7), end=True),
        data(3, b"after the end"),  # a protocol error h2 finds: its own run
        PingFrame(0, b"12345678"),
        data(1, rng.randbytes(300)),
        WindowUpdateFrame(1, window_increment=10),
    ]


def read(chunks: list[bytes]) -> list[bytes | DataRun]:
    reader = FrameReader(MAX_FRAME)
    items: list[bytes | DataRun] = []
    for chunk in chunks:
        items += reader.feed(chunk)
    return items


@pytest.mark.parametrize("chunking", ["whole", "bytes", "random"])
def test_reader_splits_as_hyperframe_parses_and_joins_runs_of_data(chunking: str) -> None:
    frames = conversation()
    wire = PREFACE + b"".join(f.serialize() for f in frames)
    if chunking == "whole":
        chunks = [wire]
    elif chunking == "bytes":
        chunks = [wire[i : i + 1] for i in range(len(wire))]
    else:
        rng, chunks, at = random.Random(1), [], 0
        while at < len(wire):
            step = rng.randint(1, 40_000)
            chunks.append(wire[at : at + step])
            at += step
    items = read(chunks)
    others = b"".join(item for item in items if isinstance(item, bytes))
    assert others == PREFACE + b"".join(f.serialize() for f in frames if not isinstance(f, DataFrame))
    # A run ends with the read that brought it: merged again here, the runs are the same however fed.
    merged: list = []
    for item in items:
        if isinstance(item, bytes):
            if item and not (merged and merged[-1] == "bytes"):
                merged.append("bytes")
            continue
        last = merged[-1] if merged else None
        if isinstance(last, list) and last[0] == item.stream_id and not last[3]:
            last[1] += b"".join(item.parts)
            last[2] += item.flow_length
            last[3] = item.end_stream
        else:
            merged.append([item.stream_id, b"".join(item.parts), item.flow_length, item.end_stream])
    f = frames
    assert merged == [
        "bytes",
        [1, f[2].data + f[3].data, MAX_FRAME + 100 + 20 + 1, False],
        [3, f[5].data + f[6].data, 5000 + 7, True],
        [3, b"after the end", 13, False],
        "bytes",
        [1, f[9].data, 300, False],
        "bytes",
    ]


def test_what_h2_is_given_for_a_run_is_an_empty_data_frame_with_its_end_stream() -> None:
    (run,) = [i for i in read([PREFACE + data(5, b"x" * 10, end=True).serialize()]) if isinstance(i, DataRun)]
    (frame,) = parse_all(run.h2_frame())
    assert isinstance(frame, DataFrame) and frame.stream_id == 5 and frame.data == b""
    assert "END_STREAM" in frame.flags
    again = parse_all(run.frames())
    assert [(f.stream_id, f.data, "END_STREAM" in f.flags) for f in again] == [(5, b"x" * 10, True)]


def test_a_frame_longer_than_our_max_is_refused_at_its_header() -> None:
    header = (MAX_FRAME + 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    with pytest.raises(FrameError) as caught:
        FrameReader(MAX_FRAME).feed(PREFACE + header)  # the payload has not come
    assert caught.value.code == FRAME_SIZE_ERROR


@pytest.mark.parametrize("body", [b"", b"\x05abcd", b"\x09abcd"])
def test_padding_not_shorter_than_the_frame_is_a_protocol_error(body: bytes) -> None:
    frame = len(body).to_bytes(3, "big") + b"\x00\x08\x00\x00\x00\x01" + body
    with pytest.raises(FrameError) as caught:
        FrameReader(MAX_FRAME).feed(PREFACE + frame)
    assert caught.value.code == PROTOCOL_ERROR


def test_data_frames_and_window_update_are_what_hyperframe_parses() -> None:
    payload = random.Random(3).randbytes(3 * MAX_FRAME + 123)
    frames = parse_all(b"".join(data_frames(7, memoryview(payload), MAX_FRAME)))
    assert [len(f.data) for f in frames] == [MAX_FRAME] * 3 + [123]
    assert b"".join(f.data for f in frames) == payload
    assert all(isinstance(f, DataFrame) and f.stream_id == 7 and not f.flags for f in frames)
    (update,) = parse_all(window_update(9, 2**31 - 1))
    assert isinstance(update, WindowUpdateFrame) and update.stream_id == 9
    assert update.window_increment == 2**31 - 1


def test_windows_refuse_data_past_them_and_update_at_half() -> None:
    windows = InboundWindows(stream_bytes=1000, connection_bytes=1500)
    windows.take(1, 1000)
    with pytest.raises(FrameError) as caught:
        windows.take(1, 1)
    assert caught.value.code == FLOW_CONTROL_ERROR
    assert windows.give_back(1, 499) == b""  # below half a stream window: nothing yet
    updates = parse_all(windows.give_back(1, 1))
    assert [(f.stream_id, f.window_increment) for f in updates] == [(1, 500), (0, 500)]
    windows.take(1, 500)
    with pytest.raises(FrameError):
        windows.take(3, 501)  # the connection has 500 left
    windows.take(3, 500)
    with pytest.raises(FrameError):
        windows.take(5, 1)  # the connection's window is used up


def test_a_forgotten_stream_gives_back_what_it_held_once() -> None:
    windows = InboundWindows(stream_bytes=1000, connection_bytes=2000)
    windows.take(1, 800)
    assert windows.give_back(1, 100) == b""
    (update,) = parse_all(windows.forget(1))
    assert (update.stream_id, update.window_increment) == (0, 800)  # 100 given back + 700 held
    assert windows.give_back(1, 700) == b""  # a late give-back of the forgotten stream: nothing twice
    windows.take(0, 600)  # a stream already gone: the connection's window only
    (update,) = parse_all(windows.give_back(0, 600))
    assert (update.stream_id, update.window_increment) == (0, 600)
    assert windows.connection_left == 2000


@pytest.mark.parametrize(("room", "max_frame"), [(1, MAX_FRAME), (3 * MAX_FRAME, MAX_FRAME), (100_000, 1_000_000)])
def test_the_framer_lays_a_scatter_read_out_as_data_frames(room: int, max_frame: int) -> None:
    framer = DataFramer(65_536)
    payload = random.Random(room).randbytes(min(room, 65_536))
    slots = framer.slots(room, max_frame)
    assert sum(len(slot) for slot in slots) == len(payload)
    at = 0
    for slot in slots:  # what recvmsg_into does
        slot[:] = payload[at : at + len(slot)]
        at += len(slot)
    frames = parse_all(bytes(framer.frames(11, len(payload))))
    assert b"".join(f.data for f in frames) == payload
    assert all(isinstance(f, DataFrame) and f.stream_id == 11 and len(f.data) <= max_frame for f in frames)
    # A short read fills the first slots only.
    framer.slots(room, max_frame)[0][:1] = b"z"
    (frame,) = parse_all(bytes(framer.frames(13, 1)))
    assert (frame.stream_id, frame.data) == (13, b"z")
