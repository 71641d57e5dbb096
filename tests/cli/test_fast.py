"""A simple command loads only what it uses (its start time is measured in bench/cli/)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pydantic", "rich", "fastapi", "uvicorn", "uvloop", "alembic", "prometheus_client")
PROBE = """
import json, sys
from sipzone.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)
"""


def loaded(*args: str) -> set[str]:
    """The top-level packages `sipzone ARGS` has imported when it is done."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60
    )
    return set(json.loads(run.stderr.strip().splitlines()[-1]))


def test_help_loads_no_database_layer_framework_or_server(sqlite_url: str) -> None:
    modules = loaded("--help")
    assert "sqlalchemy" not in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)
    assert "sipzone.dns.server" not in modules


@pytest.mark.parametrize(
    "args",
    [("check", "a.example.com"), ("domain", "add", "a.example.com"), ("domain", "list")],
)
def test_store_commands_load_the_store_and_nothing_heavier(
    sqlite_url: str, args: tuple[str, ...]
) -> None:
    from sipzone.store.repository import Store

    Store(sqlite_url).init()
    modules = loaded(*args, "--db", sqlite_url)
    assert "sqlalchemy" in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)
    assert "dns" not in modules  # dnspython: only serve and zone export need it


def test_plain_values_are_converted_without_pydantic() -> None:
    """The hook sipzone.cliparams puts into Typer is where it expects (a Typer upgrade that
    moved it would bring Pydantic back into every command: this says so)."""
    from typer import core

    from sipzone import cliparams

    cliparams.install()
    assert getattr(core.build_runtime_param, "sipzone", False)  # type: ignore[attr-defined]
