"""The CLI's API commands: tokens, grants, the audit trail, verifying a claim."""

from __future__ import annotations

import json

from sipzone.store.repository import Store, token_digest
from tests.api.conftest import TxtServer
from tests.api.conftest import txt_server as txt_server  # the fixture, shared
from tests.conftest import Cli


def test_token_create_list_revoke(cli: Cli, sqlite_url: str) -> None:
    cli("init", check=True)
    cli("tenant", "add", "resa", check=True)
    made = cli("token", "create", "--tenant", "resa", "--name", "billing", "--expires", "30")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.splitlines()[-1]
    assert secret.startswith("sz_") and len(secret) == 46
    assert "expires" in made.stdout
    store = Store(sqlite_url)
    found = store.authenticate(secret)
    assert found is not None and found.tenant == "resa"
    listed = json.loads(cli("token", "list", "--json", check=True).stdout)
    assert [(t["tenant"], t["label"], t["revoked_at"]) for t in listed] == [
        ("resa", "billing", None)
    ]
    assert secret not in cli("token", "list").stdout
    assert token_digest(secret) not in cli("token", "list", "--json").stdout
    assert cli("token", "revoke", str(listed[0]["id"]), check=True).returncode == 0
    assert store.authenticate(secret) is None
    again = cli("token", "revoke", str(listed[0]["id"]))
    assert (
        again.returncode == 2
        and again.stderr == f"sipzone: token {listed[0]['id']} is revoked already\n"
    )
    bad = cli("token", "create", "--tenant", "nobody")
    assert (bad.returncode, bad.stderr) == (2, "sipzone: tenant 'nobody' does not exist\n")
    bad = cli("token", "create", "--tenant", "resa", "--expires", "0")
    assert bad.returncode == 2 and "--expires 0" in bad.stderr
    store.close()


def test_grant_and_claim_rules_hold_for_cli_as(cli: Cli) -> None:
    cli("init", check=True)
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("zone", "add", "example.net", check=True)
    cli("tenant", "add", "resa", check=True)
    # the hijack of the issue: a reseller's wildcard over the provider's zone
    hijack = cli("domain", "add", "*.example.net", "--as", "resa")
    assert hijack.returncode == 2 and "no namespace granted" in hijack.stderr
    cli("tenant", "grant", "resa", "--namespace", "resa.example.net", check=True)
    assert cli("domain", "add", "*.resa.example.net", "--as", "resa").returncode == 0
    grants = json.loads(cli("tenant", "grants", "--json", check=True).stdout)
    assert grants == [{"tenant": "resa", "namespace": "resa.example.net"}]
    outside = cli("domain", "add", "brand.example.org", "--as", "resa", check=True)
    assert "brand.example.org" in outside.stdout
    listed = json.loads(cli("domain", "list", "--json", check=True).stdout)
    claim = next(d for d in listed if d["name"] == "brand.example.org")
    assert claim["status"] == "pending"
    assert cli("check", "brand.example.org").returncode == 1


def test_domain_verify(cli: Cli, txt_server: TxtServer) -> None:
    cli("init", check=True)
    cli("tenant", "add", "resa", check=True)
    cli("domain", "add", "*.brand.example.org", "--as", "resa", check=True)
    [claim] = json.loads(cli("domain", "list", "--json", check=True).stdout)
    pending = cli("domain", "verify", "*.brand.example.org", "--resolver", txt_server.address)
    assert pending.returncode == 1 and "still pending" in pending.stdout
    txt_server.records[claim["challenge"]["name"]] = [claim["challenge"]["value"]]
    done = cli("domain", "verify", "*.brand.example.org", "--resolver", txt_server.address)
    assert done.returncode == 0, done.stderr
    assert cli("check", "x.brand.example.org").returncode == 0


def test_audit(cli: Cli) -> None:
    cli("init", check=True)
    cli("tenant", "add", "resa", check=True)
    cli("tenant", "add", "resb", check=True)
    cli("domain", "add", "voip.resa.example", "--owner", "resa", check=True)
    cli("domain", "add", "voip.resb.example", "--owner", "resb", check=True)
    entries = json.loads(cli("audit", "--tenant", "resa", "--json", check=True).stdout)
    assert [(e["op"], e["subject"]) for e in entries] == [
        ("domain.add", "voip.resa.example"),
        ("tenant.add", "resa"),
    ]
    assert entries[0]["origin"] == "shell" and entries[0]["principal"].startswith("shell user")
    assert entries[0]["after"]["owner"] == "resa"
    assert json.loads(cli("audit", "--since", "1h", "--json", check=True).stdout)
    assert json.loads(cli("audit", "--since", "2999-01-01", "--json", check=True).stdout) == []
    bad = cli("audit", "--since", "yesterday")
    assert bad.returncode == 2 and "since 'yesterday'" in bad.stderr
    text = cli("audit", "--limit", "1", check=True).stdout.splitlines()
    assert len(text) == 1 and "voip.resb.example" in text[0]
