"""Zone transfer and zone export of big zones (issue 7, item 15).

For each size (default 100,000 and 1,000,000 SIP domains, imported with `sipzone domain import`
into a fresh SQLite store, plus `*.teams.example.com`, two sites and an email domain):

- `sipzone zone export example.com --format bind`: wall time, peak RSS, bytes; and, for
  comparison, the peak RSS of a process that only loads the store's snapshot;
- `sipzone serve --dns ... --sip ...` (one process, as deployed): one AXFR read at full speed by
  a client here: time to the first message, total time, bytes, messages, records; the server's
  peak RSS during the transfer (VmRSS sampled every 20 ms); meanwhile a second process asks
  DNS questions (a random domain's A record) and SIP OPTIONS one after the other, 5 ms apart:
  their latency p50 / p99 / max during the transfer and, for reference, for 2 s before it;
- with --bind: a BIND secondary of the zone, timed from its start to serving the serial.

Holds /tmp/sipzone-bench.lock while it measures (other benchmarks on the box take it too).

usage: .venv/bin/python bench/dns/xfr.py [--sizes 100000,1000000] [--bind]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Event, Process, Queue
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIPZONE = str(Path(sys.executable).parent / "sipzone")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_measured(args: list[str], env: dict[str, str], stdout: int | object) -> tuple[float, int]:
    """Run a command; its wall time and peak RSS (kB, from wait4)."""
    start = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=stdout, stderr=subprocess.PIPE)  # type: ignore[arg-type]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{args} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return time.monotonic() - start, usage.ru_maxrss


def setup_store(tmp: Path, count: int) -> dict[str, str]:
    env = {**os.environ, "SIPZONE_DB": f"sqlite:///{tmp / 'xfr.db'}"}

    def cli(*args: str) -> None:
        subprocess.run([SIPZONE, *args], env=env, check=True, stdout=subprocess.DEVNULL)

    cli("init")
    cli("nameserver", "add", "ns1.example.com", "--address", "127.0.0.1")
    cli("zone", "add", "example.com")
    cli("site", "add", "site-a", "--vip", "192.0.2.10", "--vip", "2001:db8::10",
        "--region", "a", "--network", "127.0.0.0/8")  # fmt: skip
    cli("site", "add", "site-b", "--vip", "198.51.100.10", "--region", "b")
    cli("domain", "add", "*.teams.example.com")
    cli("email-domain", "set", "mail.example.com")
    names = tmp / "names.txt"
    names.write_text("".join(f"customer{i}.example.com\n" for i in range(1, count + 1)))
    start = time.monotonic()
    cli("domain", "import", str(names), "--owner", "provider")
    print(f"  import of {count} names: {time.monotonic() - start:.1f} s", file=sys.stderr)
    return env


def export(tmp: Path, env: dict[str, str]) -> dict[str, float]:
    out = tmp / "export.zone"
    with out.open("wb") as f:
        wall, peak = run_measured([SIPZONE, "zone", "export", "example.com", "--format", "bind"],
                                  env, f)  # fmt: skip
    load = "from sipzone.store.repository import Store; import os; " \
        "Store(os.environ['SIPZONE_DB']).load_snapshot()"  # fmt: skip
    _, snapshot_peak = run_measured([sys.executable, "-c", load], env, subprocess.DEVNULL)
    result = {"wall": wall, "rss": peak / 1024, "bytes": out.stat().st_size,
              "snapshot_rss": snapshot_peak / 1024}  # fmt: skip
    checkzone = shutil.which("named-checkzone")
    if checkzone:
        check = subprocess.run([checkzone, "example.com", str(out)], capture_output=True, text=True)
        result["checkzone"] = float(check.returncode == 0)
    out.unlink()
    return result


def querier(dns_port: int, sip_port: int, count: int, stop: Event, out: Queue) -> None:  # type: ignore[type-arg]
    """Closed-loop DNS A queries for random domains and SIP OPTIONS, 5 ms apart, until ``stop``;
    puts (phase marks, latencies) on ``out``."""
    import dns.message

    rng = random.Random(7)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    me = sock.getsockname()[1]
    samples: list[tuple[float, str, float]] = []
    i = 0
    while not stop.is_set():
        i += 1
        name = f"customer{rng.randint(1, count)}.example.com"
        query = dns.message.make_query(name, "A").to_wire()
        options = (
            f"OPTIONS sip:ping@{name} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-{i}"
            f"\r\nMax-Forwards: 70\r\nTo: <sip:ping@{name}>\r\nFrom: <sip:b@example.net>;tag=1\r\n"
            f"Call-ID: b{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        for kind, port, data in (("dns", dns_port, query), ("sip", sip_port, options)):
            start = time.monotonic()
            sock.sendto(data, ("127.0.0.1", port))
            try:
                reply = sock.recv(65535)
                ok = reply.startswith(b"SIP/2.0 200") if kind == "sip" else reply[3] & 15 == 0
                # A failure (no answer within 5 s, or not NOERROR / 200) counts as infinite.
                samples.append((start, kind, time.monotonic() - start if ok else float("inf")))
            except TimeoutError:
                samples.append((start, kind, float("inf")))
        time.sleep(0.005)
    out.put(samples)


def ends_with_soa(message: bytes) -> bool:
    """Whether the last RR of a response is an SOA (the one closing a zone transfer): found
    from the end, as its RDATA length varies with how the server compressed the names in it,
    so any server's transfer can be read without parsing every record."""
    for rdlen in range(22, min(len(message) - 22, 300)):
        at = len(message) - rdlen - 10
        if message[at : at + 4] == b"\x00\x06\x00\x01" and (
            struct.unpack_from("!H", message, at + 8)[0] == rdlen
        ):
            return True
    return False


