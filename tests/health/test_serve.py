"""`sipzone serve` following site health: sites are sipp processes on 127.0.0.2 and 127.0.0.3;
stopping one takes it out of A, SRV and the email domain, starting it brings it back; drain,
fail open, several nodes' views, and a store that goes away while a site dies."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime

import dns.message
import dns.query
import dns.rdatatype

from sipzone.model.health import HealthCheck
from sipzone.store.repository import NodeBeat, SiteView, Store
from tests.conftest import Cli, Connections, Server, free_port
from tests.health.conftest import Sites, SiteSim

Serve = Callable[..., Server]
CHECK = HealthCheck(interval=0.5, timeout=0.4, failures=2, successes=2)
# How long a change may take before the test calls it stuck: the thresholds' time plus a
# generous second for a busy machine (the measured times are in bench/health).
DOWN_WITHIN = CHECK.interval * CHECK.failures + 3.0
UP_WITHIN = CHECK.interval * CHECK.successes + 3.0


def make_store(url: str, a: SiteSim, b: SiteSim) -> None:
    store = Store(url)
    try:
        store.init()
        store.add_nameserver("ns1.example.org")
        store.add_zone("example.com")
        for name, sim, region in (("a", a, "eu"), ("b", b, "us")):
            store.add_site(
                name, vips=[sim.address], region=region, ports={"udp": sim.port, "tcp": 0},
                check=CHECK,
            )  # fmt: skip
        store.add_domain("voip.example.com")
        store.set_email_domain("mail.example.com")
    finally:
        store.close()


def answer(port: int, name: str, rdtype: str = "A") -> tuple[set[str], int]:
    reply = dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=2)
    texts = {rd.to_text() for rrset in reply.answer for rd in rrset}
    return texts, min((rrset.ttl for rrset in reply.answer), default=-1)


def addresses(port: int, name: str = "voip.example.com") -> set[str]:
    return answer(port, name)[0]


def srv_targets(port: int) -> set[str]:
    return {t.split()[-1] for t in answer(port, "_sip._udp.voip.example.com", "SRV")[0]}


def wait_for(predicate: Callable[[], object], within: float) -> float:
    """Seconds until ``predicate`` holds; fails the test after ``within`` (a stall)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"condition not reached within {within} s")
        time.sleep(0.05)
    return time.monotonic() - start


def metric(port: int, name: str, labels: str = "") -> float | None:
    """The first sample of ``name`` with exactly ``labels`` (or, without, with any labels:
    the runtime's own gauges say which worker and process they are)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    written = re.escape(name + labels) if labels else re.escape(name) + r"(?:\{[^}]*\})?"
    found = re.search(rf"^{written} (\S+)$", body, re.M)
    return float(found.group(1)) if found else None


def start(serve: Serve, url: str, node: str = "n1") -> tuple[Server, int, int]:
    dns_port, metrics_port = free_port(), free_port()
    server = serve("--dns", f"127.0.0.1:{dns_port}", "--metrics", f"127.0.0.1:{metrics_port}",
                   "--health-checks", "--node-name", node, db=url)  # fmt: skip
    return server, dns_port, metrics_port


BOTH = {"127.0.0.2", "127.0.0.3"}


def test_a_dead_site_leaves_the_answers_and_comes_back(
    sipp: Sites, sqlite_url: str, serve: Serve, cli: Cli
) -> None:
    a, b = sipp("127.0.0.2"), sipp("127.0.0.3")
    make_store(sqlite_url, a, b)
    server, port, metrics_port = start(serve, sqlite_url)
    assert addresses(port) == BOTH and answer(port, "voip.example.com")[1] == 300
    a.stop()
    wait_for(lambda: addresses(port) == {"127.0.0.3"}, DOWN_WITHIN)
    assert srv_targets(port) == {"b.example.com."}
    assert answer(port, "mail.example.com") == ({"127.0.0.3"}, 30)
    assert answer(port, "voip.example.com")[1] == 30  # short while a site is down
    assert metric(metrics_port, "sipzone_site_up", '{site="a"}') == 0
    assert metric(metrics_port, "sipzone_site_up", '{site="b"}') == 1
    assert len([line for line in server.lines if "site a out of DNS answers" in line]) == 1
    a.start()
    wait_for(lambda: addresses(port) == BOTH, UP_WITHIN)
    assert answer(port, "voip.example.com")[1] == 300
    assert srv_targets(port) == {"a.example.com.", "b.example.com."}
    assert len([line for line in server.lines if "site a back in DNS answers" in line]) == 1
    assert metric(metrics_port, "sipzone_site_transitions_total",
                  '{kind="verdict",site="a",to="down"}') == 1  # fmt: skip
    # drain for maintenance: out whatever the probes say, back when undrained
    cli("site", "drain", "b", check=True)
    wait_for(lambda: addresses(port) == {"127.0.0.2"}, 3.0)
    listed = json.loads(cli("site", "list", "--json", check=True).stdout)
    assert [(s["name"], s["state"]) for s in listed] == [("a", "up"), ("b", "drained")]
    assert listed[0]["views"][0]["node"] == "n1" and listed[0]["health_check"]["interval"] == 0.5
    cli("site", "undrain", "b", check=True)
    wait_for(lambda: addresses(port) == BOTH, 3.0)
    assert not [line for line in server.lines if "Traceback" in line]


def test_every_site_down_serves_them_all_and_says_so(
    sipp: Sites, sqlite_url: str, serve: Serve, cli: Cli
) -> None:
    a, b = sipp("127.0.0.2"), sipp("127.0.0.3")
    make_store(sqlite_url, a, b)
    server, port, metrics_port = start(serve, sqlite_url)
    assert metric(metrics_port, "sipzone_health_fail_open") == 0
    a.stop()
    wait_for(lambda: addresses(port) == {"127.0.0.3"}, DOWN_WITHIN)
    b.stop()
    wait_for(lambda: metric(metrics_port, "sipzone_health_fail_open") == 1, DOWN_WITHIN)
    assert addresses(port) == BOTH  # fail open
    assert [line for line in server.lines if "fail open" in line]
    out = cli("site", "list", check=True).stdout.split("\n")
    assert [line.split("\t")[-1] for line in out if line] == ["down", "down"]
    b.start()
    wait_for(lambda: addresses(port) == {"127.0.0.3"}, UP_WITHIN)
    assert metric(metrics_port, "sipzone_health_fail_open") == 0


def test_the_first_answer_already_leaves_out_a_site_that_is_dead_at_start(
    sipp: Sites, sqlite_url: str, serve: Serve, cli: Cli
) -> None:
    """pdns#12557: checks that start only with the first query answer it wrong."""
    a, b = sipp("127.0.0.2"), sipp("127.0.0.3")
    make_store(sqlite_url, a, b)
    a.stop()
    _, port, _ = start(serve, sqlite_url)
    assert addresses(port) == {"127.0.0.3"}
    nodes = json.loads(cli("status", "--json", check=True).stdout)["nodes"]
    assert [(n["name"], n["sites"], n["alive"]) for n in nodes] == [
        ("n1", {"a": "down", "b": "up"}, True)
    ]


