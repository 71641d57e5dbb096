"""Fixtures for the SIP edge: in-memory snapshots, an edge running in a thread, sipp."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipzone.model.snapshot import Site, Snapshot, SnapshotHolder
from sipzone.model.tenancy import TenancyTree, Tenant
from sipzone.sip import SipConfig
from sipzone.sip.edge import Edge
from sipzone.sip.keepalive import DECLINED
from sipzone.sip.message import MalformedMessage, parse_message
from sipzone.sip.transport import SipService, start_sip
from sipzone.sip.values import Arrival, Listener, Sends
from tests.harness import ServiceThread

RFC4475 = Path("/work/shared/conformance/rfc4475")
IDN_NAME = "xn--bcher-kva.example.com"  # bücher.example.com


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (never 5060)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port != 5060:
            return port


def make_snapshot(
    upstream: str | None = "sip:127.0.0.1:5999",
    site_upstream: str | None = None,
    extra_rules: tuple[tuple[str, str], ...] = (),
    revision: int = 1,
) -> Snapshot:
    """Provider owns voip.example.com and the IDN name; reseller acme owns *.teams.example.com
    with ``upstream``; customer42 (below acme) owns cust42.example.org and inherits it."""
    tenants = TenancyTree(
        [
            Tenant("acme", "provider", upstream=upstream),
            Tenant("customer42", "acme"),
        ]
    )
    rules = [
        ("voip.example.com", "provider"),
        ("*.teams.example.com", "acme"),
        ("cust42.example.org", "customer42"),
        (IDN_NAME, "provider"),
        *extra_rules,
    ]
    site = Site("fra", "eu", (ipaddress.ip_address("127.0.0.1"),), upstream=site_upstream)
    return Snapshot.build(revision, tenants, rules, sites=(site,))


@pytest.fixture
def snapshot() -> Snapshot:
    return make_snapshot()


def fast_path(edge: Edge, data: bytes, arrival: Arrival, snapshot: Snapshot) -> Sends | None:
    """The keep-alive fast path's answer to a datagram; None when it declines."""
    answer = edge.keepalives.answer(data, arrival, edge.memo_for(snapshot))
    return None if answer is DECLINED else answer


def general_path(edge: Edge, data: bytes, arrival: Arrival, snapshot: Snapshot) -> Sends:
    """What the edge answers to a datagram without its fast path: parse, then handle."""
    if not data.strip(b"\r\n"):
        return ()
    try:
        message = parse_message(data)
    except MalformedMessage as exc:
        return edge.malformed(exc, arrival)
    return edge.handle(message, arrival, snapshot)


@pytest.fixture
def udp_listener() -> Listener:
    return Listener("udp", "127.0.0.1", 5070)


@pytest.fixture
def tcp_listener() -> Listener:
    return Listener("tcp", "127.0.0.1", 5070)


class EdgeThread(ServiceThread):
    """``start_sip`` on a uvloop loop in a thread, with a holder the test controls."""

    def __init__(self, holder: SnapshotHolder, config: SipConfig) -> None:
        super().__init__(holder)
        self.config = config
        self.service: SipService | None = None

    def start(self) -> EdgeThread:
        self.service = self.call(start_sip(self.config, self.holder))
        return self

    def port(self, transport: str) -> int:
        assert self.service is not None
        return next(lst.port for lst in self.service.listeners if lst.transport == transport)

    def stop(self) -> None:
        self.close()


@pytest.fixture
def edge_factory() -> Iterator[type[EdgeThread]]:
    started: list[EdgeThread] = []

    class Factory(EdgeThread):
        def start(self) -> EdgeThread:
            started.append(self)
            return super().start()

    yield Factory
    for edge in started:
        edge.stop()


# -- sipp -------------------------------------------------------------------------------------


@dataclass
class SippResult:
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# Registered in pyproject.toml; tests/conftest.py skips (or, under CI=true, fails) a test so
# marked when sipp is missing.
needs_sipp = pytest.mark.needs_sipp


def scenario(name: str, body: str) -> str:
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
        f'<scenario name="{name}">\n{body}\n</scenario>\n'
    )


def answer(
    status: str,
    *lines: str,
    tag: str = "",
    retrans: bool = False,
    cseq: str = "[last_CSeq:]",
    body: str = "",
) -> str:
    """A sipp ``<send>`` of a UAS's answer to the request it last received: its Via, From, To
    (``;tag=TAG`` added when given), Call-ID and CSeq copied, then ``lines``, then
    Content-Length and ``body`` (an SDP, say)."""
    to = "[last_To:]" + (f";tag={tag}" if tag else "")
    length = "Content-Length: [len]" if body else "Content-Length: 0"
    head = [f"SIP/2.0 {status}", "[last_Via:]", "[last_From:]", to, "[last_Call-ID:]", cseq]
    attrs = ' retrans="500"' if retrans else ""
    text = "\n".join([*head, *lines, length, "", body])
    return f"\n  <send{attrs}><![CDATA[\n{text}]]></send>"


class Sipp:
    """Runs sipp scenarios in a temporary directory; UAS instances run in the background."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._background: list[subprocess.Popen[str]] = []
        self._n = 0

    def _args(self, xml: str, transport: str, port: int, extra: list[str]) -> list[str]:
        self._n += 1
        path = self.workdir / f"scenario{self._n}.xml"
        path.write_text(xml, encoding="latin-1")
        return [
            "sipp", "-sf", str(path), "-i", "127.0.0.1", "-p", str(port),
            "-t", "t1" if transport == "tcp" else "u1", "-m", "1", "-nostdin",
            "-timeout", "15", "-timeout_error", "-max_recv_loops", "1000", *extra,
        ]  # fmt: skip

    def run(
        self,
        xml: str,
        target: str,
        transport: str = "udp",
        extra: list[str] | None = None,
        port: int = 0,
    ) -> SippResult:
        """Run a UAC scenario to its end; ``port`` is its own (0: any free one)."""
        args = self._args(xml, transport, port, [*(extra or []), target])
        proc = subprocess.run(
            args, cwd=self.workdir, capture_output=True, text=True, timeout=40, check=False
        )
        return SippResult(proc.returncode, proc.stdout + proc.stderr + self._errors())

    def serve(self, xml: str, port: int, transport: str = "udp") -> subprocess.Popen[str]:
        args = self._args(xml, transport, port, [])
        proc = subprocess.Popen(
            args, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._background.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen[str]) -> SippResult:
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return SippResult(-1, out + self._errors())
        return SippResult(proc.returncode, out + self._errors())

    def _errors(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.workdir.glob("*_errors.log"))

    def close(self) -> None:
        for proc in self._background:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    runner = Sipp(tmp_path)
    yield runner
    runner.close()
