"""Issue 7's input rules through the real `sipzone` entry point: every failure is one line
`sipzone: REASON` on stderr with exit 2 and nothing changed; stored rows from before the rules
cannot silence the DNS.

Most cases call :func:`sipzone.cli.main` in this process (the function the console script
runs, so the same parsing and error handling, without a second of start-up per case); the
issue's own reproductions also run as the installed console script.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import dns.zone
import sqlalchemy as sa

from sipzone.store import schema
from tests.cli.conftest import Run
from tests.conftest import Cli, Server, free_port
from tests.dns.conftest import dig, need


def long_name(octets: int, suffix: str = "example.com") -> str:
    """A name of exactly ``octets`` octets ending in ``suffix`` (labels of 63 and less)."""
    labels: list[str] = []
    room = octets - len(suffix) - 1
    while room > 0:
        size = min(63, room) if room - min(63, room) != 1 else 61
        labels.append("a" * size)
        room -= size + 1
    name = ".".join([*labels, suffix])
    assert len(name) == octets
    return name


def setup(cli: Run) -> None:
    cli("init", check=True)
    cli("tenant", "add", "acme", "--brand-name", "ACME", check=True)
    cli("tenant", "add", "other", check=True)
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("zone", "add", "example.com", check=True)
    cli("site", "add", "s1", "--vip", "192.0.2.1", "--region", "eu", check=True)
    cli("domain", "add", "*.teams.example.com", "--owner", "acme", check=True)


def state(cli: Run) -> list[str]:
    return [cli(what, "list", "--json").stdout for what in ("tenant", "domain", "site", "zone")]


def test_every_failure_is_one_line_with_exit_2_and_changes_nothing(
    sipzone: Run, tmp_path: Path
) -> None:
    setup(sipzone)
    not_utf8 = tmp_path / "latin1.txt"
    not_utf8.write_bytes(b"ok.example.com\nb\xfccher.example\n")
    taken = tmp_path / "taken.txt"
    taken.write_text("".join(f"t{i}.teams.example.com\n" for i in range(25)))
    site = ["site", "add", "s2", "--vip", "192.0.2.2", "--region", "eu"]
    cases: list[tuple[list[str], str]] = [
        # item 4: a VIP no DNS record can carry, networks with host bits
        (["site", "add", "s2", "--vip", "fe80::1%eth0", "--region", "eu"], "scope id"),
        (["site", "add", "s2", "--vip", "::", "--region", "eu"], "unspecified"),
        (["site", "add", "s2", "--vip", "224.0.0.1", "--region", "eu"], "multicast"),
        (["site", "add", "s2", "--vip", "169.254.1.1", "--region", "eu"], "link-local"),
        ([*site, "--network", "10.0.0.1/8"], "host bits"),
        # item 5: names the DNS would extend past 255 octets
        (["domain", "add", long_name(243)], "at most 242"),
        (["domain", "add", "*." + long_name(241)], "at most 242"),
        (["zone", "add", long_name(243)], "hostmaster"),
        # item 11: numbers out of range, bad values, unsupported stores, unreadable files
        ([*site, "--order", "99999999999999999999"], "order 99999999999999999999 is outside"),
        ([*site, "--weight", "70000"], "weight (the SRV weight) 70000 is outside 0-65535"),
        ([*site, "--weight", "-1"], "outside 0-65535"),
        ([*site, "--port-udp", "99999999999999999999"], "udp port"),
        ([*site, "--weight", "ten"], "'--weight'"),
        (["serve", "--dns", "127.0.0.1:5353", "--ttl", "99999999999999999999"], "'--ttl'"),
        (["domain", "list", "--db", "mysql://root:secret@db.example/x"], "not supported"),
        (["domain", "add", "-foo.example.com"], "goes after '--'"),
        (["domain", "add", "--", "-foo.example.com"], "label '-foo' starts or ends with '-'"),
        (["domain", "import", str(not_utf8)], "line 2: not UTF-8 (byte 0xfc at column 2)"),
        (["domain", "import", str(tmp_path / "missing.txt")], "does not exist"),
        (["domain", "import", str(taken), "--owner", "other"], "first 20 shown"),
        (["site", "add", "s2"], "Missing option '--vip'"),
        (["sitee", "list"], "No such command 'sitee'"),
        (
            ["site", "add", "s2", "--vip", "192.0.2.2", "--region", "eu", "--colour", "red"],
            "--colour",
        ),
        # item 12: look-alike names, case twins of tenants, brand fields
        (["domain", "add", "p\u0430ypal.example.com"], "mixes scripts"),
        (["tenant", "add", "Acme"], "only in case"),
        (["tenant", "add", "x", "--brand-name", "ACME\r\nX-Injected: 1"], "U+000D"),
        (["tenant", "add", "x", "--brand-name", "A" * 100_000], "at most 200"),
        (["tenant", "set", "acme", "--web-url", "javascript:alert(1)"], "http(s)"),
        (["tenant", "set", "acme", "--logo-url", "https://x.example/\nlogo"], "U+000A"),
        (["tenant", "set", "acme", "--support-email", "nobody"], "not an address"),
    ]
    before = state(sipzone)
    for args, fragment in cases:
        assert_one_line_refusal(sipzone(*args), fragment)
    assert state(sipzone) == before


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.args, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("sipzone: "), (result.args, result.stderr)
    assert fragment in lines[0], (result.args, lines[0])
    assert "secret" not in result.stderr


def test_the_issues_reproductions_through_the_console_script(
    cli: Cli, sipzone: Run, tmp_path: Path
) -> None:
    setup(sipzone)
    not_utf8 = tmp_path / "latin1.txt"
    not_utf8.write_bytes(b"b\xfccher.example\n")
    site = ["site", "add", "s2", "--vip", "192.0.2.2", "--region", "eu"]
    cases: list[tuple[list[str], str]] = [
        (["site", "add", "s2", "--vip", "fe80::1%eth0", "--region", "eu"], "scope id"),
        (["domain", "add", long_name(243)], "at most 242"),
        (["domain", "import", str(not_utf8)], "not UTF-8"),
        ([*site, "--order", "99999999999999999999"], "outside 0-65535"),
        (["domain", "list", "--db", "mysql://root:secret@db.example/x"], "not supported"),
        (["domain", "add", "-foo.example.com"], "goes after '--'"),
        ([*site, "--weight", "ten"], "'--weight'"),
        (["domain", "add", "p\u0430ypal.example.com"], "mixes scripts"),
    ]
    before = state(sipzone)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: cli(*case[0]), cases))
    for (_args, fragment), result in zip(cases, results, strict=True):
        assert_one_line_refusal(result, fragment)
    assert state(sipzone) == before


def test_no_command_prints_the_help_and_one_error_line(sipzone: Run) -> None:
    result = sipzone()
    assert result.returncode == 2
    assert "Commands" in result.stdout
    assert result.stderr.splitlines() == ["sipzone: missing command; the help above lists them"]


def test_names_at_the_limit_export_and_pass_named_checkzone(sipzone: Run, tmp_path: Path) -> None:
    setup(sipzone)
    # A site offering TLS too, so the longest owner, _sips._tcp.NAME, is published.
    sipzone("site", "add", "s2", "--vip", "192.0.2.2", "--region", "us", "--port-tls", "5061",
            check=True)  # fmt: skip
    exact = long_name(242)
    wildcard = "*." + long_name(240, "wild.example.com")
    sipzone("domain", "add", exact, check=True)
    sipzone("domain", "add", wildcard, check=True)
    exported = sipzone("zone", "export", "example.com", "--format", "bind")
    assert exported.returncode == 0, exported.stderr
    zone = dns.zone.from_text(exported.stdout, origin="example.com", relativize=False)
    owners = {name.to_text(omit_final_dot=True) for name in zone.nodes}
    for prefix in ("_sips._tcp.", "_sip._tcp.", "_sip._udp."):
        assert prefix + exact in owners
        assert prefix + wildcard[2:] in owners
    assert exact in owners and wildcard in owners
    zone_file = tmp_path / "example.com.zone"
    zone_file.write_text(exported.stdout)
    checked = subprocess.run(
        [need("named-checkzone"), "example.com", str(zone_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_import_conflict_names_every_line_and_adds_nothing(sipzone: Run, tmp_path: Path) -> None:
    setup(sipzone)
    sipzone("domain", "add", "n2.example.com", "--owner", "other", check=True)
    file = tmp_path / "names.txt"
    file.write_text("n1.example.com\nn2.example.com\nx.teams.example.com other\nn4.example.com\n")
    result = sipzone("domain", "import", str(file), "--owner", "acme")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "line 2: 'n2.example.com' exists already (owner 'other')" in line
    assert "line 3: 'x.teams.example.com' is in the namespace of tenant 'acme'" in line
    assert "line 1" not in line and "line 4" not in line
    names = [d["name"] for d in json.loads(sipzone("domain", "list", "--json").stdout)]
    assert names == ["*.teams.example.com", "n2.example.com"]


def test_a_vip_stored_before_the_rules_does_not_silence_the_dns(
    sipzone: Run, sqlite_url: str, serve: Callable[..., Server]
) -> None:
    """Issue 7 item 4: `site add s2 --vip 'fe80::1%eth0'` used to be stored; then every query
    in the zone timed out with a traceback, even after a restart.  Such a row (written here as
    the old version did) is now left out with one log line, and the rest keeps answering."""
    setup(sipzone)
    sipzone("domain", "add", "voip.example.com", check=True)
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        rev = conn.execute(
            schema.state.update()
            .values(revision=schema.state.c.revision + 1)
            .returning(schema.state.c.revision)
        ).scalar_one()
        conn.execute(
            schema.sites.insert().values(
                name="s2", region="eu", host=None, vips=["fe80::1%eth0", "2001:db8::2"],
                networks=[], port_udp=5060, port_tcp=5060, port_tls=5061, weight=100,
                position=1, upstream=None, healthy=True,
            )
        )  # fmt: skip
        conn.execute(
            schema.changelog.insert().values(
                revision=rev, at=datetime.now(UTC), actor="old", op="site.add", subject="s2"
            )
        )
    engine.dispose()
    listed = sipzone("site", "list", "--json")
    assert listed.returncode == 0
    assert [s["vips"] for s in json.loads(listed.stdout)] == [["192.0.2.1"], ["2001:db8::2"]]
    port = free_port()
    server = serve("--dns", f"127.0.0.1:{port}")
    assert dig(port, "voip.example.com", "A").rdata("A") == ["192.0.2.1"]
    assert dig(port, "voip.example.com", "AAAA").rdata("AAAA") == ["2001:db8::2"]
    assert dig(port, "x.teams.example.com", "AAAA").rdata("AAAA") == ["2001:db8::2"]
    log = "".join(server.lines)
    assert "Traceback" not in log
    assert log.count("fe80::1%eth0") == 1, log
