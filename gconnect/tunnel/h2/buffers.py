"""The large buffers of the HTTP/2 sessions, one set per process, lent for one step.

A session reads the client into a ciphertext and a plaintext buffer of
:data:`READ_BYTES` each, and a stream relay reads its target into DATA frames
laid out in a :class:`~gconnect.tunnel.h2.frames.DataFramer`. Owned by each
connection, those buffers stayed touched for its whole life: an idle
connection that once moved a bulk transfer kept up to a MiB of them.

Here they are lent for one step and given back before anything waits:

* :data:`READS` lends a pair of read buffers for one read and the handing on
  of its DATA (what a stream keeps is copied before that returns). It is a
  pool, not one pair: a step that switched greenlets before giving its pair
  back would have another connection take a pair of its own, never overwrite
  this one. Normally one pair serves the process.
* :func:`framer` is the process's one framer: a relay uses it from
  ``read_slots`` to ``send_read`` inside one read callback, which runs in the
  hub and so cannot switch to another greenlet in between. Clients whose
  largest frames differ make it lay itself out again (an allocation), never
  hold one buffer each.
"""

from __future__ import annotations

from .frames import DataFramer

#: Ciphertext read from the client at once: many DATA frames, delivered to their
#: targets as one write per stream.
READ_BYTES = 256 * 1024
#: Pairs kept for the next read; a pool larger than one only fills if a read step
#: switched greenlets, and more than this is left to the allocator.
KEPT_PAIRS = 2


class ReadBuffers:
    """A pool of (ciphertext, plaintext) buffer pairs of *size* octets each."""

    def __init__(self, size: int, kept: int) -> None:
        self.size = size
        self.kept = kept
        self._free: list[tuple[memoryview, memoryview]] = []

    def take(self) -> tuple[memoryview, memoryview]:
        """A pair that is the caller's alone until :meth:`give`."""
        if self._free:
            return self._free.pop()
        return memoryview(bytearray(self.size)), memoryview(bytearray(self.size))

    def give(self, pair: tuple[memoryview, memoryview]) -> None:
        """*pair* is no longer used (nothing refers into it)."""
        if len(self._free) < self.kept:
            self._free.append(pair)


READS = ReadBuffers(READ_BYTES, KEPT_PAIRS)
_framers: dict[int, DataFramer] = {}


def framer(payload_bytes: int) -> DataFramer:
    """The process's framer for DATA runs of at most *payload_bytes* (``--chunk-bytes``)."""
    found = _framers.get(payload_bytes)
    if found is None:  # one size per --chunk-bytes a reload ever set
        found = _framers[payload_bytes] = DataFramer(payload_bytes)
    return found
