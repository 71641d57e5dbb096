"""The `sipzone` console script, run as operators and scripts run it."""

import json
from pathlib import Path

from tests.conftest import Cli


def setup(cli: Cli) -> None:
    cli("init", check=True)
    cli("tenant", "add", "acme", "--brand-name", "ACME", check=True)
    cli("tenant", "add", "cust1", "--parent", "acme", check=True)
    cli("tenant", "add", "other", check=True)


def test_contract_commands_and_exit_codes(cli: Cli) -> None:
    setup(cli)
    added = cli("domain", "add", "*.teams.example.com", "--owner", "acme")
    assert added.returncode == 0, added.stderr
    assert cli("domain", "add", "voip.acme.example", "--owner", "cust1").returncode == 0

    hit = cli("check", "Cust42.Teams.Example.COM", "--json")
    assert hit.returncode == 0
    data = json.loads(hit.stdout)
    assert data["admitted"] is True
    assert data["rule"] == "*.teams.example.com"
    assert data["owner"] == "acme"
    assert data["chain"] == ["acme", "provider"]

    miss = cli("check", "nobody.example.org", "--json")
    assert miss.returncode == 1
    assert json.loads(miss.stdout)["admitted"] is False

    listed = json.loads(cli("domain", "list", "--json").stdout)
    assert [(d["name"], d["owner"], d["wildcard"]) for d in listed] == [
        ("*.teams.example.com", "acme", True),
        ("voip.acme.example", "cust1", False),
    ]
    only = json.loads(cli("domain", "list", "--owner", "cust1", "--json").stdout)
    assert [d["name"] for d in only] == ["voip.acme.example"]

    removed = cli("domain", "remove", "voip.acme.example")
    assert removed.returncode == 0
    assert cli("check", "voip.acme.example").returncode == 1


def test_bad_input_exits_2_with_reason_and_changes_nothing(cli: Cli) -> None:
    setup(cli)
    cli("domain", "add", "*.teams.example.com", "--owner", "acme", check=True)
    before = cli("domain", "list", "--json").stdout
    cases = [
        (["domain", "add", "bad_name.example.com"], "'_'"),
        (["domain", "add", "*.com"], "top-level"),
        (["domain", "add", "*.teams.example.com", "--owner", "acme"], "exists already"),
        (["domain", "add", "x.teams.example.com", "--owner", "other"], "namespace"),
        (["domain", "add", "x.example.net", "--owner", "ghost"], "does not exist"),
        (["domain", "add", "y.example.net", "--owner", "other", "--as", "acme"], "not below"),
        (["site", "add", "a", "--vip", "1.2.3", "--region", "eu"], "not an IPv4"),
        (["check", "a..b"], "empty"),
        (["tenant", "add", "x y"], "tenant name"),
    ]
    for args, reason in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert reason in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert cli("domain", "list", "--json").stdout == before


def test_sites_zones_and_email_domain(cli: Cli) -> None:
    setup(cli)
    cli(
        "site",
        "add",
        "eu1",
        "--vip",
        "192.0.2.10",
        "--vip",
        "2001:db8::10",
        "--region",
        "eu",
        "--network",
        "10.0.0.0/8",
        "--host",
        "eu1.sip.example.com",
        "--weight",
        "60",
        check=True,
    )
    cli("site", "add", "us1", "--vip", "198.51.100.10", "--region", "us", check=True)
    sites = json.loads(cli("site", "list", "--json").stdout)
    assert [(s["name"], s["region"], s["vips"], s["weight"]) for s in sites] == [
        ("eu1", "eu", ["192.0.2.10", "2001:db8::10"], 60),
        ("us1", "us", ["198.51.100.10"], 100),
    ]
    assert sites[0]["networks"] == ["10.0.0.0/8"]
    assert sites[0]["host"] == "eu1.sip.example.com"
    # Without a stored name server a zone is added all the same (the command contract), with
    # a warning that says what its NS are meanwhile and how to name the real ones.
    early = cli("zone", "add", "example.net", check=True)
    assert "no name server is stored" in early.stderr and "nameserver add" in early.stderr
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("nameserver", "add", "ns1.example.com", "--address", "192.0.2.53", check=True)
    assert json.loads(cli("nameserver", "list", "--json").stdout) == [
        {"name": "ns1.example.org", "addresses": []},
        {"name": "ns1.example.com", "addresses": ["192.0.2.53"]},
    ]
    added = cli("zone", "add", "example.com", check=True)
    assert "name server" not in added.stderr
    assert json.loads(cli("zone", "list", "--json").stdout) == ["example.com", "example.net"]
    cli("email-domain", "set", "mail.example.com", check=True)
    cli("email-domain", "set", "vm.example.com", check=True)
    shown = json.loads(cli("email-domain", "show", "--json").stdout)
    assert shown["email_domain"] == "vm.example.com"
    down = cli("site", "health", "us1", "down")
    assert down.returncode == 0
    assert json.loads(cli("site", "list", "--json").stdout)[1]["healthy"] is False


