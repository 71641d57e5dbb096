"""A fresh AXFR of 1,000,000 SIP domains from sipzone and from PowerDNS 4.7 serving the same
zone, into `dig`-like readers and into BIND as a secondary; then the IXFR of one change
(issue 12, item 6).

One store of COUNT domains (bench/dns/xfr.py's: `customer1..N.example.com`, a wildcard, two
sites, an email domain).  `sipzone zone export` writes the zone; PowerDNS serves that file with
its bind backend (the configuration of /work/shared/bench/pdns-anchor.sh, another zone file), so
both servers transfer the same records.  In one run, alternating sipzone, PowerDNS, sipzone,
PowerDNS:

- an AXFR read at full speed (bench/dns/xfr.py's reader): total time, bytes, records; during
  sipzone's, another process asks DNS (a random domain's A) and SIP OPTIONS 5 ms apart and
  counts failures (no answer within 5 s, or not NOERROR / 200);
- then BIND as a secondary of each, timed from its start to answering from the zone, with
  the same queries running against sipzone meanwhile;
- then one domain added with the CLI: the IXFR from the previous serial (records, bytes, time).

Holds /tmp/sipzone-bench.lock while it measures.
usage: .venv/bin/python bench/dns/xfr_pdns.py [--count 1000000]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing import Event, Process, Queue
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from xfr import SIPZONE, Axfr, bind_secondary, free_port, percentiles, querier, setup_store

PDNS_CONF = """launch=bind
bind-config={dir}/named.conf
local-address=127.0.0.1
local-port={port}
daemon=no
guardian=no
setuid=
setgid=
socket-dir={dir}
disable-syslog=yes
loglevel=3
webserver=no
"""


def dig_soa_serial(port: int) -> int | None:
    ask = ["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=1", "+tries=1"]
    out = subprocess.run(
        [*ask, "example.com", "SOA"], capture_output=True, text=True
    ).stdout.split()
    # Anything but "mname rname serial ..." (a timeout, SERVFAIL while loading) is no serial.
    return int(out[2]) if len(out) == 7 and out[2].isdigit() else None


def start_pdns(tmp: Path, zone_file: Path) -> tuple[subprocess.Popen[bytes], int, float]:
    """PowerDNS on the zone file: the process, its port, seconds until it served the zone."""
    work = tmp / "pdns"
    work.mkdir()
    port = free_port()
    (work / "named.conf").write_text(
        f'zone "example.com" {{ type master; file "{zone_file}"; }};\n'
    )
    (work / "pdns.conf").write_text(PDNS_CONF.format(dir=work, port=port))
    start = time.monotonic()
    log = (work / "log").open("w")
    proc = subprocess.Popen(["pdns_server", f"--config-dir={work}"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    while dig_soa_serial(port) is None:
        if proc.poll() is not None or time.monotonic() - start > 900:
            raise SystemExit(
                "PowerDNS did not load the zone:\n" + (work / "log").read_text()[-2000:]
            )
        time.sleep(0.5)
    return proc, port, time.monotonic() - start


class Load:
    """The DNS + SIP query loop against sipzone, from another process."""

    def __init__(self, dns_port: int, sip_port: int, count: int) -> None:
        self.stop, self.out = Event(), Queue()
        self.proc = Process(target=querier, args=(dns_port, sip_port, count, self.stop, self.out),
                            daemon=True)  # fmt: skip
        self.proc.start()
        self.spans: list[tuple[str, float, float]] = []

    def during(self, label: str, started: float) -> None:
        self.spans.append((label, started, time.monotonic()))

    def finish(self) -> dict[str, str]:
        self.stop.set()
        samples = self.out.get(timeout=60)
        self.proc.join()
        result = {}
        for label, start, end in self.spans:
            for kind in ("dns", "sip"):
                lat = [x for t, k, x in samples if k == kind and start <= t <= end]
                failed = sum(x == float("inf") for x in lat)
                ok = [x for x in lat if x != float("inf")]
                result[f"{label} {kind}"] = (
                    f"{len(lat)} asked, {failed} failed, p50/p99/max {percentiles(ok)} ms"
                )
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    args = parser.parse_args()
    count = args.count
    with tempfile.TemporaryDirectory(prefix="sipzone-xfr-pdns-") as name:
        tmp = Path(name)
        env = setup_store(tmp, count)
        zone_file = tmp / "example.com.zone"
        with zone_file.open("wb") as f:
            subprocess.run([SIPZONE, "zone", "export", "example.com", "--format", "bind"],
                           env=env, stdout=f, check=True)  # fmt: skip
        with open("/tmp/sipzone-bench.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            dns_port, sip_port = free_port(), free_port()
            serve = subprocess.Popen(
                [SIPZONE, "serve", "--dns", f"127.0.0.1:{dns_port}", "--sip",
                 f"udp:127.0.0.1:{sip_port}", "--allow-transfer", "127.0.0.0/8",
                 "--site", "site-a", "--no-health-checks"],
                env=env, stdout=(tmp / "serve.log").open("w"), stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            pdns = None
            try:
                while "sipzone: ready" not in (tmp / "serve.log").read_text():
                    if serve.poll() is not None:
                        raise SystemExit((tmp / "serve.log").read_text())
                    time.sleep(0.2)
                pdns, pdns_port, pdns_load = start_pdns(tmp, zone_file)
                result: dict[str, object] = {
                    "count": count, "pdns_load": pdns_load,
                    "zone_file_bytes": zone_file.stat().st_size,
                }  # fmt: skip
                load = Load(dns_port, sip_port, count)
                time.sleep(2)
                load.during("idle", time.monotonic() - 2)
                for turn in (1, 2):
                    for server, port in (("sipzone", dns_port), ("pdns", pdns_port)):
                        axfr = Axfr(port)
                        started = time.monotonic()
                        axfr.run()
                        load.during(f"{server} axfr {turn}", started)
                        result[f"{server} axfr {turn}"] = {
                            "total": axfr.total, "bytes": axfr.bytes,
                            "messages": axfr.messages, "records": axfr.records,
                        }  # fmt: skip
                        print(server, turn, axfr.total, axfr.records, file=sys.stderr)
                for server, port in (("sipzone", dns_port), ("pdns", pdns_port)):
                    started = time.monotonic()
                    (tmp / f"bind-{server}").mkdir()
                    result[f"{server} bind"] = bind_secondary(tmp / f"bind-{server}", port)
                    load.during(f"{server} bind", started)
                    print(server, "bind", result[f"{server} bind"], file=sys.stderr)
                result["load"] = load.finish()
                # One change: what a secondary at the previous serial transfers now.
                before = dig_soa_serial(dns_port)
                add = [SIPZONE, "domain", "add", "extra.example.com", "--owner", "provider"]
                subprocess.run(add, env=env, check=True, stdout=subprocess.DEVNULL)
                while dig_soa_serial(dns_port) == before:
                    time.sleep(0.1)
                ixfr = Axfr(dns_port, "IXFR", before or 0)
                ixfr.run()
                result["ixfr"] = {"total": ixfr.total, "bytes": ixfr.bytes,
                                  "messages": ixfr.messages, "records": ixfr.records}  # fmt: skip
            finally:
                os.killpg(serve.pid, signal.SIGTERM)
                serve.wait(30)
                if pdns is not None:
                    os.killpg(pdns.pid, signal.SIGTERM)
                    pdns.wait(30)
        print(json.dumps(result, indent=1), file=sys.stderr)
        report(result)


def report(r: dict) -> None:  # type: ignore[type-arg]
    def mean(server: str) -> float:
        return sum(r[f"{server} axfr {t}"]["total"] for t in (1, 2)) / 2

    s, p = mean("sipzone"), mean("pdns")
    first = r["sipzone axfr 1"]
    print(
        f"| server | AXFR of {r['count']:,} domains (2 runs) | bytes | records "
        "| BIND secondary loaded | vs PowerDNS |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for server, mean_t in (("PowerDNS 4.7 (bind backend)", p), ("sipzone", s)):
        key = "pdns" if server.startswith("Power") else "sipzone"
        runs = " / ".join(f"{r[f'{key} axfr {t}']['total']:.1f}" for t in (1, 2))
        x = r[f"{key} axfr 1"]
        ratio = f"{p / mean_t:.2f}x AXFR, {r['pdns bind'] / r[f'{key} bind']:.2f}x BIND"
        print(f"| {server} | {runs} s | {x['bytes'] / 1e6:.0f} MB | {x['records']:,} | "
              f"{r[f'{key} bind']:.1f} s | {ratio} |")  # fmt: skip
    print()
    for label, text in r["load"].items():
        print(f"- {label}: {text}")
    i = r["ixfr"]
    print(
        f"- IXFR of one added domain: {i['records']} records, {i['bytes']} bytes, "
        f"{i['messages']} message(s), {i['total'] * 1000:.0f} ms "
        f"(AXFR: {first['records']:,} records)"
    )
    print(
        f"- PowerDNS loaded the {r['zone_file_bytes'] / 1e6:.0f} MB zone file "
        f"in {r['pdns_load']:.1f} s"
    )


if __name__ == "__main__":
    main()
