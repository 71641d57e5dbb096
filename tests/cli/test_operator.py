"""The CLI as an operator's scripts use it (issue 13): --json on every command that prints
data, idempotent adds, changing sites, removing tenants, `status`, errors that say what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sipzone.store.repository import schema_head
from tests.cli.conftest import Run


def setup(cli: Run) -> None:
    cli("init", check=True)
    cli("tenant", "add", "acme", check=True)
    cli("tenant", "add", "cust", "--parent", "acme", check=True)
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("zone", "add", "example.com", check=True)
    cli("site", "add", "eu1", "--vip", "192.0.2.1", "--region", "eu", check=True)


def snapshot_of(cli: Run) -> list[str]:
    return [cli(what, "list", "--json").stdout for what in ("tenant", "domain", "site", "zone")]


WRITES = [
    (["tenant", "add", "t2"], {"tenant": "t2", "parent": "provider"}),
    (["tenant", "set", "acme", "--brand-name", "ACME"], {"tenant": "acme"}),
    (["domain", "add", "a.example.com", "--owner", "acme"], {"domain": "a.example.com"}),
    (["site", "add", "us1", "--vip", "192.0.2.9", "--region", "us"], {"site": "us1"}),
    (["site", "set", "eu1", "--weight", "7"], {"site": "eu1"}),
    (["site", "health", "eu1", "down"], {"site": "eu1", "healthy": False}),
    (["zone", "add", "example.net"], {"zone": "example.net"}),
    (["email-domain", "set", "mail.example.com"], {"email_domain": "mail.example.com"}),
    (["sip", "rotate-secret"], {}),
]


def test_every_write_says_its_revision_in_json(sipzone: Run) -> None:
    setup(sipzone)
    last = json.loads(sipzone("status", "--json", check=True).stdout)["revision"]
    for args, expected in WRITES:
        out = json.loads(sipzone(*args, "--json", check=True).stdout)
        assert out["revision"] == last + 1, (args, out)
        assert out.items() >= expected.items(), (args, out)
        last = out["revision"]
    for args in (["domain", "remove", "a.example.com"], ["zone", "remove", "example.net"]):
        assert json.loads(sipzone(*args, "--json", check=True).stdout)["revision"] == last + 1
        last += 1


def test_domain_add_exist_ok_is_idempotent_but_never_hides_another_owner(sipzone: Run) -> None:
    setup(sipzone)
    first = json.loads(
        sipzone("domain", "add", "a.example.com", "--owner", "acme", "--json").stdout
    )
    again = sipzone("domain", "add", "a.example.com", "--owner", "acme", "--exist-ok", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout) == {**first, "added": False}
    assert sipzone("domain", "add", "a.example.com", "--owner", "acme").returncode == 2
    other = sipzone("domain", "add", "a.example.com", "--owner", "cust", "--exist-ok")
    assert other.returncode == 2
    assert "exists already (owner 'acme')" in other.stderr
    new = sipzone("domain", "add", "b.example.com", "--exist-ok", "--json")
    assert json.loads(new.stdout)["added"] is True


def test_site_set_changes_only_what_is_given_and_checks_it(sipzone: Run) -> None:
    setup(sipzone)
    sipzone(
        "site", "set", "eu1", "--port-tls", "5061", "--port-udp", "0", "--network", "10.0.0.0/8",
        "--vip", "192.0.2.7", "--vip", "2001:db8::7", "--host", "sip.eu.example.com",
        "--upstream", "sip:core.example.com", "--region", "west", check=True,
    )  # fmt: skip
    (site,) = json.loads(sipzone("site", "list", "--json").stdout)
    assert site["ports"] == {"udp": 0, "tcp": 5060, "tls": 5061}
    assert site["vips"] == ["192.0.2.7", "2001:db8::7"]
    assert site["networks"] == ["10.0.0.0/8"]
    assert (site["host"], site["region"], site["weight"]) == ("sip.eu.example.com", "west", 100)
    assert site["upstream"] == "sip:core.example.com"
    before = snapshot_of(sipzone)
    for args, reason in [
        (["--port-tcp", "0", "--port-tls", "0"], "at least one transport"),
        (["--vip", "nope"], "not an IPv4"),
        (["--weight", "-1"], "weight"),
        (["--port-tls", "70000"], "port"),
        ([], "nothing to change"),
    ]:
        result = sipzone("site", "set", "eu1", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert reason in result.stderr, (args, result.stderr)
    assert sipzone("site", "set", "ghost", "--weight", "1").returncode == 2
    assert sipzone("site", "set", "eu1", "--weight", "1", "--as", "acme").returncode == 2
    assert snapshot_of(sipzone) == before
    sipzone("site", "set", "eu1", "--host", "", "--upstream", "", "--no-networks", check=True)
    (site,) = json.loads(sipzone("site", "list", "--json").stdout)
    assert (site["host"], site["upstream"], site["networks"]) == (None, None, [])


def test_tenant_remove_is_refused_while_it_owns_anything(sipzone: Run) -> None:
    setup(sipzone)
    sipzone("domain", "add", "c.example.com", "--owner", "cust", check=True)
    held = sipzone("tenant", "remove", "acme")
    assert held.returncode == 2
    assert "tenant(s) cust" in held.stderr
    owns = sipzone("tenant", "remove", "cust")
    assert owns.returncode == 2
    assert "1 SIP domain(s)" in owns.stderr
    assert sipzone("tenant", "remove", "provider").returncode == 2
    assert sipzone("tenant", "remove", "ghost").returncode == 2
    sipzone("domain", "remove", "c.example.com", check=True)
    assert sipzone("tenant", "remove", "cust", "--as", "cust").returncode == 2  # not itself
    sipzone("tenant", "remove", "cust", "--as", "acme", check=True)
    sipzone("tenant", "remove", "acme", check=True)
    names = [t["name"] for t in json.loads(sipzone("tenant", "list", "--json").stdout)]
    assert names == ["provider"]


def test_status_says_revision_schema_counts_and_sites(sipzone: Run, sqlite_url: str) -> None:
    setup(sipzone)
    sipzone("domain", "add", "*.teams.example.com", "--owner", "acme", check=True)
    sipzone("domain", "add", "v.example.com", check=True)
    data = json.loads(sipzone("status", "--json", check=True).stdout)
    assert data["store"] == sqlite_url
    assert data["schema"] == schema_head()  # the newest migration
    assert (data["tenants"], data["domains"], data["wildcards"], data["zones"]) == (3, 1, 1, 1)
    assert data["sites"] == ["eu1"]
    assert data["last_change"]["op"] == "domain.add"
    assert data["last_change"]["revision"] == data["revision"]
    text = sipzone("status", check=True).stdout
    assert "1 exact, 1 wildcard" in text


def test_a_read_on_a_missing_sqlite_file_says_init_and_creates_nothing(
    sipzone: Run, tmp_path: Path
) -> None:
    missing = tmp_path / "nothing-here.db"
    for args in (
        ["domain", "list"],
        ["status"],
        ["check", "a.example.com"],
        ["tenant", "add", "x"],
    ):
        result = sipzone(*args, "--db", f"sqlite:///{missing}")
        assert result.returncode == 2, args
        assert "does not exist" in result.stderr and "sipzone init" in result.stderr
        assert not missing.exists(), args
    sipzone("init", "--db", f"sqlite:///{missing}", check=True)
    assert missing.exists()


def test_an_unreachable_database_is_not_told_to_run_init_and_hides_its_password(
    sipzone: Run,
) -> None:
    result = sipzone("domain", "list", "--db", "postgresql://u:s3cret@127.0.0.1:1/x")
    assert result.returncode == 2
    assert "s3cret" not in result.stderr
    assert "postgresql://u:***@127.0.0.1:1/x" in result.stderr
    assert "sipzone init" not in result.stderr
    assert "check that the database runs" in result.stderr


def test_init_never_prints_the_password(sipzone: Run, pg_url: str) -> None:
    with_password = pg_url.replace("://postgres@", "://postgres:hunter2@")
    assert "hunter2" in with_password  # trust authentication ignores it
    result = sipzone("init", "--db", with_password, check=True)
    assert "hunter2" not in result.stdout + result.stderr
    assert "postgres:***@" in result.stdout


def test_the_url_may_come_from_a_file(
    sipzone: Run, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url_file = tmp_path / "db-url"
    url_file.write_text(f"# the store\n{sqlite_url}\n")
    os.chmod(url_file, 0o600)
    monkeypatch.delenv("SIPZONE_DB")
    monkeypatch.setenv("SIPZONE_DB_FILE", str(url_file))
    sipzone("init", check=True)
    assert json.loads(sipzone("status", "--json", check=True).stdout)["store"] == sqlite_url
    monkeypatch.setenv("SIPZONE_DB_FILE", str(tmp_path / "absent"))
    result = sipzone("status")
    assert result.returncode == 2
    assert "cannot read the store URL" in result.stderr


def test_import_reports_up_to_twenty_problems(sipzone: Run, tmp_path: Path) -> None:
    setup(sipzone)
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(f"bad_{i}.example.com\n" for i in range(30)))
    result = sipzone("domain", "import", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("line ") == 20
    assert "first 20 shown" in result.stderr


def test_serve_wants_site_once_the_store_has_several(sipzone: Run) -> None:
    setup(sipzone)
    sipzone("site", "add", "us1", "--vip", "192.0.2.9", "--region", "us", check=True)
    result = sipzone("serve", "--sip", "udp:127.0.0.1:0")
    assert result.returncode == 2
    assert "2 sites (eu1, us1)" in result.stderr and "--site NAME" in result.stderr
    unknown = sipzone("serve", "--sip", "udp:127.0.0.1:0", "--site", "ap1")
    assert unknown.returncode == 2
    assert "site 'ap1' is not in the store" in unknown.stderr
