"""Trunks on real sockets: the edge keeps each target of a Teams trunk alive with OPTIONS over
mutual TLS, presenting the certificate of the trunk's base FQDN, against simulated Microsoft
SIP proxies (tests/sip/msproxy.py) at sip, sip2 and sip3.pstnhub.microsoft.com pinned to
loopback addresses; a 503 with Retry-After moves calls to the next target."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import REGISTRY

from sipzone.model.certificates import parse_certificate
from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.model.trunks import parse_trunk
from sipzone.sip import SipConfig
from sipzone.sip.message import Response, parse_message
from sipzone.sip.tls import TlsPolicy
from sipzone.sip.trunks import TargetHealth, choose, options_request, retry_after
from tests.sip.conftest import EdgeThread, free_port, make_snapshot
from tests.sip.msproxy import MicrosoftProxy
from tests.tlscerts import Issued, issue

MS_NAMES = ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com")
INTERVAL = 2


@dataclasses.dataclass
class Teams:
    """The tests' CA, our certificates (a default one, and the Teams one), the proxies."""

    ca_file: str
    voip: Issued
    teams: Issued
    proxies: list[MicrosoftProxy]

    def snapshot(self, revision: int = 1, **trunk: object) -> Snapshot:
        certs = tuple(
            parse_certificate(name, c.chain.read_bytes(), c.key.read_bytes())
            for name, c in (("voip", self.voip), ("teams", self.teams))
        )
        args: dict[str, object] = {
            "targets": [p.uri for p in self.proxies], "base": "teams.example.com",
            "options_interval": INTERVAL, "profile": "teams",
        }  # fmt: skip
        args.update(trunk)
        made = parse_trunk("teams", **args)  # type: ignore[arg-type]
        return dataclasses.replace(
            make_snapshot(revision=revision), certificates=certs, trunks=(made,)
        )

    def config(self) -> SipConfig:
        hosts = tuple((p.name, p.host) for p in self.proxies)
        return SipConfig(
            listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"),
            tls=TlsPolicy(upstream_ca=self.ca_file),
            hosts=hosts,
        )


@pytest.fixture
def teams(tmp_path: Path) -> Iterator[Teams]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proxies = [
        MicrosoftProxy(name, issue(ca, tmp_path, name), str(ca_file), host=f"127.0.0.{i + 2}")
        for i, name in enumerate(MS_NAMES)
    ]
    for proxy in proxies:
        proxy.start()
    voip = issue(ca, tmp_path, "voip.example.com")
    ours = issue(ca, tmp_path, "*.teams.example.com", "teams.example.com")
    yield Teams(str(ca_file), voip, ours, proxies)
    for proxy in proxies:
        proxy.close()


