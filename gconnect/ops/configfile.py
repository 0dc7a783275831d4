"""The TOML configuration file: read, check key by key, render back.

Keys are the ``serve`` options' long names without the dashes in front:
``allow-port`` and ``allow_port`` are the same key (TOML style varies; both
spell the one option). Values are what the option takes on the command line,
as a string or number; a repeatable option takes a list (a single value is a
one-element list). The command line and ``GCONNECT_*`` variables override the
file.

With authentication, ``[users.NAME]`` tables hold one user's policy, with the
keys of :data:`USER_KEYS`; :func:`read` returns them under ``"users"`` as
``{name: {option_name: [text, ...]}}`` (one text for :data:`USER_SINGLE_KEYS`). ``[groups.NAME]`` tables take the same
keys and apply to users a provider puts in group NAME (a helper's ``group=`` or
``tag=``, a token's group claim, a client certificate's OU), under ``"groups"``;
a user's own table wins over their group's.

This module never touches click's command objects itself: the caller passes
a ``check(name, value)`` that converts one value the way the option does and
raises ``ValueError`` with a human message when it cannot.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ..config import POOL_KEYS, Config, UpstreamPool, hostport

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


#: The keys a ``[users.NAME]`` or ``[groups.NAME]`` table may hold (option names, underscore form).
USER_KEYS = (
    "allow_host",
    "deny_host",
    "allow_port",
    "allow_dest",
    "deny_dest",
    "tls_name_check",
    "rate_per_user",
    "burst_per_user",
    "quota_bytes",
    "forward_port",
)
#: Of those, the keys that take one value, not a list.
USER_SINGLE_KEYS = ("tls_name_check", "rate_per_user", "burst_per_user", "quota_bytes")
#: The per-identity rules tables: by user name, and by the group a provider names.
TABLE_KINDS = ("users", "groups")


class ConfigFileError(Exception):
    """The file cannot be used; the message names the file, line and key."""


def _line_of(text: str, key: str) -> int | None:
    """The 1-based line defining *key* (tomllib reports no positions for values)."""
    quoted = r"""["']?""" + re.escape(key) + r"""["']?"""
    pattern = re.compile(r"^\s*(" + quoted + r"\s*=|\[\s*" + quoted + r"\s*\])")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def _where(path: str, text: str, key: str) -> str:
    line = _line_of(text, key)
    return f"{path}:{line}" if line is not None else path


def read(
    path: str,
    known: Iterable[str],
    multiple: Iterable[str],
    check: Callable[[str, Any], None],
) -> dict[str, Any]:
    """Parse *path*; return ``{option_name: value}`` ready for click's default_map.

    *known* are the accepted names (underscore form), *multiple* the repeatable
    ones. Raises ConfigFileError on a syntax error, an unknown or repeated key,
    a table where a value belongs, or a value *check* rejects.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: {exc}") from None
    known = set(known)
    multiple = set(multiple)
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        where = _where(path, text, key)
        if key in TABLE_KINDS and isinstance(value, dict):
            values[key] = _users(path, text, value, check, key)
            continue
        if name not in known:
            raise ConfigFileError(f"{where}: unknown key {key!r}")
        if name in values:
            raise ConfigFileError(f"{where}: {key!r} is given twice (with '-' and with '_')")
        if name in _TABLES and (
            isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value))
        ):
            try:
                value = _TABLES[name](value)
            except ValueError as exc:
                raise ConfigFileError(f"{where}: {key}: {exc}") from None
        if isinstance(value, dict):
            raise ConfigFileError(f"{where}: {key!r} must be a value, not a table")
        if name in multiple:
            value = value if isinstance(value, list) else [value]
            value = [_text(v) for v in value]
        elif isinstance(value, list):
            raise ConfigFileError(f"{where}: {key!r} takes one value, not a list")
        else:
            value = _text(value)
        try:
            check(name, value)
        except ValueError as exc:
            raise ConfigFileError(f"{where}: {key}: {exc}") from None
        values[name] = value
    return values


def _users(
    path: str, text: str, tables: dict[str, Any], check: Callable[[str, Any], None], kind: str = "users"
) -> dict[str, Any]:
    """The ``[users.NAME]`` (or ``[groups.NAME]``) tables as ``{name: {option_name: [text, ...] or text}}``."""
    users: dict[str, Any] = {}
    for user, table in tables.items():
        where = _where(path, text, f"{kind}.{user}")
        if not isinstance(table, dict):
            raise ConfigFileError(f"{where}: '{kind}.{user}' must be a table ([{kind}.{user}])")
        rules: dict[str, Any] = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in USER_KEYS:
                raise ConfigFileError(f"{where}: [{kind}.{user}]: unknown key {key!r} (one of {', '.join(USER_KEYS)})")
            if name in rules:
                raise ConfigFileError(f"{where}: [{kind}.{user}]: {key!r} is given twice (with '-' and with '_')")
            if name in USER_SINGLE_KEYS:
                if isinstance(value, (list, dict)):
                    raise ConfigFileError(f"{where}: [{kind}.{user}] {key!r} takes one value, not a list")
                value = _text(value)
            else:
                value = [_text(v) for v in (value if isinstance(value, list) else [value])]
            try:
                check(name, value)
            except ValueError as exc:
                raise ConfigFileError(f"{where}: [{kind}.{user}] {key}: {exc}") from None
            rules[name] = value
        users[user] = rules
    return users


def _pool_texts(tables: Any) -> list[str]:
    """``[upstreams.NAME]`` tables as the ``--upstreams`` texts they mean."""
    if not isinstance(tables, dict):
        raise ValueError("expected [upstreams.NAME] tables")
    texts = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"{name}: expected a table (urls = [...], strategy = ...)")
        urls = table.get("urls", [])
        tokens = [name, *(urls if isinstance(urls, list) else [urls])]
        for key, value in table.items():
            if key == "urls":
                continue
            if key.replace("_", "-") not in POOL_KEYS or isinstance(value, (list, dict)):
                raise ValueError(f"{name}: unknown key {key!r} (urls, {', '.join(POOL_KEYS)})")
            tokens.append(f"{key}={_text(value)}")
        if any(not isinstance(token, str) or not token or " " in token for token in tokens):
            raise ValueError(f"{name}: urls and values are strings without spaces")
        texts.append(" ".join(tokens))
    return texts


def _route_texts(tables: Any) -> list[str]:
    """``[[routes]]`` (``for = [...]``, ``via = "..."``) as ``--routes`` texts, in order."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError("expected [[routes]] tables")
    texts = []
    for table in tables:
        if set(table) != {"for", "via"}:
            raise ValueError(f"a route has 'for' and 'via', not {sorted(table)}")
        patterns = table["for"] if isinstance(table["for"], list) else [table["for"]]
        if not all(isinstance(p, str) and "," not in p and "=" not in p for p in patterns):
            raise ValueError(f"route 'for': host globs and CIDRs, got {table['for']!r}")
        texts.append(",".join(patterns) + "=" + str(table["via"]))
    return texts


#: Options the file may also give as TOML tables, and how those become option texts.
_TABLES: dict[str, Callable[[Any], list[str]]] = {"upstreams": _pool_texts, "routes": _route_texts}


def _text(value: Any) -> Any:
    # Numbers become the text the option gets on the command line (allow_port = 443
    # is "443"); click converts text for every option type.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return str(value)


def _toml_value(name: str, value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if name in ("listen", "dns_server"):
        return "[" + ", ".join(f'"{hostport(*v)}"' for v in value) + "]"
    if name == "metrics_listen":
        return f'"{hostport(*value)}"'
    if name in ("allow_port", "forward_port", "tls_name_check_ports"):
        return "[" + ", ".join(f'"{lo}"' if lo == hi else f'"{lo}-{hi}"' for lo, hi in value) + "]"
    if name == "upstream" and len(value) == 1:
        return f'"{value[0]}"'  # one parent, as most files spell it
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return f'"{value}"'
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(config: Config) -> str:
    """The effective configuration as TOML that :func:`read` accepts back
    (a parent proxy's password is shown as ``***``)."""
    lines = []
    for field in dataclasses.fields(config):
        if field.name in TABLE_KINDS or (field.name in _TABLES and getattr(config, field.name)):
            continue  # tables come after every plain key
        name = field.name.replace("_", "-")
        lines.append(f"{name} = {_toml_value(field.name, getattr(config, field.name))}")
    for kind in TABLE_KINDS:
        for rules in getattr(config, kind):
            lines += ["", f"[{kind}.{_toml_key(rules.name)}]"]
            for key in USER_KEYS:
                value = getattr(rules, key)
                if value is not None and (value or not key.startswith("deny")):
                    lines.append(f"{key.replace('_', '-')} = {_toml_value(key, value)}")
    for pool in config.upstreams:
        lines += ["", *_render_pool(pool)]
    for route in config.routes:
        # In order: the first matching route wins.
        patterns = ", ".join(f'"{p}"' for p in route.patterns)
        lines += ["", "[[routes]]", f"for = [{patterns}]", f'via = "{route.via}"']
    return "\n".join(lines) + "\n"


def _toml_key(name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_user_policies(config: Config) -> str:
    """Each user's effective policy (the global one with the table applied), as
    TOML comments; users without a table get the global policy."""
    lines = ["", "# Effective policy per user (users without a table get the global policy):"]
    for kind in TABLE_KINDS:
        for rules in getattr(config, kind):
            effective = config.for_user(rules)
            values = "; ".join(f"{k.replace('_', '-')} = {_toml_value(k, getattr(effective, k))}" for k in USER_KEYS)
            lines.append(f"#   {rules.name if kind == 'users' else 'group ' + rules.name}: {values}")
    return "\n".join(lines) + "\n"


def render_auth_chain(config: Config, providers: list[str]) -> str:
    """The authentication chain as TOML comments: *providers* are the
    authenticator's own lines, in the order tried (``Authenticator.describe``)."""
    if not providers:
        return "\n# Authentication: none (every client may use the proxy)\n"
    lines = ["", "# Authentication chain (the first provider that knows the user decides):"]
    lines += [f"#   {line}" for line in providers]
    if config.external_acl_helper:
        lines.append(f"# External ACL after the rules: {config.external_acl_helper!r}")
    return "\n".join(lines) + "\n"


def user_table_warnings(config: Config) -> list[str]:
    """Tables that cannot apply: no --auth-file, or a user the file does not hold."""
    if (config.users or config.groups) and not config.auth_providers():
        return ["[users.*] and [groups.*] tables have no effect without authentication (no client has a user name)"]
    if not config.users or config.auth_providers() != ("htpasswd",):
        return []  # other providers' users cannot be listed
    try:
        with open(config.auth_file, encoding="utf-8", errors="replace") as f:
            known = {line.split(":", 1)[0] for line in f if ":" in line and not line.lstrip().startswith("#")}
    except OSError as exc:
        return [f"cannot read auth-file {config.auth_file} to check the [users.*] tables: {exc.strerror}"]
    return [
        f"[users.{rules.name}]: no user {rules.name!r} in auth-file {config.auth_file}; the table has no effect"
        for rules in config.users
        if rules.name not in known
    ]


def _render_pool(pool: UpstreamPool) -> list[str]:
    urls = ", ".join(f'"{url}"' for url in pool.urls)
    lines = [f"[upstreams.{pool.name}]", f"urls = [{urls}]"]
    for key, field in POOL_KEYS.items():
        lines.append(f"{key} = {_toml_value(field, getattr(pool, field))}")
    return lines