class Axfr:
    """An AXFR client reading at full speed, like a secondary."""

    def __init__(self, port: int, qtype: str = "AXFR", serial: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.qtype = qtype
        self.serial = serial
        self.first = self.total = 0.0
        self.bytes = self.messages = self.records = 0

    def run(self) -> None:
        import dns.message
        import dns.rdata
        import dns.rrset

        message = dns.message.make_query("example.com", self.qtype)
        if self.qtype == "IXFR":  # RFC 1995 §3: the secondary's SOA in the authority section
            soa = f"ns. h. {self.serial} 3600 600 1209600 60"
            message.authority.append(
                dns.rrset.from_rdata("example.com.", 60, dns.rdata.from_text("IN", "SOA", soa))
            )
        query = message.to_wire()
        start = time.monotonic()
        self.sock.sendall(struct.pack("!H", len(query)) + query)
        buf = bytearray()
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("server closed the transfer")
            buf += chunk
            done = False
            at = 0
            while len(buf) - at >= 2:
                size = struct.unpack_from("!H", buf, at)[0]
                if len(buf) - at < 2 + size:
                    break
                message = bytes(buf[at + 2 : at + 2 + size])
                at += 2 + size
                self.messages += 1
                self.bytes += size
                answers = struct.unpack_from("!H", message, 6)[0]
                self.records += answers
                if self.messages == 1:
                    self.first = time.monotonic() - start
                # The SOA that opens the transfer closes it too (an IXFR may be one message).
                if ends_with_soa(message) and self.records > 1:
                    done = True
            del buf[:at]
            if done:
                break
        self.total = time.monotonic() - start
        self.sock.close()


def percentiles(values: list[float]) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"{p(0.5):.2f} / {p(0.99):.2f} / {ordered[-1] * 1000:.1f}"


def transfer(tmp: Path, env: dict[str, str], count: int, bind: bool) -> dict[str, object]:
    dns_port, sip_port = free_port(), free_port()
    log = (tmp / "serve.log").open("w")
    server = subprocess.Popen(
        [SIPZONE, "serve", "--dns", f"127.0.0.1:{dns_port}", "--sip", f"udp:127.0.0.1:{sip_port}",
         "--site", "site-a", "--allow-transfer", "127.0.0.0/8"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "sipzone: ready" not in (tmp / "serve.log").read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("serve did not start:\n" + (tmp / "serve.log").read_text())
            time.sleep(0.2)
        time.sleep(1.0)
        before = rss_kb(server.pid)
        stop, out = Event(), Queue()
        q = Process(target=querier, args=(dns_port, sip_port, count, stop, out))
        q.start()
        time.sleep(2.0)
        peak = [before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], rss_kb(server.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        axfr = Axfr(dns_port)
        started = time.monotonic()
        sampler.start()
        axfr.run()
        ended = time.monotonic()
        sampling.set()
        sampler.join()
        stop.set()
        samples = out.get(timeout=30)
        q.join()
        result: dict[str, object] = {
            "first": axfr.first, "total": axfr.total, "bytes": axfr.bytes,
            "messages": axfr.messages, "records": axfr.records,
            "rss_before": before / 1024, "rss_peak": peak[0] / 1024,
            "hwm": rss_kb(server.pid, "VmHWM") / 1024,
        }  # fmt: skip
        for kind in ("dns", "sip"):
            during = [lat for t, k, lat in samples if k == kind and started <= t <= ended]
            idle = [lat for t, k, lat in samples if k == kind and t < started]
            result[kind] = percentiles(during)
            result[kind + "_idle"] = percentiles(idle)
            result[kind + "_n"] = len(during)
        if bind:
            result["bind"] = bind_secondary(tmp, dns_port)
        return result
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def bind_secondary(tmp: Path, primary: int) -> float:
    """Seconds from starting BIND as a secondary to it answering with our zone."""
    named = shutil.which("named") or "/usr/sbin/named"
    port = free_port()
    work = tmp / "named"
    work.mkdir()
    conf = work / "named.conf"
    conf.write_text(f"""
options {{ directory "{work}"; pid-file "{work}/named.pid"; session-keyfile "{work}/s.key";
  listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; notify no; }};
controls {{ }};
zone "example.com" {{ type secondary; primaries {{ 127.0.0.1 port {primary}; }};
  file "{work}/example.com.db"; }};
""")
    start = time.monotonic()
    proc = subprocess.Popen([named, "-g", "-n", "1", "-c", str(conf)],
                            stdout=(work / "log").open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        while time.monotonic() - start < 1800:
            ask = [
                "dig",
                "@127.0.0.1",
                "-p",
                str(port),
                "+short",
                "+time=1",
                "customer1.example.com",
            ]
            dig = subprocess.run(ask, capture_output=True, text=True)
            if "192.0.2.10" in dig.stdout:
                return time.monotonic() - start
            time.sleep(0.5)
        raise SystemExit("BIND never loaded the zone:\n" + (work / "log").read_text()[-2000:])
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--bind", action="store_true", help="also time a BIND secondary")
    args = parser.parse_args()
    rows = []
    for count in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="sipzone-xfr-") as name:
            tmp = Path(name)
            print(f"{count} domains", file=sys.stderr)
            env = setup_store(tmp, count)
            with open("/tmp/sipzone-bench.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                xfr = transfer(tmp, env, count, args.bind)
                exp = export(tmp, env)
            print(json.dumps({"count": count, "axfr": xfr, "export": exp}), file=sys.stderr)
            rows.append((count, xfr, exp))
    print(
        "| SIP domains | first message | AXFR total | bytes (messages) | records "
        "| server RSS before → peak | DNS during (p50 / p99 / max ms) | idle | "
        "SIP OPTIONS during | idle | BIND loaded |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|")
    for count, x, _ in rows:
        bind = f"{x['bind']:.1f} s" if "bind" in x else "—"
        print(f"| {count:,} | {x['first'] * 1000:.0f} ms | {x['total']:.1f} s | "
              f"{x['bytes'] / 1e6:.0f} MB ({x['messages']:,}) | {x['records']:,} | "
              f"{x['rss_before']:.0f} → {x['rss_peak']:.0f} MB | {x['dns']} ({x['dns_n']}) | "
              f"{x['dns_idle']} | {x['sip']} | {x['sip_idle']} | {bind} |")  # fmt: skip
    print()
    print(
        "| SIP domains | `zone export` wall | peak RSS | bytes | named-checkzone "
        "| peak RSS of loading the snapshot alone |"
    )
    print("|---:|---:|---:|---:|---|---:|")
    for count, _, e in rows:
        ok = {1.0: "accepts", 0.0: "REFUSES"}.get(e.get("checkzone", -1), "—")
        print(f"| {count:,} | {e['wall']:.1f} s | {e['rss']:.0f} MB | {e['bytes'] / 1e6:.0f} MB "
              f"| {ok} | {e['snapshot_rss']:.0f} MB |")  # fmt: skip


if __name__ == "__main__":
    main()
