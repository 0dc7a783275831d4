"""Pools and routes without a socket: option texts, strategies, routes, summed worker figures."""

from __future__ import annotations

import socket
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gconnect.config import Config, ParentProxy, Route, UpstreamPool
from gconnect.ops.cli import main
from gconnect.ops.options import config_from_file
from gconnect.ops.paramtypes import RouteSpec, UpstreamPoolSpec, parse_pool, parse_route
from gconnect.tunnel.pool import Pool, Router

pytestmark = pytest.mark.timeout(90)


def test_pool_and_route_texts_convert_and_render_back():
    pool = parse_pool("corp http://u:p%40ss@p1.test:3128 http://p2.test:3128 strategy=first max-fails=3 check=connect")
    assert pool == UpstreamPool(
        "corp", (ParentProxy("p1.test", 3128, "u", "p@ss"), ParentProxy("p2.test", 3128)), "first", 3, check="connect"
    )
    assert parse_pool(UpstreamPoolSpec().to_text(pool)) == pool
    route = parse_route("*.Corp.Example,10.0.0.0/8=corp")
    assert route == Route(("*.corp.example", "10.0.0.0/8"), "corp")
    assert parse_route(RouteSpec().to_text(route)) == route
    for bad in ("corp", "corp http://p:1 strategy=random", "corp http://p:1 max-fails=x", "direct http://p:1"):
        with pytest.raises(click.BadParameter):
            parse_pool(bad)
    with pytest.raises(click.BadParameter):
        parse_route("*.corp.example")
    with pytest.raises(ValueError, match="no such upstream pool"):
        Config(routes=(Route(("*.x",), "nowhere"),))


def test_strategies_order_the_parents():
    urls = tuple(ParentProxy(f"p{i}.test", 3128) for i in range(3))

    def firsts(strategy: str, hosts: list[str]) -> list[str]:
        pool = Pool(UpstreamPool("p", urls, strategy), resolver=None, source=None)
        return [pool.order(host)[0].chain.parent.host for host in hosts]

    assert firsts("round-robin", ["a"] * 6) == ["p0.test", "p1.test", "p2.test"] * 2
    assert firsts("first", ["a", "b", "c"]) == ["p0.test"] * 3
    hashed = firsts("hash", ["a.test", "b.test", "a.test", "A.TEST"])
    assert hashed[0] == hashed[2] == hashed[3]
    pool = Pool(UpstreamPool("p", urls, "least-connections"), resolver=None, source=None)
    pool.parents[0].active, pool.parents[1].active, pool.parents[2].active = 2, 0, 1
    assert [m.chain.parent.host for m in pool.order("x")] == ["p1.test", "p2.test", "p0.test"]


def test_routes_first_match_wins_and_upstream_for_maps_onto_the_default_pool():
    config = Config(
        upstream=(ParentProxy("d.test", 1),),
        upstream_for=("*.test",),
        upstreams=(UpstreamPool("corp", (ParentProxy("c.test", 1),)),),
        routes=(Route(("*.corp.test", "10.0.0.0/8"), "corp"), Route(("db.corp.test",), "direct")),
    )
    router = Router(config, resolver=None, source=None)
    route = router.route
    assert route("x.corp.test", 0) is route("db.corp.test", 0) is router.pools["corp"]  # the first route wins
    assert route("10.1.2.3", socket.AF_INET) is router.pools["corp"]
    assert route("web.test", 0) is router.pools["default"]  # --upstream-for
    assert route("example.com", 0) is None  # direct
    # --upstream without --upstream-for: what no route takes goes to the default pool, as before.
    everything = Router(Config(upstream=config.upstream), resolver=None, source=None)
    assert everything.route("example.com", 0) is everything.pools["default"]


def test_config_file_tables_and_check_config_prints_routes_in_order(tmp_path: Path):
    path = tmp_path / "gconnect.toml"
    path.write_text(
        'upstream = ["http://d1.test:3128", "http://d2.test:3128"]\n'
        "[upstreams.corp]\n"
        'urls = ["http://u:secret@p1.corp.test:3128", "http://p2.corp.test:3128"]\n'
        'strategy = "least-connections"\nmax-fails = 2\nfail-timeout = 5\ncheck = "connect"\n'
        "[[routes]]\n"
        'for = ["*.corp.test", "10.0.0.0/8"]\nvia = "corp"\n'
        "[[routes]]\n"
        'for = "intranet.test"\nvia = "direct"\n'
    )
    config = config_from_file(str(path), {})
    assert [p.host for p in config.upstream] == ["d1.test", "d2.test"]
    (corp,) = config.upstreams
    assert (corp.strategy, corp.max_fails, corp.fail_timeout, corp.check) == ("least-connections", 2, 5.0, "connect")
    assert config.routes == (Route(("*.corp.test", "10.0.0.0/8"), "corp"), Route(("intranet.test",), "direct"))
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "secret" not in out and "[upstreams.corp]" in out
    assert out.index('for = ["*.corp.test", "10.0.0.0/8"]') < out.index('for = ["intranet.test"]')
    again = tmp_path / "again.toml"
    again.write_text(out.replace("u:***@", "u:secret@"))
    assert config_from_file(str(again), {}) == config
    path.write_text('[upstreams.corp]\nurls = ["http://p:1"]\nweight = 3\n')
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code != 0 and "unknown key 'weight'" in result.output


def test_workers_upstream_figures_add_up_and_up_means_every_worker_agrees():
    from gconnect.ops.workermetrics import add_counters, add_gauges, empty_snapshot

    one = {**empty_snapshot(), "upstream_up": [["p", "u1", 1], ["p", "u2", 1]]}
    one["upstream_tunnels"] = [["p", "u1", "ok", 3], ["p", "u2", "timeout", 1]]
    two = {**empty_snapshot(), "upstream_up": [["p", "u1", 1], ["p", "u2", 0]]}
    two["upstream_tunnels"] = [["p", "u1", "ok", 4]]
    old_release = {k: v for k, v in empty_snapshot().items() if not k.startswith("upstream")}
    total = empty_snapshot()
    for snap in (one, two, old_release):
        add_counters(total, snap)
        add_gauges(total, snap)
    assert total["upstream_tunnels"] == [["p", "u1", "ok", 7], ["p", "u2", "timeout", 1]]
    assert total["upstream_up"] == [["p", "u1", 1], ["p", "u2", 0]]


def test_pools_and_routes_from_the_environment(monkeypatch):
    from gconnect.ops.cli import serve
    from gconnect.ops.options import build_config

    monkeypatch.setenv("GCONNECT_UPSTREAMS", "a http://p.test:1 strategy=first; b http://q.test:2;")
    monkeypatch.setenv("GCONNECT_ROUTES", "*.x.test=a 10.0.0.0/8=b")
    config = build_config(**serve.make_context("serve", []).params)
    assert [(p.name, p.strategy) for p in config.upstreams] == [("a", "first"), ("b", "round-robin")]
    assert config.routes == (Route(("*.x.test",), "a"), Route(("10.0.0.0/8",), "b"))
