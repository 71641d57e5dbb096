"""`sipzone serve` as a process: workers, supervision, live changes, metrics, clean stop; and
how it survives a bad day: killed workers, a second instance on its ports, a store file
replaced under it, a database that goes away."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest

from sipzone.store.repository import Store
from tests.conftest import SIPZONE, Cli, Connections, Server, free_port

Serve = Callable[..., Server]


def a_records(port: int, name: str, timeout: float = 2) -> list[str]:
    query = dns.message.make_query(name, "A")
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
    return sorted(rr.to_text() for rrset in reply.answer for rr in rrset)


def answered(port: int, name: str) -> list[str] | None:
    try:
        return a_records(port, name, timeout=0.5)
    except dns.exception.Timeout:
        return None


def options(port: int, name: str, timeout: float = 0.5) -> int | None:
    """The status code the edge answers an OPTIONS for ``name`` with (None: no answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ua:
        ua.bind(("127.0.0.1", 0))
        ua.settimeout(timeout)
        me = ua.getsockname()[1]
        ua.sendto(
            (
                f"OPTIONS sip:ping@{name} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-rt-{time.monotonic_ns()}\r\n"
                "Max-Forwards: 70\r\n"
                f"To: <sip:ping@{name}>\r\n"
                f"From: <sip:probe@127.0.0.1:{me}>;tag=1\r\n"
                f"Call-ID: rt-{time.monotonic_ns()}@127.0.0.1\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        try:
            return int(ua.recv(4096).split(b" ", 2)[1])
        except TimeoutError:
            return None


def children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def wait_for(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def logged(server: Server, pattern: str, since: int = 0) -> list[str]:
    """Lines of the server's output from line ``since`` on that match ``pattern``."""
    return [line for line in server.lines[since:] if re.search(pattern, line)]


def serving(server: Server, pid: int) -> bool:
    return bool(logged(server, rf"serving revision \d+ \(pid {pid}\)"))


def metric(port: int, name: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name} (\S+)$", body, re.M)
    return float(found.group(1)) if found else None


def per_worker(port: int, name: str) -> dict[str, float]:
    """A per-worker gauge's values by the worker label."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", body, re.M)
    return {re.search(r'worker="(\d+)"', labels)[1]: float(v) for labels, v in found}  # type: ignore[index]


def one_site_store(url: str, *domains: str) -> None:
    """A store with zone example.com, one site and ``domains`` (set up in this process; the
    changes a test makes while serving go through the real CLI where they matter)."""
    store = Store(url)
    try:
        store.init()
        store.add_nameserver("ns1.example.org")
        store.add_zone("example.com")
        store.add_site("eu1", vips=["192.0.2.10"], region="eu")
    finally:
        store.close()
    add_domains(url, *domains)


def add_domains(url: str, *domains: str) -> None:
    store = Store(url)
    try:
        for domain in domains:
            store.add_domain(domain)
    finally:
        store.close()  # a connection left open would hold the file as a server does


def test_workers_follow_the_store_and_share_metrics(
    cli: Cli, serve: Serve, sqlite_url: str
) -> None:
    one_site_store(sqlite_url, "voip.example.com")
    port, metrics_port = free_port(), free_port()
    server = serve(
        "--dns", f"127.0.0.1:{port}", "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}"
    )
    workers = children(server.proc.pid)
    assert len(workers) == 2
    # "ready" means both workers listen: every query is answered from the first one on
    assert all(a_records(port, "voip.example.com") == ["192.0.2.10"] for _ in range(20))

    cli("domain", "add", "live.example.com", check=True)
    # every worker must have it: ask enough times that both sockets of the group are hit
    wait_for(lambda: all(a_records(port, "live.example.com") for _ in range(20)))

    revision = json.loads(cli("check", "live.example.com", "--json").stdout)["revision"]
    # one value per worker (a stale worker shows as itself, not hidden in a maximum)
    assert per_worker(metrics_port, "sipzone_revision") == {"0": revision, "1": revision}
    assert per_worker(metrics_port, "sipzone_store_up") == {"0": 1, "1": 1}
    assert metric(metrics_port, "sipzone_worker_restarts_total") == 0

    os.killpg(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)


def test_a_killed_worker_is_replaced_and_the_service_answers_within_2s(
    serve: Serve, sqlite_url: str
) -> None:
    """Issue 7 item 3: every respawn used to die at once (EBADF on the closed ready pipe)."""
    one_site_store(sqlite_url, "voip.example.com")
    dns_port, sip_port, metrics_port = free_port(), free_port(), free_port()
    server = serve(
        "--dns", f"127.0.0.1:{dns_port}", "--sip", f"udp:127.0.0.1:{sip_port}",
        "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    workers = children(server.proc.pid)
    victim, survivor = sorted(workers)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    def back() -> set[int] | None:
        now = children(server.proc.pid)
        fresh = now - workers
        if len(now) == 2 and fresh and serving(server, min(fresh)):
            return fresh
        return None

    (replacement,) = wait_for(back, timeout=2.0)
    assert options(sip_port, "voip.example.com") == 200
    assert a_records(dns_port, "voip.example.com", timeout=0.5) == ["192.0.2.10"]
    assert time.monotonic() - killed_at < 2.0

    # The replacement really answers: with the survivor stopped, every datagram the kernel
    # hands the survivor's socket waits, so whatever is answered is the replacement's work.
    os.kill(survivor, signal.SIGSTOP)
    try:
        probes = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
        for probe in probes:
            query = dns.message.make_query("voip.example.com", "A").to_wire()
            probe.sendto(query, ("127.0.0.1", dns_port))
        time.sleep(1.0)
        replies = 0
        for probe in probes:
            probe.setblocking(False)
            try:
                probe.recv(4096)
                replies += 1
            except BlockingIOError:
                pass
            probe.close()
    finally:
        os.kill(survivor, signal.SIGCONT)
    assert replies > 0

    deaths = logged(server, r"worker \d+ .*killed by SIGKILL")
    assert len(deaths) == 1, deaths
    assert f"(pid {victim}) was killed by SIGKILL" in deaths[0]
    assert not logged(server, r"Traceback|Errno 9")
    assert metric(metrics_port, "sipzone_worker_restarts_total") == 1
    assert replacement not in workers


def test_a_worker_that_keeps_dying_is_reported_in_a_bounded_number_of_lines(
    serve: Serve, sqlite_url: str
) -> None:
    one_site_store(sqlite_url, "voip.example.com")
    dns_port, metrics_port = free_port(), free_port()
    server = serve(
        "--dns", f"127.0.0.1:{dns_port}", "--workers", "2",
        "--metrics", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    known = children(server.proc.pid)
    target = max(known)
    for _ in range(5):  # the same slot, each time as soon as its replacement serves
        os.kill(target, signal.SIGKILL)

        def replaced() -> int | None:
            fresh = children(server.proc.pid) - known
            return min(fresh) if fresh and serving(server, min(fresh)) else None

        target = wait_for(replaced, timeout=15.0)
        known.add(target)
    deaths = logged(server, r"worker \d+ (\(pid|keeps dying)")
    # two deaths said one by one, then one line saying it keeps dying: the rest is counted
    assert len(deaths) == 3, deaths
    assert "keeps dying: 3 times in a row" in deaths[2]
    assert "killed by SIGKILL" in deaths[2]
    assert metric(metrics_port, "sipzone_worker_restarts_total") == 5
    assert a_records(dns_port, "voip.example.com") == ["192.0.2.10"]


class Secondary:
    """A UDP socket that receives NOTIFY as a secondary would, and acknowledges each."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def serials(self, until: int, within: float = 10.0, quiet: float = 1.0) -> list[int]:
        """SOA serials of the NOTIFYs received until one carries ``until`` (at most
        ``within`` seconds), and during ``quiet`` seconds after it (duplicates would come)."""
        got: list[int] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            msg = dns.message.from_wire(data)
            assert msg.opcode() == dns.opcode.NOTIFY
            got.append(msg.answer[0][0].serial if msg.answer else -1)
            self.sock.sendto(dns.message.make_response(msg).to_wire(), peer)
            if got[-1] == until:
                deadline = min(deadline, time.monotonic() + quiet)
        return got


@pytest.fixture
def secondary() -> Iterator[Secondary]:
    s = Secondary()
    yield s
    s.sock.close()


def acknowledged_by(server: Server) -> list[int]:
    """Pids of the workers that logged an acknowledged NOTIFY, in order."""
    lines = logged(server, r"NOTIFY example.com serial \d+ acknowledged")
    return [int(re.search(r"\[(\d+)\]", line).group(1)) for line in lines]  # type: ignore[union-attr]


def test_notify_comes_once_per_change_and_survives_the_death_of_its_sender(
    cli: Cli, serve: Serve, sqlite_url: str, secondary: Secondary
) -> None:
    """Issue 7 item 16: only worker 0 sent NOTIFY, and its death stopped NOTIFY for good."""
    one_site_store(sqlite_url)
    server = serve(
        "--dns", f"127.0.0.1:{free_port()}", "--workers", "3", "--notify", secondary.address
    )
    store = Store(sqlite_url)
    revision = store.revision()  # read after the start: serve may write what it lacks
    serial = store.load_snapshot().zone_revision("example.com")  # (not in the zone: a secret)
    store.close()
    # the worker holding the role announces the zone once at start
    assert secondary.serials(until=serial) == [serial]
    (sender,) = wait_for(lambda: acknowledged_by(server))
    assert sender in children(server.proc.pid)

    cli("domain", "add", "voip.example.com", check=True)
    assert secondary.serials(until=revision + 1) == [revision + 1]  # not one per worker

    os.kill(sender, signal.SIGKILL)
    # its replacement takes the role over and announces what may have changed meanwhile
    assert secondary.serials(until=revision + 1) == [revision + 1]
    cli("domain", "add", "sip.example.com", check=True)
    assert secondary.serials(until=revision + 2) == [revision + 2]
    senders = acknowledged_by(server)
    assert senders[:2] == [sender, sender] and len(set(senders[2:])) == 1
    assert senders[-1] != sender and senders[-1] in children(server.proc.pid)


def test_a_second_serve_on_the_same_ports_is_refused_unless_sharing_is_asked(
    serve: Serve, sqlite_url: str
) -> None:
    """Issue 7 item 16: SO_REUSEPORT let a second instance take half of the traffic."""
    one_site_store(sqlite_url, "voip.example.com")
    dns_port, sip_port, metrics_port, other = free_port(), free_port(), free_port(), free_port()
    serve(
        "--dns", f"127.0.0.1:{dns_port}", "--sip", f"udp:127.0.0.1:{sip_port}",
        "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip

    def second(*args: str) -> str:
        """The one line a second serve is refused with."""
        env = {**os.environ, "SIPZONE_DB": sqlite_url}
        refused = subprocess.run(
            [SIPZONE, "serve", *args], capture_output=True, text=True, env=env, timeout=30
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stdout == ""
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        return lines[0]

    line = second("--dns", f"127.0.0.1:{dns_port}")
    assert line == (
        f"sipzone: DNS udp 127.0.0.1:{dns_port} is held by another process (another sipzone "
        "serve?); stop it, or give --share-ports to share it on purpose"
    )
    # a wildcard address overlaps the loopback one the first instance holds
    line = second("--sip", f"udp:127.0.0.1:{other},udp:0.0.0.0:{sip_port}")
    assert f"SIP udp 0.0.0.0:{sip_port} is held by another process" in line
    # the metrics port cannot be shared at all
    line = second("--dns", f"127.0.0.1:{other}", "--metrics", f"127.0.0.1:{metrics_port}",
                  "--share-ports")  # fmt: skip
    assert f"metrics 127.0.0.1:{metrics_port} is held by another process" in line

    serve("--dns", f"127.0.0.1:{dns_port}", "--sip", f"udp:127.0.0.1:{sip_port}", "--share-ports")
    assert options(sip_port, "voip.example.com") == 200


def store_domains(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return sorted(row[0] for row in conn.execute("SELECT name FROM domains"))


def test_a_replaced_sqlite_file_is_read_whole(
    cli: Cli, serve: Serve, sqlite_url: str, tmp_path: Path
) -> None:
    """Issue 7 item 9: a store replaced under its name was never noticed."""
    live = Path(sqlite_url.removeprefix("sqlite:///"))
    one_site_store(sqlite_url, "voip.example.com", "old.example.com")
    sip_port = free_port()
    server = serve("--sip", f"udp:127.0.0.1:{sip_port}", "--workers", "2")

    def everywhere(name: str, status: int) -> bool:
        return all(options(sip_port, name) == status for _ in range(10))

    add_domains(sqlite_url, "late.example.com")  # lands in the live file's write-ahead log
    wait_for(lambda: everywhere("late.example.com", 200), timeout=2.0)

    # 1. restore another store with `mv`, as from a backup
    backup = tmp_path / "backup.db"
    one_site_store(f"sqlite:///{backup}", "voip.example.com", "new.example.com")
    since = len(server.lines)
    os.rename(backup, live)
    wait_for(lambda: everywhere("new.example.com", 200), timeout=2.0)
    assert everywhere("old.example.com", 403) and everywhere("late.example.com", 403)
    assert len(logged(server, "was replaced", since)) == 2  # once per worker
    # the old file's write-ahead log was not read over the new one, nor written into it
    assert store_domains(live) == ["new.example.com", "voip.example.com"]
    cli("domain", "add", "after.example.com", check=True)
    wait_for(lambda: everywhere("after.example.com", 200), timeout=2.0)
    assert store_domains(live) == ["after.example.com", "new.example.com", "voip.example.com"]

    # 2. delete it and create it again
    since = len(server.lines)
    live.unlink()
    wait_for(lambda: len(logged(server, "is gone", since)) == 2, timeout=2.0)
    assert everywhere("new.example.com", 200)  # the last snapshot keeps answering
    assert not live.exists()  # and nothing created an empty file in its place
    one_site_store(sqlite_url, "fresh.example.com")
    wait_for(lambda: everywhere("fresh.example.com", 200), timeout=2.0)
    assert everywhere("new.example.com", 403)
    assert store_domains(live) == ["fresh.example.com"]

    # 3. restore in place through SQLite's backup API, to a revision below the one served
    old = tmp_path / "old.db"
    one_site_store(f"sqlite:///{old}", "restored.example.com")
    add_domains(sqlite_url, "more0.example.com", "more1.example.com", "more2.example.com")
    wait_for(lambda: everywhere("more2.example.com", 200), timeout=2.0)
    since = len(server.lines)
    with (
        contextlib.closing(sqlite3.connect(old)) as source,
        contextlib.closing(sqlite3.connect(live)) as target,
    ):
        source.backup(target)
    wait_for(lambda: everywhere("restored.example.com", 200), timeout=2.0)
    assert everywhere("more2.example.com", 403) and everywhere("fresh.example.com", 403)
    assert logged(server, "no longer holds revision", since)
    assert not logged(server, "Traceback")


def test_a_lost_postgresql_is_logged_once_and_followed_again_when_back(
    pg_url: str, cli: Cli, serve: Serve
) -> None:
    """Issue 7 item 10: a lost PostgreSQL logged about 96 lines a second."""
    one_site_store(pg_url, "voip.example.com")
    dns_port, sip_port = free_port(), free_port()
    server = serve("--dns", f"127.0.0.1:{dns_port}", "--sip", f"udp:127.0.0.1:{sip_port}",
                   db=pg_url)  # fmt: skip
    connections = Connections(pg_url)
    allow = connections.allow

    try:
        since = len(server.lines)
        allow(False)
        lost_at = time.monotonic()
        while time.monotonic() - lost_at < 3.0:  # the last snapshot keeps answering
            assert a_records(dns_port, "voip.example.com", timeout=1) == ["192.0.2.10"]
            assert options(sip_port, "voip.example.com") == 200
            time.sleep(0.2)
        during = server.lines[since:]
        assert 1 <= len(during) <= 3, during
        assert len(logged(server, "store connection lost", since)) == 1
        assert not logged(server, "Traceback", since)
    finally:
        connections.close()
    cli("domain", "add", "back.example.com", db=pg_url, check=True)
    wait_for(lambda: options(sip_port, "back.example.com") == 200, timeout=15.0)
    assert len(logged(server, "store connection is back", since)) == 1
    assert len(server.lines[since:]) <= 6, server.lines[since:]


def test_serve_raises_its_open_file_limit_to_the_hard_one(serve: Serve, sqlite_url: str) -> None:
    one_site_store(sqlite_url)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Low, but above what this test process holds already (after hundreds of tests, a few
    # hundred descriptors): serve inherits it and must raise its own limit to the hard one.
    low = min(max(256, len(os.listdir("/proc/self/fd")) + 64), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        server = serve("--dns", f"127.0.0.1:{free_port()}", "--workers", "2")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def nofile(pid: int) -> tuple[str, str]:
        text = Path(f"/proc/{pid}/limits").read_text()
        found = re.search(r"Max open files\s+(\S+)\s+(\S+)", text)
        assert found is not None
        return found.group(1), found.group(2)

    for pid in {server.proc.pid, *children(server.proc.pid)}:
        got_soft, got_hard = nofile(pid)
        assert got_soft == got_hard, (pid, got_soft, got_hard)
    assert logged(server, rf"open-file limit {nofile(server.proc.pid)[0]}")


def test_plain_udp_path_serves_sip_and_dns(serve: Serve, sqlite_url: str) -> None:
    one_site_store(sqlite_url, "*.teams.example.com")
    dns_port, sip_port = free_port(), free_port()
    serve(
        "--dns", f"127.0.0.1:{dns_port}", "--sip", f"udp:127.0.0.1:{sip_port}", "--no-batched-udp"
    )
    assert a_records(dns_port, "cust42.teams.example.com") == ["192.0.2.10"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ua:
        ua.bind(("127.0.0.1", 0))
        ua.settimeout(3)
        port = ua.getsockname()[1]
        ua.sendto(
            (
                "OPTIONS sip:ping@cust42.teams.example.com SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-plain-1\r\n"
                "Max-Forwards: 70\r\n"
                "To: <sip:ping@cust42.teams.example.com>\r\n"
                f"From: <sip:probe@127.0.0.1:{port}>;tag=1\r\n"
                "Call-ID: plain-1@127.0.0.1\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", sip_port),
        )
        reply = ua.recv(4096).decode()
    assert reply.startswith("SIP/2.0 200 ")
    assert f"Contact: <sip:cust42.teams.example.com:{sip_port};transport=udp>" in reply


def test_workers_stop_when_their_supervisor_is_killed(serve: Serve, sqlite_url: str) -> None:
    """Orphans would keep the ports, and a restarted serve would be refused on them."""
    one_site_store(sqlite_url)
    dns_port = free_port()
    server = serve("--dns", f"127.0.0.1:{dns_port}", "--workers", "2")
    workers = children(server.proc.pid)
    os.kill(server.proc.pid, signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}/status").exists() for pid in workers), 5.0)
    serve("--dns", f"127.0.0.1:{dns_port}")  # not refused: nothing holds the port any more