def within(seconds: float, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the stall bound"
        time.sleep(0.05)


def health(edge: EdgeThread, proxy: MicrosoftProxy) -> TargetHealth:
    assert edge.service is not None and edge.service.trunks is not None
    return edge.service.trunks.health[("teams", proxy.uri)]


def health_of(edge: EdgeThread, target: str) -> TargetHealth:
    """``target``'s health, or a fresh one while its probe task has not started."""
    assert edge.service is not None and edge.service.trunks is not None
    return edge.service.trunks.health.get(("teams", target), TargetHealth("teams", target))


def test_every_target_gets_options_at_the_interval_over_mutual_tls(teams: Teams) -> None:
    edge = EdgeThread(SnapshotHolder(teams.snapshot()), teams.config()).start()
    try:
        for proxy in teams.proxies:
            within(4 * INTERVAL + 5, lambda p=proxy: len(p.options()) >= 3)  # type: ignore[misc]
        tls_port = edge.port("tls")
        for proxy in teams.proxies:
            assert proxy.violations == []
            first, second, third = proxy.options()[:3]
            # Our Teams certificate, not the default one, and SNI the target's name.
            assert "teams.example.com" in first.client_names
            assert "voip.example.com" not in first.client_names
            assert set(proxy.server_names) == {proxy.name}
            contact = first.request.fields[b"Contact"]
            assert contact == b"<sip:teams.example.com:%d;transport=tls>" % tls_port
            assert first.request.fields[b"x-ms-sbc"].startswith(b"sipzone/")
            gaps = [second.at - first.at, third.at - second.at]
            assert all(g >= INTERVAL * 0.85 for g in gaps), gaps  # jitter is ±10 %
            state = health(edge, proxy)
            assert state.up is True and state.last_response == "200 OK"
            assert state.latency_ms is not None
            up = REGISTRY.get_sample_value(
                "sipzone_trunk_target_up", {"trunk": "teams", "target": proxy.uri}
            )
            assert up == 1
    finally:
        edge.stop()


def test_a_503_with_retry_after_fails_calls_over_to_the_next_target(teams: Teams) -> None:
    sip, sip2, _ = teams.proxies
    sip.unavailable = 3
    edge = EdgeThread(SnapshotHolder(teams.snapshot()), teams.config()).start()
    try:
        within(5, lambda: health(edge, sip).up is False and health(edge, sip2).up is True)
        trunk = teams.snapshot().trunks[0]
        now = datetime.now(UTC)
        assert choose(trunk, edge.service.trunks.health, now) == sip2.uri  # type: ignore[union-attr]
        assert health(edge, sip).last_response == "503 Service Unavailable"
        count = len(sip.options())
        sip.unavailable = None
        # Not asked again before the Retry-After has passed, then up again on a 200.
        time.sleep(2)
        assert len(sip.options()) == count
        within(3 + INTERVAL + 5, lambda: health(edge, sip).up is True)
        assert choose(trunk, edge.service.trunks.health, datetime.now(UTC)) == sip.uri  # type: ignore[union-attr]
        assert sip.violations == [] and sip2.violations == []
    finally:
        edge.stop()


def test_a_target_without_our_certificate_roots_goes_down(teams: Teams, tmp_path: Path) -> None:
    # The proxies' CA is not the one the operator supplied: the handshake fails, no OPTIONS.
    other = trustme.CA()
    other_file = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(other_file))
    config = dataclasses.replace(teams.config(), tls=TlsPolicy(upstream_ca=str(other_file)))
    edge = EdgeThread(SnapshotHolder(teams.snapshot()), config).start()
    try:
        within(8, lambda: all(health(edge, p).up is False for p in teams.proxies))
        assert health(edge, teams.proxies[0]).last_response.startswith("TLS failed")
        assert all(p.options() == [] for p in teams.proxies)
    finally:
        edge.stop()


def test_a_trunk_added_live_is_probed_and_one_removed_falls_silent(teams: Teams) -> None:
    empty = dataclasses.replace(teams.snapshot(), trunks=())
    edge = EdgeThread(SnapshotHolder(empty), teams.config()).start()
    sip = teams.proxies[0]
    try:
        time.sleep(0.5)
        assert sip.options() == []
        edge.publish(teams.snapshot(revision=2))
        within(5, lambda: len(sip.options()) >= 1)
        edge.publish(dataclasses.replace(teams.snapshot(revision=3), trunks=()))
        time.sleep(0.2)
        count = len(sip.options())
        time.sleep(INTERVAL * 1.5)
        assert len(sip.options()) == count
        assert edge.service.trunks.health == {}  # type: ignore[union-attr]
    finally:
        edge.stop()


def test_a_target_not_located_yet_is_probed_again_within_a_second_not_an_interval(
    teams: Teams,
) -> None:
    """A trunk added live is located while its probes start; a first probe that finds no
    address must not leave the target unprobed for a whole interval (here 30 s)."""
    nowhere = "sip:nowhere.invalid:5061;transport=tls"  # no pin, no DNS: never located
    snapshot = teams.snapshot(targets=[nowhere], options_interval=30)
    edge = EdgeThread(SnapshotHolder(snapshot), teams.config()).start()
    try:
        within(5, lambda: health_of(edge, nowhere).misses >= 3)
        assert "not resolved" in health_of(edge, nowhere).last_response
    finally:
        edge.stop()


# -- sans-IO ----------------------------------------------------------------------------------


