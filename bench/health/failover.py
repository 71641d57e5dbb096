#!/usr/bin/env python3
"""Time from a site's death to the last DNS answer that still lists it: sipzone's health checks
against PowerDNS's ifportup and gdnsd's multifo, all probing every INTERVAL seconds (default 2,
the shortest gdnsd takes), TRIALS deaths each.

Sites are 127.0.0.2 (dies and returns) and 127.0.0.3.  For sipzone they are sipp answering
OPTIONS over UDP (its probes want a SIP answer), for PowerDNS and gdnsd plain TCP listeners
(ifportup and tcp_connect only connect); a death is the process or listener going away, so
every prober meets a refusal at once.
The clock starts when the site is gone and stops at the first answer without it (queries
every 10 ms); the site then returns and the next trial starts once it is listed again.
Measurements hold /tmp/sipzone-bench.lock.  Prints a markdown table.

usage: bench/health/failover.py [TRIALS=20] [INTERVAL=2] [ROWS=1,2,3,4,5]
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parents[2]
SIPZONE = str(ROOT / ".venv/bin/sipzone")
sys.path.insert(0, str(ROOT))
from tests.health.conftest import OPTIONS_UAS  # noqa: E402

INTERVAL = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
LOCK = "/tmp/sipzone-bench.lock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listed(port: int) -> set[str] | None:
    try:
        query = dns.message.make_query("voip.example.com", "A")
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
    except Exception:
        return None
    return {rd.to_text() for rrset in reply.answer for rd in rrset}


def wait(predicate: Callable[[], bool], within: float = 60.0, what: str = "") -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise SystemExit(f"timed out waiting {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def trials(port: int, kill: Callable[[], None], revive: Callable[[], None], n: int) -> list[float]:
    both = {"127.0.0.2", "127.0.0.3"}
    wait(lambda: listed(port) == both, what=f"for both sites at first ({listed(port)})")
    out = []
    for i in range(n):
        kill()
        try:
            gone = wait(lambda: listed(port) == {"127.0.0.3"}, 10 * INTERVAL + 10, "for the change")
            out.append(gone)
        except SystemExit as exc:  # a trial that never saw the change: said, and counted as such
            print(f"trial {i}: {exc} (answer: {listed(port)})", file=sys.stderr)
            out.append(float("inf"))
        revive()
        wait(lambda: listed(port) == both, what="for the site's return")
    return out


class Sipp:
    def __init__(self, work: Path, address: str, port: int) -> None:
        self.args = ["sipp", "-sf", str(work / "uas.xml"), "-i", address, "-p", str(port),
                     "-t", "u1", "-nostdin", "-bind_local"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def sipzone(work: Path, n: int, failures: int) -> list[float]:
    env = {**os.environ, "SIPZONE_DB": f"sqlite:///{work}/health.db"}
    a_port, b_port, dns_port = free_port(), free_port(), free_port()
    (work / "uas.xml").write_text(OPTIONS_UAS, encoding="latin-1")
    a, b = Sipp(work, "127.0.0.2", a_port), Sipp(work, "127.0.0.3", b_port)

    def run(*args: str) -> None:
        subprocess.run([SIPZONE, *args], env=env, check=True, capture_output=True)

    run("init")
    run("nameserver", "add", "ns1.example.com", "--address", "127.0.0.1")
    run("zone", "add", "example.com")
    for name, address, port in (("a", "127.0.0.2", a_port), ("b", "127.0.0.3", b_port)):
        run("site", "add", name, "--vip", address, "--region", name, "--port-udp", str(port),
            "--port-tcp", "0", "--check-interval", str(INTERVAL),
            "--check-timeout", str(INTERVAL / 2), "--check-failures", str(failures))  # fmt: skip
    run("domain", "add", "voip.example.com")
    a.start()
    b.start()
    try:
        with process([SIPZONE, "serve", "--dns", f"127.0.0.1:{dns_port}"], env):
            return trials(dns_port, a.stop, a.start, n)
    finally:
        a.stop()
        b.stop()


class Listeners:
    """The sites as plain TCP listeners on one port (what ifportup and tcp_connect check)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sockets: dict[str, socket.socket] = {}

    def listen(self, address: str) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, self.port))
        s.listen(64)
        self.sockets[address] = s

    def die(self, address: str) -> None:
        self.sockets.pop(address).close()

    def close(self) -> None:
        for s in self.sockets.values():
            s.close()