def test_email_domain_endpoints_per_site_where_they_differ(cli: Cli) -> None:
    cli("init", check=True)
    cli("site", "add", "eu1", "--vip", "192.0.2.10", "--region", "eu", check=True)
    cli("site", "add", "us1", "--vip", "198.51.100.10", "--region", "us", check=True)
    cli(
        "email-domain", "set", "mail.example.com", "--imap", "993",
        "--imap", "us1=vm-us.example.com:993", "--submission", "smtp.example.com:465",
        check=True,
    )  # fmt: skip
    shown = json.loads(cli("email-domain", "show", "--json").stdout)
    assert shown == {
        "email_domain": "mail.example.com",
        "mx": None,
        "imap": ["993", "us1=vm-us.example.com:993"],
        "submission": ["smtp.example.com:465"],
    }
    assert "imap: 993 us1=vm-us.example.com:993" in cli("email-domain", "show").stdout
    # refused whole, nothing changed: an unknown site, a bad endpoint, a site given twice
    for bad, words in (
        (["--imap", "mars=993"], "site 'mars' does not exist"),
        (["--imap", "127.0.0.1:993"], "not an address"),
        (["--submission", "eu1=465", "--submission", "eu1=587"], "twice for site 'eu1'"),
    ):
        refused = cli("email-domain", "set", "mail.example.com", *bad)
        assert refused.returncode != 0 and words in refused.stderr, refused.stderr
    assert json.loads(cli("email-domain", "show", "--json").stdout) == shown
    cli("email-domain", "set", "mail.example.com", check=True)  # a second set replaces all
    cleared = json.loads(cli("email-domain", "show", "--json").stdout)
    assert (cleared["imap"], cleared["submission"]) == ([], [])


def test_import_file_with_owner_column(cli: Cli, tmp_path: Path) -> None:
    setup(cli)
    good = tmp_path / "names.txt"
    good.write_text(
        "# name owner\n"
        "a.example.com\n"
        "B.Example.com acme\n"
        "*.teams.example.com,acme\n"
        "Bücher.example cust1\n"
        "\n"
    )
    first = cli("domain", "import", str(good), "--owner", "other")
    assert first.returncode == 0, first.stderr
    assert "added 4" in first.stdout
    owners = {d["name"]: d["owner"] for d in json.loads(cli("domain", "list", "--json").stdout)}
    assert owners == {
        "a.example.com": "other",
        "b.example.com": "acme",
        "*.teams.example.com": "acme",
        "xn--bcher-kva.example": "cust1",
    }
    again = cli("domain", "import", str(good), "--owner", "other")
    assert again.returncode == 0
    assert "added 0, already present 4" in again.stdout

    bad = tmp_path / "bad.txt"
    bad.write_text("ok1.example.com\nbad_name.example.com\nok2.example.com x y\n")
    refused = cli("domain", "import", str(bad))
    assert refused.returncode == 2
    assert "line 2" in refused.stderr and "line 3" in refused.stderr
    assert cli("check", "ok1.example.com").returncode == 1


def test_uninitialised_store_is_a_clear_error(cli: Cli) -> None:
    result = cli("domain", "list")
    assert result.returncode == 2
    assert "sipzone init" in result.stderr


def test_cli_on_postgresql(cli: Cli, pg_url: str) -> None:
    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    assert cli("init", db=url).returncode == 0
    assert cli("tenant", "add", "acme", db=url).returncode == 0
    assert cli("domain", "add", "*.teams.example.com", "--owner", "acme", db=url).returncode == 0
    hit = cli("check", "x.teams.example.com", "--json", db=url)
    assert hit.returncode == 0 and json.loads(hit.stdout)["owner"] == "acme"
    assert cli("check", "teams.example.com", db=url).returncode == 1


def test_serve_refuses_bad_listeners_before_starting(cli: Cli) -> None:
    cli("init", check=True)
    cases = [
        ([], "nothing to serve"),
        (["--sip", "sctp:127.0.0.1:5070"], "transport must be udp, tcp, tls"),
        (["--sip", "udp:127.0.0.1"], "not HOST:PORT"),
        (["--dns", "127.0.0.1:99999"], "outside 1-65535"),
        (["--dns", "127.0.0.1:5353", "--allow-transfer", "10.0.0.0/99"], "10.0.0.0/99"),
        (["--dns", "127.0.0.1:5353", "--nameserver", "ns_1.example.com"], "'_'"),
    ]
    for args, reason in cases:
        result = cli("serve", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert reason in result.stderr, (args, result.stderr)


def test_trunk_add_list_remove(cli: Cli) -> None:
    cli("init", check=True)
    ms = "sip:sip.pstnhub.microsoft.com:5061;transport=tls"
    ms2 = "sip:sip2.pstnhub.microsoft.com:5061;transport=tls"
    base = ("--base", "teams.example.com", "--profile", "teams")
    added = cli("trunk", "add", "teams", "--target", ms, "--target", ms2, *base,
                "--options-interval", "30")  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = json.loads(cli("trunk", "list", "--json").stdout)
    assert listed == [
        {
            "name": "teams", "base": "teams.example.com", "profile": "teams",
            "options_interval": 30, "sbc_header": None,
            "targets": [{"uri": ms, "state": []}, {"uri": ms2, "state": []}],
        }
    ]  # fmt: skip
    assert "unknown" in cli("trunk", "list").stdout
    bad = cli("trunk", "add", "t2", "--target", "sip:x.example", "--base", "teams.example.com",
              "--profile", "teams")  # fmt: skip
    assert bad.returncode == 2 and "transport=tls" in bad.stderr
    assert len(json.loads(cli("trunk", "list", "--json").stdout)) == 1
    assert cli("trunk", "remove", "teams").returncode == 0
    gone = cli("trunk", "remove", "teams")
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    assert json.loads(cli("trunk", "list", "--json").stdout) == []