def test_health_transitions() -> None:
    now = datetime.now(UTC)
    h = TargetHealth("t", "sip:a.example;transport=tls")
    assert h.usable(now)  # never probed: usable
    assert h.missed("timeout", now) is True and h.up is False  # never up: down at once
    assert h.answered(200, "OK", 0.01, 60, now, None) is True and h.up is True
    assert h.missed("timeout", now) is False and h.up is True  # one miss is not enough
    assert h.missed("timeout", now) is True and h.up is False
    h.answered(200, "OK", 0.01, 60, now, None)
    assert h.answered(503, "Busy", 0.01, 60, now, 30) is True
    assert not h.usable(now)
    assert h.unavailable_until is not None
    assert (h.unavailable_until - now).total_seconds() == 30
    assert h.answered(403, "Forbidden", 0.01, 60, now, None) is False and h.up is False


def test_options_request_and_retry_after() -> None:
    trunk = parse_trunk(
        "teams", ["sip:sip.pstnhub.microsoft.com:5061;transport=tls"], "teams.example.com",
        profile="teams", sbc_header="acme/sbc/1.0",
    )  # fmt: skip
    data = options_request(trunk, trunk.targets[0], "sip.pstnhub.microsoft.com", 5061, 7)
    message = parse_message(data)
    assert message.fields[b"Contact"] == b"<sip:teams.example.com:5061;transport=tls>"
    assert message.fields[b"x-ms-sbc"] == b"acme/sbc/1.0"
    assert message.fields[b"CSeq"] == b"7 OPTIONS"
    assert b"sips:" not in data
    plain = dataclasses.replace(trunk, profile="sip")
    assert b"X-MS-SBC" not in options_request(plain, trunk.targets[0], "h", 5061, 1)
    for header, expected in ((b"120", 120), (b"5 (busy);duration=1", 5), (b"soon", None)):
        response = parse_message(
            b"SIP/2.0 503 Busy\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nRetry-After: " + header
            + b"\r\nContent-Length: 0\r\n\r\n"
        )  # fmt: skip
        assert isinstance(response, Response)
        assert retry_after(response) == expected


# -- the real `sipzone serve` on a store the CLI changes ---------------------------------------


def test_serve_probes_a_trunk_added_live_and_trunk_list_shows_its_state(
    teams: Teams, cli: Callable[..., Any], serve: Callable[..., Any]
) -> None:
    cli("init", check=True)
    for name, cert in (("voip", teams.voip), ("teams", teams.teams)):
        cli("cert", "add", name, "--cert", str(cert.chain), "--key", str(cert.key), check=True)
    sip, sip2, sip3 = teams.proxies
    sip.unavailable = 600
    pins = [a for p in teams.proxies for a in ("--sip-host", f"{p.name}={p.host}")]
    serve(
        "--sip", f"tls:127.0.0.1:{free_port()}", "--workers", "2",
        "--tls-upstream-ca", teams.ca_file, *pins,
    )  # fmt: skip
    targets = [a for p in teams.proxies for a in ("--target", p.uri)]
    cli("trunk", "add", "teams", *targets, "--base", "teams.example.com", "--profile", "teams",
        "--options-interval", "30", "--sbc-header", "acme/edge/2.0", check=True)  # fmt: skip

    def states() -> list[list[tuple[str, str]]]:
        [trunk] = json.loads(cli("trunk", "list", "--json", check=True).stdout)
        return [[(s["state"], s["last_response"]) for s in t["state"]] for t in trunk["targets"]]

    expected = [
        [("down", "503 Service Unavailable")], [("up", "200 OK")], [("up", "200 OK")]
    ]  # fmt: skip
    within(10, lambda: states() == expected)  # one row per target: one worker probes
    assert len(sip2.options()) == 1 and len(sip3.options()) == 1
    assert sip2.options()[0].request.fields[b"x-ms-sbc"] == b"acme/edge/2.0"
    assert "up" in cli("trunk", "list", check=True).stdout
    assert all(p.violations == [] for p in teams.proxies)
