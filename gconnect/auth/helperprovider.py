"""Squid's helpers as gconnect's: ``--auth-helper`` (``auth_param basic``) as a
provider, and ``--external-acl-helper`` (``external_acl_type``) as one more check
per tunnel.

The basic helper answers for every user name (``ERR`` does not say whether the
name exists), so a chain gives it the last word. Its ``OK`` may carry
``user=`` (the name to use from now on, as Squid does), and ``group=`` or
``tag=`` (the first that is set), which selects a ``[groups.NAME]`` rules table.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shlex
import time
from collections.abc import Callable

from ..config import Config
from ..errors import ExternalDeniedError
from .helpers import HelperPool
from .identity import Credentials, Identity, Rejected

#: Decisions remembered at most by the external ACL; the oldest go first
#: (Squid's external_acl_type cache=262144 is larger: its entries are its only
#: record; ours are one tuple each).
MAX_ACL_CACHE_ENTRIES = 65_536


def helper_argv(command: str) -> list[str]:
    """A helper's command line, split as a POSIX shell would (no shell runs it)."""
    argv = shlex.split(command)
    if not argv:
        raise ValueError("empty helper command line")
    return argv


def group_of(pairs: dict[str, str]) -> str | None:
    """The rules table a helper's answer names: ``group=``, else ``tag=``."""
    return pairs.get("group") or pairs.get("tag") or None


class HelperProvider:
    """``--auth-helper``: a Squid basic auth helper decides."""

    name = "helper"

    def __init__(self, config: Config) -> None:
        self.pool = HelperPool(
            "auth",
            helper_argv(config.auth_helper),
            config.auth_helper_children,
            config.auth_helper_concurrency,
            config.auth_helper_timeout,
        )
        self.ttl = config.auth_helper_ttl
        self.negative_ttl = config.auth_helper_negative_ttl

    def describe(self) -> str:
        pool = self.pool
        return (
            f"Squid basic auth helper {shlex.join(pool.argv)} ({len(pool.children)} children, "
            f"concurrency {pool.concurrency}, ttl {self.ttl:g} s, negative ttl {self.negative_ttl:g} s)"
        )

    def identify(self, credentials: Credentials) -> Identity | None:
        if credentials.scheme != "basic":
            return None
        reply = self.pool.ask([credentials.user, credentials.password])
        if reply.result != "OK":
            raise Rejected(self.name, f"helper refused {credentials.user!r}: {reply.message or 'ERR'}")
        return Identity(reply.pairs.get("user") or credentials.user, self.name, group_of(reply.pairs))

    def reload(self) -> bool:
        return True

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()


class ExternalAcl:
    """``--external-acl-helper``: asked ``user client host port`` per tunnel,
    after the rules; ``ERR`` refuses (403). Answers are cached per key, ``OK``
    for ``external_acl_ttl``, ``ERR`` for ``external_acl_negative_ttl``."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = HelperPool(
            "external acl",
            helper_argv(config.external_acl_helper),
            config.external_acl_children,
            0,
            config.auth_helper_timeout,
        )
        self.ttl = config.external_acl_ttl
        self.negative_ttl = config.external_acl_negative_ttl
        self._clock = clock
        self._key = os.urandom(32)
        self._cache: dict[bytes, tuple[bool, float]] = {}

    def describe(self) -> str:
        return (
            f"external ACL helper {shlex.join(self.pool.argv)} (user client host port; "
            f"ttl {self.ttl:g} s, negative ttl {self.negative_ttl:g} s)"
        )

    def check(self, identity: Identity | None, client_ip: str, host: str, port: int) -> None:
        """Raise ExternalDeniedError (403) if the helper says ERR for this
        user, client and target; AuthUnavailableError (503) if it cannot say."""
        user = identity.user if identity is not None else "-"
        fields: list[str | bytes] = [user, client_ip, host, str(port)]
        key = hmac.new(self._key, "\0".join(map(str, fields)).encode("utf-8", "surrogateescape"), hashlib.sha256)
        digest = key.digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            allowed = cached[0]
        else:
            allowed = self.pool.ask(fields).result == "OK"
            ttl = self.ttl if allowed else self.negative_ttl
            if ttl:
                if len(self._cache) >= MAX_ACL_CACHE_ENTRIES:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[digest] = (allowed, self._clock() + ttl)
        if not allowed:
            raise ExternalDeniedError(f"the external ACL refuses {user} from {client_ip} to {host}:{port}")

    def clear(self) -> None:
        self._cache.clear()

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()