def powerdns(work: Path, n: int) -> list[float]:
    sites = Listeners()
    site_port, dns_port = sites.port, free_port()
    (work / "example.com.zone").write_text(
        "$ORIGIN example.com.\n$TTL 300\n"
        "@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 300\n"
        "@ IN NS ns1.example.com.\nns1 IN A 127.0.0.1\n"
        f"voip IN LUA A \"ifportup({site_port}, {{'127.0.0.2', '127.0.0.3'}}, "
        "{selector='all'})\"\n"
    )
    (work / "named.conf").write_text(
        f'zone "example.com" {{ type master; file "{work}/example.com.zone"; }};\n'
    )
    (work / "pdns.conf").write_text(
        f"launch=bind\nbind-config={work}/named.conf\nlocal-address=127.0.0.1\n"
        f"local-port={dns_port}\ndaemon=no\nguardian=no\nsetuid=\nsetgid=\nsocket-dir={work}\n"
        "disable-syslog=yes\nloglevel=3\nwebserver=no\nenable-lua-records=shared\n"
        f"lua-health-checks-interval={int(INTERVAL)}\n"
    )
    return run_listeners(sites, ["pdns_server", f"--config-dir={work}"], dns_port, n)


def gdnsd(work: Path, n: int, down: int) -> list[float]:
    """gdnsd 3 multifo over tcp_connect; ``down`` failures to down, 2 successes to up."""
    sites = Listeners()
    dns_port = free_port()
    (work / "zones").mkdir()
    interval = int(INTERVAL)
    (work / "config").write_text(
        f"options => {{ listen => [ 127.0.0.1:{dns_port} ] }}\n"
        "service_types => { sip => { plugin => tcp_connect, "
        f"port => {sites.port}, up_thresh => 2, ok_thresh => 1, down_thresh => {down}, "
        f"interval => {interval}, timeout => {max(1, interval // 2)} }} }}\n"
        "plugins => { multifo => { voip => { service_types => [ sip ], "
        "a1 => 127.0.0.2, a2 => 127.0.0.3 } } }\n"
    )
    (work / "zones" / "example.com").write_text(
        "@ SOA ns1 hostmaster 1 3600 600 86400 300\n@ NS ns1\nns1 A 127.0.0.1\n"
        "voip 300 DYNA multifo!voip\n"
    )
    return run_listeners(sites, ["gdnsd", "-c", str(work), "start"], dns_port, n)


def run_listeners(sites: Listeners, server: list[str], dns_port: int, n: int) -> list[float]:
    sites.listen("127.0.0.2")
    sites.listen("127.0.0.3")
    try:
        with process(server):
            wait(lambda: listed(dns_port) is not None, 10)
            return trials(dns_port, lambda: sites.die("127.0.0.2"),
                          lambda: sites.listen("127.0.0.2"), n)  # fmt: skip
    finally:
        sites.close()


def row(name: str, times: list[float]) -> str:
    print(f"{name}: {[round(t, 3) for t in times]}", file=sys.stderr)
    missed = sum(1 for t in times if t == float("inf"))
    ms = sorted(t * 1000 for t in times if t != float("inf")) or [float("nan")]
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {p99:.0f} | {ms[0]:.0f} | "
        f"{ms[-1]:.0f} | {missed} |"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with open(LOCK, "w") as lock, tempfile.TemporaryDirectory() as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = Path(tmp)
        for sub in ("sz3", "sz1", "pdns", "gd3", "gd1"):
            (work / sub).mkdir()
        head = f"| server (probe every {INTERVAL:g} s) | trials | p50 ms | p99 ms | min ms | max ms"
        print(head + " | never |")
        print("|---|---|---|---|---|---|---|", flush=True)
        runs: list[tuple[str, Callable[[], list[float]]]] = [
            ("sipzone, OPTIONS, 3 failures to down (default)", lambda: sipzone(work / "sz3", n, 3)),
            ("sipzone, OPTIONS, 1 failure to down", lambda: sipzone(work / "sz1", n, 1)),
            (
                "PowerDNS 4.7 ifportup, TCP connect (no threshold)",
                lambda: powerdns(work / "pdns", n),
            ),
            ("gdnsd 3.8 multifo, tcp_connect, down_thresh 3", lambda: gdnsd(work / "gd3", n, 3)),
            ("gdnsd 3.8 multifo, tcp_connect, down_thresh 1", lambda: gdnsd(work / "gd1", n, 1)),
        ]
        only = sys.argv[3].split(",") if len(sys.argv) > 3 else None  # e.g. "3,4": those rows
        for i, (name, measure) in enumerate(runs, 1):
            if only is None or str(i) in only:
                print(row(name, measure()), flush=True)


if __name__ == "__main__":
    main()
