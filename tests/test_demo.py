"""The README's first command, `scripts/demo`, as a user runs it: it sets up, fills a store and
serves, and the DNS answers for the demo's names (a store with two sites once made `serve`
refuse to start without `--site`, and nothing noticed)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent


def test_the_demo_serves_its_names(tmp_path: Path) -> None:
    dns_port = free_port()
    env = {
        **os.environ,
        "SIPZONE_DB": f"sqlite:///{tmp_path / 'demo.db'}",
        "SIPZONE_DEMO_SIP_PORT": str(free_port()),
        "SIPZONE_DEMO_DNS_PORT": str(dns_port),
        "SIPZONE_DEMO_METRICS_PORT": str(free_port()),
    }
    demo = subprocess.Popen(
        [str(ROOT / "scripts" / "demo")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 180  # scripts/setup may install the venv first
        for line in demo.stdout:
            lines.append(line)
            if "sipzone: ready" in line or time.monotonic() > deadline:
                break
        assert "sipzone: ready" in "".join(lines), "".join(lines)
        query = dns.message.make_query("cust42.teams.example.com", "A")
        answer = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=5)
        addresses = {r.address for rrset in answer.answer for r in rrset}
        assert addresses == {"192.0.2.10", "198.51.100.10"}  # both sites, by the wildcard
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(timeout=30)
