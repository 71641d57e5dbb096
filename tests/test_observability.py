"""What an operator sees of a running server (issue 13): /healthz and /readyz, DNS metrics,
log lines with their severity (text or JSON), application_name on PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import sqlalchemy as sa

from tests.conftest import SIPZONE, Cli, Server, free_port
from tests.test_runtime import one_site_store

Serve = Callable[..., Server]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(body: str, name: str, **labels: str) -> float | None:
    """The value of ``name`` whose labels include ``labels`` (None when absent)."""
    for line in body.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match[1] or "") for k, v in labels.items()):
            return float(match[2])
    return None


def a_store(url: str) -> None:
    one_site_store(url, "voip.example.com")


def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def popen(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """`sipzone serve ARGS` started without waiting for it to be ready; stopped after."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, db: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [SIPZONE, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "SIPZONE_DB": db, "SIPZONE_STATE_DIR": str(tmp_path)},
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_readyz_is_false_until_the_snapshot_loads_then_true(
    pg_url: str, popen: Callable[..., subprocess.Popen[str]], workers: str
) -> None:
    a_store(pg_url)
    metrics_port = free_port()
    locker = sa.create_engine(pg_url)
    with locker.connect() as conn:
        trans = conn.begin()
        # The snapshot load reads the domains last: it waits here until the lock goes.
        conn.execute(sa.text("LOCK TABLE domains IN ACCESS EXCLUSIVE MODE"))
        proc = popen(
            "--dns", f"127.0.0.1:{free_port()}", "--metrics", f"127.0.0.1:{metrics_port}",
            "--workers", workers, db=pg_url,
        )  # fmt: skip
        wait_until(lambda: _answers(metrics_port))
        assert get(metrics_port, "/healthz") == (200, "alive\n")
        for _ in range(5):  # still loading, however often it is asked
            code, body = get(metrics_port, "/readyz")
            assert code == 503, body
            time.sleep(0.1)
        assert proc.poll() is None
        trans.rollback()
    locker.dispose()
    wait_until(lambda: get(metrics_port, "/readyz")[0] == 200)
    assert get(metrics_port, "/readyz") == (200, "ready\n")
    assert get(metrics_port, "/nothing")[0] == 404
    assert get(metrics_port, "/")[0] == 404
    assert get(metrics_port, "/metrics")[0] == 200


def _answers(port: int) -> bool:
    try:
        get(port, "/healthz")
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


class NotifySink:
    """A UDP peer that acknowledges every NOTIFY, as a secondary does."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            message = dns.message.from_wire(data)
            self.received += 1
            self.sock.sendto(dns.message.make_response(message).to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


def test_dns_metrics_count_queries_transfers_and_notify(
    serve: Serve, sqlite_url: str, cli: Cli
) -> None:
    a_store(sqlite_url)
    sink = NotifySink()
    dns_port, metrics_port = free_port(), free_port()
    try:
        serve(
            "--dns", f"127.0.0.1:{dns_port}", "--metrics", f"127.0.0.1:{metrics_port}",
            "--allow-transfer", "127.0.0.1/32", "--notify", f"127.0.0.1:{sink.port}",
        )  # fmt: skip
        for name, qtype, rcode in [
            ("voip.example.com", "A", dns.rcode.NOERROR),
            ("voip.example.com", "AAAA", dns.rcode.NOERROR),
            ("nothing.example.com", "A", dns.rcode.NXDOMAIN),
        ]:
            for _ in range(40):
                query = dns.message.make_query(name, qtype)
                reply = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=2)
                assert reply.rcode() == rcode
        query = dns.message.make_query("voip.example.com", "SRV")
        dns.query.tcp(query, "127.0.0.1", port=dns_port, timeout=2)
        axfr = dns.message.make_query("example.com", dns.rdatatype.AXFR)
        assert dns.query.tcp(axfr, "127.0.0.1", port=dns_port, timeout=5).rcode() == 0
        refused = dns.message.make_query("example.org", dns.rdatatype.AXFR)
        assert dns.query.tcp(refused, "127.0.0.1", port=dns_port, timeout=5).rcode() == 5
        cli("domain", "add", "new.example.com", check=True)  # a change: NOTIFY
        wait_until(lambda: sink.received >= 2)  # at start and after the change

        def counted() -> bool:
            body = get(metrics_port, "/metrics")[1]
            return sample(body, "sipzone_dns_responses_total", rcode="NXDOMAIN") == 40

        wait_until(counted, timeout=5)  # published about once a second
        body = get(metrics_port, "/metrics")[1]
        # every response by rcode: 80 NOERROR over UDP, and the SRV over TCP
        assert sample(body, "sipzone_dns_responses_total", rcode="NOERROR") == 81
        sampled = re.findall(
            r'^sipzone_dns_queries_sampled_total\{qtype="(\w+)",rcode="\w+"\} (\S+)$', body, re.M
        )
        assert sum(float(n) for _, n in sampled) == 121 // 16  # one in 16, UDP and TCP alike
        assert {qtype for qtype, _ in sampled} <= {"A", "AAAA", "SRV"}
        assert sample(body, "sipzone_dns_response_seconds_count") == 120 // 16
        assert sample(body, "sipzone_dns_transfers_total", outcome="complete") == 1
        assert sample(body, "sipzone_dns_transfers_total", outcome="refused") == 1
        wait_until(
            lambda: (
                sample(get(metrics_port, "/metrics")[1], "sipzone_dns_notifies_total",
                       outcome="acknowledged") or 0
            ) >= 2
        )  # fmt: skip
        body = get(metrics_port, "/metrics")[1]
        assert sample(body, "sipzone_revision", worker="0") == 6
        assert sample(body, "sipzone_store_up", worker="0") == 1
        lag = sample(body, "sipzone_feed_lag_seconds", worker="0")
        assert lag is not None and 0 <= lag < 60
    finally:
        sink.close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_log_line_says_its_severity(
    serve: Serve, sqlite_url: str, cli: Cli, fmt: str
) -> None:
    a_store(sqlite_url)
    server = serve("--dns", f"127.0.0.1:{free_port()}", "--log-format", fmt)
    cli("domain", "add", "new.example.com", check=True)
    wait_until(lambda: any("revision 6 published" in line for line in server.lines))
    logged = [line for line in server.lines if "sipzone: ready" not in line]
    assert logged
    for line in logged:
        if fmt == "json":
            entry = json.loads(line)
            assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR")
            assert {"ts", "logger", "pid", "msg"} <= entry.keys()
        else:
            assert re.match(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR) \S+\[\d+\] ", line), line


def test_postgresql_connections_say_who_they_are(serve: Serve, pg_url: str, cli: Cli) -> None:
    a_store(pg_url)
    serve("--dns", f"127.0.0.1:{free_port()}", db=pg_url)
    engine = sa.create_engine(pg_url)
    database = pg_url.rsplit("/", 1)[1]
    names: set[str] = set()

    def named() -> bool:
        # The feed opens its LISTEN connection on the loop after `ready`: look until it is up.
        with engine.connect() as conn:
            names.update(
                conn.execute(
                    sa.text("SELECT application_name FROM pg_stat_activity WHERE datname = :d"),
                    {"d": database},
                ).scalars()
            )
        return {"sipzone serve", "sipzone feed"} <= names

    try:
        wait_until(named)
    finally:
        engine.dispose()
    assert {"sipzone serve", "sipzone feed"} <= names, names
