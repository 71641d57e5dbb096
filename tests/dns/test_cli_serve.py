"""End to end through the console script: `sipzone serve --dns` follows CLI changes live."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Cli, Server, free_port
from tests.dns.conftest import dig, need


def setup_store(cli: Cli) -> None:
    cli("init", check=True)
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("zone", "add", "example.com", check=True)
    cli(
        "site", "add", "site-a", "--vip", "192.0.2.10", "--vip", "2001:db8::10",
        "--region", "eu", "--network", "127.0.0.0/8", "--order", "1", check=True,
    )  # fmt: skip
    cli(
        "site", "add", "site-b", "--vip", "198.51.100.10", "--region", "us",
        "--network", "198.51.100.0/24", "--order", "2", check=True,
    )  # fmt: skip
    cli("domain", "add", "voip.example.com", "--owner", "provider", check=True)
    cli("domain", "add", "*.teams.example.com", "--owner", "provider", check=True)
    cli("email-domain", "set", "mail.example.com", check=True)


def wait_for(port: int, name: str, status: str, within: float) -> float:
    """Seconds until `dig name` gives ``status``; fails after ``within``."""
    start = time.monotonic()
    while True:
        if dig(port, name, "A").status == status:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"{name} never became {status}"
        time.sleep(0.02)


def test_cli_changes_show_in_dig_answers_within_a_second(
    cli: Cli, serve: Callable[..., Server]
) -> None:
    setup_store(cli)
    port = free_port()
    serve("--dns", f"127.0.0.1:{port}")
    first = dig(port, "_sip._udp.cust9.teams.example.com", "SRV")
    assert [r.split()[3] for r in sorted(first.rdata("SRV"))] == [
        "site-a.example.com.",
        "site-b.example.com.",
    ]
    assert dig(port, "mail.example.com", "MX").rdata("MX") == ["10 mail.example.com."]
    serial = int(dig(port, "example.com", "SOA").rdata("SOA")[0].split()[2])
    assert dig(port, "live.example.com", "A").status == "NXDOMAIN"

    cli("domain", "add", "live.example.com", "--owner", "provider", check=True)
    wait_for(port, "live.example.com", "NOERROR", within=1.0)
    assert sorted(dig(port, "live.example.com", "A").rdata("A")) == [
        "192.0.2.10",
        "198.51.100.10",
    ]
    assert int(dig(port, "example.com", "SOA").rdata("SOA")[0].split()[2]) > serial

    cli("domain", "remove", "*.teams.example.com", check=True)
    wait_for(port, "cust9.teams.example.com", "NXDOMAIN", within=1.0)

    cli("site", "health", "site-b", "down", check=True)
    deadline = time.monotonic() + 1.0
    while dig(port, "voip.example.com", "A").rdata("A") != ["192.0.2.10"]:
        assert time.monotonic() < deadline, "site-b never left the answers"
        time.sleep(0.02)


def test_cli_zone_export_passes_named_checkzone(cli: Cli, tmp_path: Path) -> None:
    setup_store(cli)
    out = cli("zone", "export", "example.com", "--format", "bind", "--region", "us", check=True)
    path = tmp_path / "example.com.zone"
    path.write_text(out.stdout)
    check = subprocess.run(
        [need("named-checkzone"), "example.com", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + out.stdout
    assert "*.teams 300 IN A 192.0.2.10" in out.stdout


def test_workers_share_the_port_and_all_follow_changes(
    cli: Cli, serve: Callable[..., Server]
) -> None:
    setup_store(cli)
    port = free_port()
    server = serve("--dns", f"127.0.0.1:{port}", "--workers", "2")
    workers = subprocess.run(
        ["pgrep", "-g", str(server.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(workers) >= 3  # the supervisor and two workers
    cli("domain", "add", "both.example.com", "--owner", "provider", check=True)
    # Each dig comes from a new source port, so SO_REUSEPORT spreads them over the workers:
    # twenty answers in a row means every worker has the change.
    deadline = time.monotonic() + 3.0
    streak = 0
    while streak < 20:
        assert time.monotonic() < deadline, "a worker never saw both.example.com"
        streak = streak + 1 if dig(port, "both.example.com", "A").status == "NOERROR" else 0
