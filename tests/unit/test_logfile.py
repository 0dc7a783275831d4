"""The access log's timestamps, in process (the file is /dev/null)."""

from __future__ import annotations

import time

import pytest

from gconnect.ops.logfile import LogFile

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1796602102.0, "2026-12-07T00:08:22.000Z"),
        (1796602102.0015, "2026-12-07T00:08:22.001Z"),
        (1796602102.5, "2026-12-07T00:08:22.500Z"),
        (1796602102.9999, "2026-12-07T00:08:22.999Z"),
        (1796602103.0, "2026-12-07T00:08:23.000Z"),
    ],
)
def test_a_timestamp_is_utc_with_milliseconds_truncated(now, expected):
    log = LogFile("/dev/null")
    try:
        assert log.timestamp(now) == expected
    finally:
        log.close()


def test_the_same_second_keeps_its_text_and_the_next_one_changes_it():
    log = LogFile("/dev/null")
    try:
        first = log.timestamp(1796602102.25)
        assert log.timestamp(1796602102.75)[:19] == first[:19]
        assert log.timestamp(1796602103.25)[:19] != first[:19]
        assert time.strptime(first[:19], "%Y-%m-%dT%H:%M:%S")
    finally:
        log.close()
