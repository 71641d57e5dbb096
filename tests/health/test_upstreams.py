"""Routing follows health (issue 12 item 3): an upstream given as a name whose SRV records
sipzone's own DNS serves, two targets (sipp answering OPTIONS and calls on 127.0.0.2 and
127.0.0.3), calls through the edge to the second while the first is dead at start, to the
first once it answers, to the second again when it stops answering, and every target down
fails open."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import NamedTuple

from tests.conftest import Cli, free_port
from tests.health.conftest import OPTIONS_OK, Sites, SiteSim
from tests.health.test_serve import Serve, metric, wait_for

# The core: answers OPTIONS (the edge's probes) and takes a call (INVITE, ACK, BYE).
CORE_UAS = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="core">
  <recv request="OPTIONS" optional="true" next="options"/>
  <recv request="INVITE"/>
  <send><![CDATA[

SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]core[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:core@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send next="end"><![CDATA[

SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <label id="options"/>
{OPTIONS_OK}  <label id="end"/>
</scenario>
"""

# A phone's call through the edge to a name it serves; ACK and BYE follow its Record-Route.
PHONE_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phone">
  <send retrans="500"><![CDATA[

INVITE sip:bob@voip.example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:alice@voip.example.com>;tag=[pid]ph[call_number]
To: <sip:bob@voip.example.com>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:alice@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[

ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:alice@voip.example.com>;tag=[pid]ph[call_number]
To: <sip:bob@voip.example.com>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[

BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:alice@voip.example.com>;tag=[pid]ph[call_number]
To: <sip:bob@voip.example.com>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


def core_dns(
    cli: Cli, serve: Serve, db: str, a: SiteSim | Where, b: SiteSim | Where, *ttl: str
) -> int:
    """sipzone's DNS for the core's name pbx.core.test: SRV _sip._udp to site a (priority 10,
    the resolver's region) and b (priority 20).  It does not probe (the test harness turns
    probes off), so it keeps listing a dead target: failing over is the edge's doing."""
    for args in (
        ("init",),
        ("zone", "add", "core.test"),
        ("tenant", "add", "core"),
        ("site", "add", "a", "--vip", a.address, "--region", "near", "--network", "127.0.0.0/8",
         "--host", "a.core.test", "--port-udp", str(a.port), "--port-tcp", "0"),
        ("site", "add", "b", "--vip", b.address, "--region", "far", "--host", "b.core.test",
         "--port-udp", str(b.port), "--port-tcp", "0"),
        ("domain", "add", "pbx.core.test", "--owner", "core"),
    ):  # fmt: skip
        cli(*args, db=db, check=True)
    port = free_port()
    serve("--dns", f"127.0.0.1:{port}", *ttl, db=db)
    return port


class Where(NamedTuple):
    address: str
    port: int


def edge_store(cli: Cli, edge_port: int, *check: str) -> None:
    """The edge's store: site edge (its upstream sip:pbx.core.test), voip.example.com."""
    for args in (
        ("init",),
        ("site", "add", "edge", "--vip", "127.0.0.1", "--region", "near", "--port-udp",
         str(edge_port), "--port-tcp", "0", "--upstream", "sip:pbx.core.test", *check),
        ("tenant", "add", "acme"),
        ("domain", "add", "voip.example.com", "--owner", "acme"),
    ):  # fmt: skip
        cli(*args, check=True)


def call(edge_port: int, workdir: Path) -> str | None:
    """One call through the edge; the address of the core that answered it, None if failed."""
    scenario = workdir / "phone.xml"
    scenario.write_text(PHONE_UAC, encoding="latin-1")
    for old in workdir.glob("phone_*_messages.log"):
        old.unlink()
    result = subprocess.run(
        ["sipp", "-sf", str(scenario), f"127.0.0.1:{edge_port}", "-i", "127.0.0.1",
         "-p", str(free_port()), "-m", "1", "-timeout", "8", "-recv_timeout", "3000",
         "-nostdin", "-trace_msg"],
        cwd=workdir, capture_output=True, timeout=30,
    )  # fmt: skip
    if result.returncode != 0:
        return None
    log = next(workdir.glob("phone_*_messages.log")).read_text(encoding="latin-1")
    found = re.search(r"^Contact: <sip:core@([0-9.]+):", log, re.M)
    return found.group(1) if found else None


def upstreams_in_status(cli: Cli, node: str) -> list[tuple[str, str, int, str, bool]]:
    nodes = json.loads(cli("status", "--json", check=True).stdout)["nodes"]
    return [
        (u["upstream"], u["target"], u["priority"], u["state"], u["in_use"])
        for n in nodes
        if n["name"] == node
        for u in n["upstreams"]
    ]


def test_an_upstream_located_by_srv_fails_over_to_the_second_target_and_back(
    sipp: Sites, cli: Cli, serve: Serve, tmp_path: Path, sqlite_url: str
) -> None:
    a = sipp("127.0.0.2", scenario=CORE_UAS)
    b = sipp("127.0.0.3", scenario=CORE_UAS)
    dns_port = core_dns(cli, serve, f"sqlite:///{tmp_path / 'core.db'}", a, b)
    edge_port, metrics_port = free_port(), free_port()
    edge_store(cli, edge_port, "--check-interval", "0.5", "--check-timeout", "0.4",
               "--check-failures", "2", "--check-successes", "1")  # fmt: skip
    a.stop()  # dead before the edge starts
    server = serve("--sip", f"udp:127.0.0.1:{edge_port}", "--site", "edge", "--upstream-dns",
                   f"127.0.0.1:{dns_port}", "--health-checks", "--metrics",
                   f"127.0.0.1:{metrics_port}", "--node-name", "edge1")  # fmt: skip
    calls = tmp_path / "calls"
    calls.mkdir()
    up = "sipzone_upstream_target_up"
    labels = '{{target="udp {}:{}",upstream="sip:pbx.core.test"}}'
    a_up, b_up = labels.format(a.address, a.port), labels.format(b.address, b.port)
    to_b = f"upstream sip:pbx.core.test now sends to udp {b.address}:{b.port}"

    def logged(text: str) -> int:
        return sum(text in line for line in list(server.lines))

    # Located and probed once before the edge answered: the first call avoids the dead one.
    assert metric(metrics_port, "sipzone_upstream_targets", '{upstream="sip:pbx.core.test"}') == 2
    assert (metric(metrics_port, up, a_up), metric(metrics_port, up, b_up)) == (0, 1)
    assert call(edge_port, calls) == b.address

    a.start()
    wait_for(lambda: metric(metrics_port, up, a_up) == 1, 20)
    assert call(edge_port, calls) == a.address  # priority 10 again once it answers

    a.stop()
    wait_for(lambda: metric(metrics_port, up, a_up) == 0, 20)
    assert call(edge_port, calls) == b.address  # the second target takes the call
    assert logged(to_b) == 2  # at start, and now
    # `sipzone status` shows the node's view: priority order, state, where calls go.
    expected = [
        ("sip:pbx.core.test", f"udp {a.address}:{a.port}", 10, "down", False),
        ("sip:pbx.core.test", f"udp {b.address}:{b.port}", 20, "up", True),
    ]
    wait_for(lambda: upstreams_in_status(cli, "edge1") == expected, 10)

    fail_open = ("sipzone_upstream_fail_open", '{upstream="sip:pbx.core.test"}')
    assert metric(metrics_port, *fail_open) == 0
    b.stop()
    wait_for(lambda: metric(metrics_port, *fail_open) == 1, 20)
    assert logged("every target of upstream sip:pbx.core.test is down; sending to udp 127.0.0.2")


def test_an_upstream_is_located_again_when_its_ttl_runs_out(
    cli: Cli, serve: Serve, tmp_path: Path
) -> None:
    """The core's DNS answers with TTL 1 (held at locate.MIN_TTL, 5 s): once site b leaves
    its SRV records, the edge's next location has one target left, with no request asking."""
    core_db = f"sqlite:///{tmp_path / 'core.db'}"
    a, b = Where("127.0.0.2", free_port()), Where("127.0.0.3", free_port())
    dns_port = core_dns(cli, serve, core_db, a, b, "--ttl", "1")
    edge_port, metrics_port = free_port(), free_port()
    edge_store(cli, edge_port)
    server = serve("--sip", f"udp:127.0.0.1:{edge_port}", "--site", "edge", "--upstream-dns",
                   f"127.0.0.1:{dns_port}", "--metrics", f"127.0.0.1:{metrics_port}")  # fmt: skip
    targets = ("sipzone_upstream_targets", '{upstream="sip:pbx.core.test"}')
    assert metric(metrics_port, *targets) == 2
    cli("site", "remove", "b", db=core_db, check=True)
    wait_for(lambda: metric(metrics_port, *targets) == 1, 20)
    assert any(
        f"upstream sip:pbx.core.test now locates to udp {a.address}:{a.port} (priority 10" in line
        for line in server.lines
    )
