"""Sites for health tests: sipp answering OPTIONS on 127.0.0.2, 127.0.0.3, ... (stopped and
started again by the tests), and a store whose sites point at them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

# sipp's answer to the OPTIONS just received: what a site (or a core) says to a probe.
OPTIONS_OK = """  <send><![CDATA[

SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]hc[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"""

OPTIONS_UAS = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options responder">
  <recv request="OPTIONS"/>
{OPTIONS_OK}</scenario>
"""


class SiteSim:
    """A site's SIP endpoint: sipp answering OPTIONS (or what ``scenario`` says) at
    ``address``:``port`` over UDP (or TCP)."""

    def __init__(
        self, workdir: Path, address: str, transport: str = "udp", scenario: str = OPTIONS_UAS
    ) -> None:
        self.workdir = workdir
        self.address = address
        self.transport = transport
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (workdir / "uas.xml").write_text(scenario, encoding="latin-1")

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            ["sipp", "-sf", "uas.xml", "-i", self.address, "-p", str(self.port),
             "-t", "t1" if self.transport == "tcp" else "u1",
             "-nostdin", "-bind_local"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Sites:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[SiteSim] = []

    def __call__(
        self, address: str, transport: str = "udp", scenario: str = OPTIONS_UAS
    ) -> SiteSim:
        workdir = self.tmp_path / f"site-{address}-{transport}"
        workdir.mkdir()
        site = SiteSim(workdir, address, transport, scenario)
        site.start()
        self.started.append(site)
        return site


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sites]:
    """Start a site with ``sipp("127.0.0.2")``; every one is stopped after the test."""
    sites = Sites(tmp_path)
    yield sites
    for site in sites.started:
        site.stop()
