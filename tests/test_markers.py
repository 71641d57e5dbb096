"""The markers tests/conftest.py applies, and what a missing peer does: skip here, fail in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DEAD_PG = "postgresql+psycopg://postgres@127.0.0.1:9/postgres"  # nothing listens on port 9
TESTS = [
    "tests/store/test_repository.py::test_init_is_repeatable",  # sqlite and postgresql
    "tests/sip/test_sipp.py::test_max_forwards_zero_gets_483",  # udp and tcp
    "tests/dns/test_truncation.py::test_eight_sites_ns_and_srv_keep_their_answer_and_drop_glue",
]


def pytest_on(tests: list[str], *args: str, env: dict[str, str] | None = None) -> str:
    """The output of a pytest run on ``tests`` (its last line the summary)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


def without_peers(ci: bool) -> str:
    """pytest on TESTS with PostgreSQL unreachable and sipp, dig and named out of reach."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"SIPZONE_TEST_PG": DEAD_PG, "PATH": str(ROOT / "no-such-dir")}
    if ci:
        env["CI"] = "true"
    return pytest_on(TESTS, "-rsf", env=env)


@pytest.mark.integration
def test_a_missing_peer_skips_with_its_reason_here_and_fails_under_ci() -> None:
    if os.access("/usr/sbin/dig", os.X_OK):
        pytest.fail("dig in /usr/sbin would be found without PATH; this test cannot hide it")
    local = without_peers(ci=False)
    assert "1 passed, 4 skipped" in local.splitlines()[-1], local
    assert "PostgreSQL at" in local and "is not reachable" in local
    assert "sipp is not installed" in local
    assert "dig not installed" in local

    ci = without_peers(ci=True)  # fails at setup, before any fixture starts a thing
    assert "1 passed, 4 errors" in ci.splitlines()[-1], ci
    assert ci.count("CI=true: a missing peer fails the test") >= 4


@pytest.mark.integration
def test_markers_follow_the_fixtures_a_test_uses() -> None:
    peers = pytest_on(TESTS, "--collect-only", "-q", "-m", "needs_pg or needs_sipp or needs_bind")
    assert "test_init_is_repeatable[postgresql]" in peers
    assert "test_init_is_repeatable[sqlite]" not in peers
    assert "test_max_forwards_zero_gets_483[udp]" in peers
    assert "test_eight_sites_ns_and_srv_keep_their_answer_and_drop_glue" in peers
    fast = pytest_on(TESTS, "--collect-only", "-q", "-m", "not integration")
    assert "test_init_is_repeatable[sqlite]" in fast
    assert "test_init_is_repeatable[postgresql]" in fast  # PostgreSQL is a peer, not a process
    assert "test_sipp" not in fast and "test_truncation" not in fast
