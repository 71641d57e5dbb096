"""`sipzone dump` / `sipzone restore` (issue 13): a store moved to another database through
a dump comes back byte for byte; a restore is all or nothing, into an empty store only."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from sipzone.model.trunks import TrunkState
from sipzone.sip import BRANCH_SECRET, BRANCH_SECRET_PREVIOUS
from sipzone.store.repository import Store
from tests.cli.conftest import Run
from tests.tlscerts import issue


def fill(url: str, where: Path) -> None:
    """A store with a bit of everything a dump must carry: a pending claim, a namespace
    grant, a TLS certificate (made here by a throwaway CA), an API token and trunks among
    them (and what an edge saw of one, which is not carried)."""
    store = Store(url)
    store.init()
    store.ensure_secret(BRANCH_SECRET)
    store.rotate_secret(BRANCH_SECRET, BRANCH_SECRET_PREVIOUS)
    store.update_tenant("provider", brand_name="Provider Ltd", upstream="sip:core.example.net")
    store.add_tenant("acme", brand_name="Äcme Téléphonie", web_url="https://acme.example")
    store.add_tenant("cust", "acme", support_email="help@cust.example")
    store.add_tenant("zed")
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.com")
    store.add_zone("xn--bcher-kva.example")
    store.add_site(
        "eu1", vips=["192.0.2.10", "2001:db8::10"], region="eu", networks=["10.0.0.0/8"],
        ports={"udp": 5060, "tcp": 5060, "tls": 5061}, upstream="sip:eu.core.example.net",
    )  # fmt: skip
    store.add_site("us1", vips=["198.51.100.10"], region="us", host="sip.us.example.com", weight=50)
    store.set_site_health("us1", False)
    store.add_domain("*.teams.example.com", "acme")
    store.add_domain("c42.teams.example.com", "cust")
    store.add_domain("bücher.example", "zed")
    store.add_domain("voip.example.com")
    store.set_email_domain("mail.example.com", "mx.example.com")
    store.grant_namespace("acme", "acme.example.com")
    Store(url, actor="acme").add_domain("brand.example.org")  # outside our zones: pending
    issued = issue(trustme.CA(), where, "*.teams.example.com", "teams.example.com")
    store.add_certificate("teams", issued.chain.read_text(), issued.key.read_text())
    store.create_token("acme", "billing")
    ms = [f"sip:{h}.pstnhub.microsoft.com:5061;transport=tls" for h in ("sip", "sip2", "sip3")]
    store.add_trunk("teams", ms, "teams.example.com", 30, "teams", "Acme/SBC/1.0")
    store.add_trunk("carrier-1", ["sip:192.0.2.50:5060;transport=tcp"], "voip.example.com")
    now = datetime.now(UTC)
    store.record_trunk_states("node1", [TrunkState("teams", ms[0], True, "200 OK", 9.0, now, now)])
    store.close()


@pytest.mark.parametrize("secrets", [False, True])
def test_dump_restore_into_postgresql_dump_is_byte_identical(
    sipzone: Run, sqlite_url: str, pg_url: str, tmp_path: Path, secrets: bool
) -> None:
    fill(sqlite_url, tmp_path / "certs")
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    flag = ["--with-secrets"] if secrets else []
    sipzone("dump", "--output", str(first), *flag, check=True)
    assert first.stat().st_mode & 0o777 == 0o600
    sipzone("init", "--db", pg_url, check=True)
    restored = sipzone("restore", str(first), "--db", pg_url, "--json", check=True)
    document = json.loads(first.read_text())
    assert json.loads(restored.stdout)["revision"] == document["revision"]  # serials go on
    sipzone("dump", "--output", str(second), *flag, "--db", pg_url, check=True)
    if secrets:
        assert first.read_bytes() == second.read_bytes()
    else:  # a certificate without its key cannot be restored: all else comes back exactly
        assert json.loads(second.read_text()) == {**document, "certificates": []}
        assert "not restored" in restored.stderr and "cert add" in restored.stderr

    keys = set(document["settings"])
    assert (BRANCH_SECRET in keys) is secrets
    source, copy = Store(sqlite_url), Store(pg_url)
    try:
        same_key = source.settings()[BRANCH_SECRET] == copy.settings()[BRANCH_SECRET]
        assert same_key is secrets  # without secrets, the copy keeps the key its init made
        assert source.load_snapshot().matcher.match("x.teams.example.com") is not None
        for name in ("c42.teams.example.com", "xn--bcher-kva.example", "a.teams.example.com"):
            assert copy.check(name)[0] is not None
        assert [s.name for s in copy.list_sites()] == ["eu1", "us1"]
        assert copy.tenants().view("cust").brand.brand_name == "Äcme Téléphonie"
        claim = copy.domain("brand.example.org")  # still waiting for its proof, not admitted
        assert claim.pending and claim.challenge == source.domain("brand.example.org").challenge
        assert copy.check("brand.example.org")[0] is None
        assert copy.list_grants() == [("acme", "acme.example.com")]
        # Certificates and tokens are secrets: in the copy with them, listed only without.
        assert [c.name for c in copy.list_certificates()] == (["teams"] if secrets else [])
        assert [c["names"] for c in document["certificates"]] == [
            ["*.teams.example.com", "teams.example.com"]
        ]
        assert ("key_pem" in document["certificates"][0]) is secrets
        assert len(copy.list_tokens("acme")) == (1 if secrets else 0)
        assert [t["name"] for t in document["trunks"]] == ["carrier-1", "teams"]
        assert copy.list_trunks() == source.list_trunks()  # every field, the order of targets
        assert copy.trunk_states() == [] and len(source.trunk_states()) == 1  # observations
    finally:
        source.close()
        copy.close()


def test_restore_is_all_or_nothing_and_only_into_an_empty_store(
    sipzone: Run, sqlite_url: str, tmp_path: Path
) -> None:
    fill(sqlite_url, tmp_path / "certs")
    good = tmp_path / "good.json"
    sipzone("dump", "--output", str(good), check=True)
    refused = sipzone("restore", str(good))  # into the store it came from
    assert refused.returncode == 2
    assert "needs an empty store" in refused.stderr

    target = f"sqlite:///{tmp_path / 'target.db'}"
    sipzone("init", "--db", target, check=True)
    before = sipzone("dump", "--db", target, check=True).stdout
    document = json.loads(good.read_text())
    cases = {
        "not-json": ("{", "not JSON"),
        "other": (json.dumps({"format": "other"}), "not a sipzone dump"),
        "version": (json.dumps({**document, "version": 99}), "dump version 99"),
    }
    bad_domain = {**document, "domains": [*document["domains"], {"name": "*.com", "owner": "acme"}]}
    cases["domain"] = (json.dumps(bad_domain), "top-level")
    bad_site = json.loads(good.read_text())
    bad_site["sites"][1]["vips"] = ["192.0.2.300"]
    cases["site"] = (json.dumps(bad_site), "192.0.2.300")
    orphan = {**document, "tenants": [t for t in document["tenants"] if t["name"] != "acme"]}
    cases["orphan"] = (json.dumps(orphan), "parent 'acme'")
    teams = next(t for t in document["trunks"] if t["name"] == "teams")
    plain = {**teams, "targets": ["sip:sip.pstnhub.microsoft.com:5061"]}
    for name, trunks, reason in (
        ("trunk-target", [plain], "the teams profile needs ;transport=tls"),
        ("trunk-shape", [{**teams, "targets": "sip:x"}], "targets must be URIs"),
        ("trunk-interval", [{**teams, "options_interval": 1}], "give 2 to 3600 seconds"),
        ("trunk-twice", [*document["trunks"], teams], "the dump holds trunk 'teams' twice"),
    ):
        cases[name] = (json.dumps({**document, "trunks": trunks}), reason)
    for name, (text, reason) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        result = sipzone("restore", str(path), "--db", target)
        assert result.returncode == 2, name
        assert reason in result.stderr, (name, result.stderr)
        assert sipzone("dump", "--db", target, check=True).stdout == before, name
    assert sipzone("restore", str(tmp_path / "absent.json"), "--db", target).returncode == 2
    sipzone("restore", str(good), "--db", target, check=True)
