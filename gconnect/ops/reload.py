"""SIGHUP in a proxy process: re-read the auth file, and the config file's policy.

Options given on the command line or by ``GCONNECT_*`` keep winning over the
file, as they did at start. A file that does not check out is refused with its
reason, and the running policy stays.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from .configfile import ConfigFileError, user_table_warnings
from .options import config_from_file

log = logging.getLogger("gconnect")


def reload(proxy: Any, path: str | None, command_line: dict[str, Any]) -> None:
    """Apply what SIGHUP applies to *proxy* (a :class:`gconnect.proxy.Proxy`); never raises for a bad file."""
    # The auth file is re-read on every SIGHUP, with or without a config file.
    proxy.reload_auth()
    if not path:
        if proxy.services.auth is None:
            log.warning("SIGHUP: nothing to reload (no --config file)")
        return
    try:
        new = config_from_file(path, command_line)
    except (ConfigFileError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        log.error("SIGHUP: keeping the current configuration: %s", message)
        return
    fixed = proxy.reload(new)
    if fixed:
        log.warning("SIGHUP: these need a restart and keep their running values: %s", ", ".join(fixed))
    for warning in user_table_warnings(proxy.config):
        log.warning("SIGHUP: %s", warning)
    log.info("SIGHUP: policy reloaded (generation %d)", proxy.generation)
