"""Our own outbound connections, remembered so that a tunnel that loops back
into this proxy is recognised when it arrives (a loop through a name or an
address the static check did not know). Sans I/O but for one getsockname()."""

from __future__ import annotations

from typing import Any


class OwnConnections:
    """Our outbound connections as (local, remote) address pairs. A client that
    arrives from one of them, at that very address, is this proxy talking to
    itself (a loop through a name or address the static check did not know)."""

    def __init__(self) -> None:
        #: Local address -> the remote addresses connected from it, with counts
        #: (Linux lets one local port serve several destinations).
        self._locals: dict[tuple, dict[tuple, int]] = {}

    def add(self, pair: tuple) -> None:
        local, remote = pair
        remotes = self._locals.get(local)
        if remotes is None:
            self._locals[local] = {remote: 1}
        else:
            remotes[remote] = remotes.get(remote, 0) + 1

    def remove(self, pair: tuple) -> None:
        local, remote = pair
        remotes = self._locals.get(local)
        if remotes is None or remote not in remotes:
            return
        if remotes[remote] > 1:
            remotes[remote] -= 1
        elif len(remotes) > 1:
            del remotes[remote]
        else:
            del self._locals[local]

    def is_own(self, address: tuple, client: Any) -> bool:
        # Cheap test first: getsockname() only when the client's address matches.
        remotes = self._locals.get(address[:2])
        return remotes is not None and client.getsockname()[:2] in remotes
