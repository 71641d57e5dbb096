"""What every command owes an operator: help text, and installation-wide objects (sites, zones,
installation settings) changed by the provider alone, whoever the CLI says it acts for."""

from __future__ import annotations

from typing import Any

import typer
import typer.core

from sipzone.cli import app
from sipzone.store.repository import Store
from tests.cli.conftest import Run


def commands(command: Any, path: str) -> list[tuple[str, Any]]:
    """Every command under ``command`` (a Click command as Typer builds it), with its path."""
    found = [(path, command)]
    if isinstance(command, typer.core.TyperGroup):
        for name, sub in command.commands.items():
            found += commands(sub, f"{path} {name}")
    return found


def test_every_command_and_option_has_help_text() -> None:
    every = commands(typer.main.get_command(app), "sipzone")
    assert len(every) > 20  # the walk found the command tree
    missing = [path for path, command in every if not (command.help or command.short_help)]
    missing += [
        f"{path} --{param.name}"
        for path, command in every
        for param in command.params
        if isinstance(param, typer.core.TyperOption) and not param.help
    ]
    assert missing == []


def test_sites_zones_and_settings_are_the_providers_alone(sipzone: Run, sqlite_url: str) -> None:
    cli = sipzone  # the console script's main(), in this process
    cli("init", check=True)
    cli("tenant", "add", "acme", check=True)
    cli("tenant", "add", "cust1", "--parent", "acme", check=True)
    cli("site", "add", "eu1", "--vip", "192.0.2.10", "--region", "eu", check=True)
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("zone", "add", "example.com", check=True)

    def state() -> tuple[object, ...]:
        store = Store(sqlite_url)
        try:
            return store.revision(), store.list_sites(), store.list_zones(), store.settings()
        finally:
            store.close()

    before = state()
    refused = [
        ["site", "remove", "eu1"],
        ["site", "health", "eu1", "down"],
        ["zone", "remove", "example.com"],
        ["site", "add", "us1", "--vip", "192.0.2.20", "--region", "us"],
        ["zone", "add", "example.net"],
        ["email-domain", "set", "mail.example.com"],
        ["sip", "rotate-secret"],
    ]
    for i, args in enumerate(refused):
        tenant = ("acme", "cust1")[i % 2]  # a reseller, and a customer under it
        result = cli(*args, "--as", tenant)
        assert result.returncode == 2, (args, tenant, result.stderr)
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("sipzone: only the provider "), line
        assert line.endswith(f"tenant {tenant!r} may not"), line
    assert state() == before

    # The provider, by default or by name, may.
    assert cli("site", "health", "eu1", "down", "--as", "provider").returncode == 0
    assert cli("site", "remove", "eu1").returncode == 0
    assert cli("zone", "remove", "example.com").returncode == 0
    revision, sites, zones, _ = state()
    assert (revision, sites, zones) == (before[0] + 3, [], [])
