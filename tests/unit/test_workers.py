"""Worker arguments without a process: what a worker is told rebuilds the configuration."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(90)


def test_worker_arguments_rebuild_the_configuration():
    # Workers are started with what was given to the parent: nothing may be lost.
    from gconnect.ops.cli import serve
    from gconnect.ops.options import build_config, given_on_command_line, worker_arguments

    argv = [
        "--allow-port", "443", "--allow-port", "8000-8999", "--allow-dest", "10.0.0.0/8",
        "--deny-dest", "10.1.0.0/16", "--dns-server", "127.0.0.1:5353", "--dns-server", "[::1]:53",
        "--idle-timeout", "12.5", "--hosts-file", "", "--relay", "copy", "--log-format", "json",
        "--upstream", "http://us%40er:p%3Ass@127.0.0.1:3129", "--upstream-for", "*.corp.example",
        "--proxy-protocol", "--proxy-protocol-from", "127.0.0.0/8", "--workers", "3",
    ]  # fmt: skip
    ctx = serve.make_context("serve", argv)
    config = build_config(**ctx.params)
    args = worker_arguments(given_on_command_line(ctx, ctx.params), None)
    assert "--workers" not in args
    rebuilt = build_config(**serve.make_context("serve", [*args, "--workers", "3"]).params)
    assert rebuilt == config