def test_a_majority_of_the_nodes_that_see_a_site_decides(
    sipp: Sites, sqlite_url: str, serve: Serve
) -> None:
    """Views of other nodes arrive through the store (written here as those nodes would)."""
    a, b = sipp("127.0.0.2"), sipp("127.0.0.3")
    make_store(sqlite_url, a, b)
    server, port, _ = start(serve, sqlite_url)
    store = Store(sqlite_url)
    now = datetime.now(UTC)

    def others(*views: tuple[str, bool]) -> None:
        for node, up in views:
            beat = NodeBeat(None, (), store.revision(), now)
            store.write_views(node, [SiteView("a", up, now, None if up else "refused")], beat)

    try:
        others(("n2", False))  # n1 sees a up, n2 down: one of two is no majority
        time.sleep(6.0)  # more than a heartbeat: n1 has read n2's view
        assert addresses(port) == BOTH
        others(("n3", False))  # two of three
        wait_for(lambda: addresses(port) == {"127.0.0.3"}, 8.0)
        assert [line for line in server.lines if "2 of 3 node(s) see it down" in line]
        others(("n3", True))
        wait_for(lambda: addresses(port) == BOTH, 8.0)
    finally:
        store.close()


def test_with_the_store_away_probing_goes_on_and_the_store_catches_up(
    sipp: Sites, pg_url: str, serve: Serve, cli: Cli
) -> None:
    a, b = sipp("127.0.0.2"), sipp("127.0.0.3")
    make_store(pg_url, a, b)
    server, port, metrics_port = start(serve, pg_url)
    connections = Connections(pg_url)
    allow = connections.allow

    try:
        wait_for(lambda: metric(metrics_port, "sipzone_store_up") == 1, 8.0)
        allow(False)
        wait_for(lambda: metric(metrics_port, "sipzone_store_up") == 0, 8.0)
        a.stop()
        wait_for(lambda: addresses(port) == {"127.0.0.3"}, DOWN_WITHIN)
    finally:
        connections.close()
    wait_for(lambda: metric(metrics_port, "sipzone_store_up") == 1, 10.0)
    listed = json.loads(cli("site", "list", "--json", db=pg_url, check=True).stdout)
    assert [(s["name"], s["state"]) for s in listed] == [("a", "down"), ("b", "up")]

    def status() -> dict[str, object]:
        [node] = json.loads(cli("status", "--json", db=pg_url, check=True).stdout)["nodes"]
        return dict(node)

    wait_for(lambda: status()["store_down_since"] is None, 5.0)
    assert status()["sites"] == {"a": "down", "b": "up"}
    cli("domain", "add", "back.example.com", db=pg_url, check=True)
    wait_for(lambda: addresses(port, "back.example.com") == {"127.0.0.3"}, 10.0)
    assert not [line for line in server.lines if "Traceback" in line]


def test_two_nodes_on_postgresql_report_and_agree(
    sipp: Sites, pg_url: str, serve: Serve, cli: Cli
) -> None:
    a, b = sipp("127.0.0.2"), sipp("127.0.0.3")
    make_store(pg_url, a, b)
    _, port1, _ = start(serve, pg_url, "n1")
    _, port2, _ = start(serve, pg_url, "n2")
    a.stop()
    for port in (port1, port2):
        wait_for(lambda port=port: addresses(port) == {"127.0.0.3"}, DOWN_WITHIN)

    def views() -> dict[str, dict[str, str]]:
        nodes = json.loads(cli("status", "--json", db=pg_url, check=True).stdout)["nodes"]
        return {n["name"]: n["sites"] for n in nodes}

    both = {"a": "down", "b": "up"}
    wait_for(lambda: views() == {"n1": both, "n2": both}, 8.0)
    [site_a, _] = json.loads(cli("site", "list", "--json", db=pg_url, check=True).stdout)
    assert (site_a["state"], site_a["down_votes"], site_a["voters"]) == ("down", 2, 2)
