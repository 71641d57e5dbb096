#!/usr/bin/env python3
"""Issue 12's load benchmark: 2,000 OPTIONS/s spread over admitted names, 1,000 domain changes
at 20/s and one site failing and returning, all at once; counts the requests that failed or
went unanswered and the server's RSS at the start and the end of the load.

- One `sipzone serve` (one worker, SIP over UDP and DNS) on a SQLite store: zone example.com,
  NAMES exact names ``custN.voip.example.com``, two sites a (127.0.0.2) and b (127.0.0.3)
  probed every second (2 failures to down, 2 successes to up), each a sipp UAS answering
  OPTIONS.
- sipp sends OPTIONS at RATE/s for SECONDS, each to the next name of an injection file (every
  admitted name in turn); a request unanswered 4 s after its last UDP retransmission, or
  answered with anything but 200, is a failed call.  Retransmissions are counted apart (a
  datagram lost on loopback and answered on its retransmission is answered, but said).
- From the start of the load, a thread of this process writes 1,000 changes to the store at
  20/s (a name added, then removed: the store keeps its size), none of them a name sipp asks.
- Site a's sipp is killed 10 s into the load and started again 20 s later; DNS is asked every
  100 ms so that the run shows the site leaving and returning.
- RSS is read from /proc every second; "start" is 5 s into the load (the first snapshots and
  the answer caches built), "end" the last second of the load.

Holds /tmp/sipzone-bench.lock while it runs.  The machine may be shared: the numbers hold for
its load at the time; the verdict (zero failures, RSS within 10 %) is what is compared.

usage: bench/health/load.py [SECONDS=60] [RATE=2000] [NAMES=1000]
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIPZONE = str(ROOT / ".venv/bin/sipzone")
sys.path.insert(0, str(ROOT))
from bench.health.failover import Sipp, free_port, listed, wait  # noqa: E402
from tests.health.conftest import OPTIONS_UAS  # noqa: E402

from sipzone.model.health import HealthCheck  # noqa: E402
from sipzone.model.names import parse_rule  # noqa: E402
from sipzone.store.repository import Store  # noqa: E402

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 60
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
NAMES = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
CHANGES, CHANGE_RATE = 1000, 20.0
KILL_AT, DEAD_FOR = 10.0, 20.0  # seconds into the load; seconds site a stays away
LOCK = "/tmp/sipzone-bench.lock"

UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options load">
  <send retrans="500"><![CDATA[

OPTIONS sip:ping@[field0] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
To: <sip:ping@[field0]>
From: <sip:load@[local_ip]:[local_port]>;tag=[call_number]
Call-ID: [call_id]
CSeq: 1 OPTIONS
Content-Length: 0

]]></send>
  <recv response="200" timeout="4000"/>
</scenario>
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Changes(threading.Thread):
    """CHANGES writes at CHANGE_RATE/s: chgN added, then removed, then the next."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.done = 0
        self.failed = 0
        self.took = 0.0

    def run(self) -> None:
        store = Store(self.url)
        began = time.monotonic()
        try:
            for i in range(CHANGES):
                time.sleep(max(0.0, began + i / CHANGE_RATE - time.monotonic()))
                name = f"chg{i // 2}.voip.example.com"
                try:
                    store.add_domain(name) if i % 2 == 0 else store.remove_domain(name)
                    self.done += 1
                except Exception as exc:  # counted and said: the verdict needs them all
                    self.failed += 1
                    print(f"change {i}: {exc}", file=sys.stderr)
        finally:
            store.close()
            self.took = time.monotonic() - began


class Watch(threading.Thread):
    """DNS every 100 ms and RSS every second, until stopped."""

    def __init__(self, dns_port: int, pid: int) -> None:
        super().__init__(daemon=True)
        self.dns_port, self.pid = dns_port, pid
        self.stop = threading.Event()
        self.began = time.monotonic()
        self.rss: list[tuple[float, int]] = []
        self.a_out: list[float] = []  # seconds into the load when a was missing from an answer

    def run(self) -> None:
        next_rss = 0.0
        while not self.stop.is_set():
            now = time.monotonic() - self.began
            if now >= next_rss:
                self.rss.append((now, rss_kib(self.pid)))
                next_rss += 1.0
            answer = listed(self.dns_port)
            if answer is not None and "127.0.0.2" not in answer:
                self.a_out.append(now)
            time.sleep(0.1)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="sipzone-load-"))
    url = f"sqlite:///{work}/load.db"
    env = {**os.environ, "SIPZONE_DB": url}
    a_port, b_port, dns_port, sip_port = free_port(), free_port(), free_port(), free_port()
    (work / "uas.xml").write_text(OPTIONS_UAS, encoding="latin-1")
    (work / "uac.xml").write_text(UAC, encoding="latin-1")
    with open(work / "names.csv", "w") as fh:
        fh.write("SEQUENTIAL\n")
        fh.writelines(f"cust{i}.voip.example.com;\n" for i in range(NAMES))

    store = Store(url)
    store.init()
    store.add_zone("example.com")
    check = HealthCheck(interval=1.0, timeout=0.5, failures=2, successes=2)
    for name, address, port in (("a", "127.0.0.2", a_port), ("b", "127.0.0.3", b_port)):
        store.add_site(name, vips=[address], region=name, ports={"udp": port, "tcp": 0},
                       check=check)  # fmt: skip
    store.add_domain("voip.example.com")
    store.import_domains([(i, parse_rule(f"cust{i}.voip.example.com"), None) for i in range(NAMES)])
    store.close()

    a, b = Sipp(work, "127.0.0.2", a_port), Sipp(work, "127.0.0.3", b_port)
    a.start()
    b.start()
    server = subprocess.Popen(
        [SIPZONE, "serve", "--site", "a", "--sip", f"udp:127.0.0.1:{sip_port}",
         "--dns", f"127.0.0.1:{dns_port}", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "sipzone: ready" in line:
                break
        threading.Thread(target=server.stdout.read, daemon=True).start()  # keep the pipe open
        wait(lambda: listed(dns_port) == {"127.0.0.2", "127.0.0.3"}, 30, "for both sites")
        run(work, url, a, server.pid, dns_port, sip_port)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
        a.stop()
        b.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, url: str, a: Sipp, pid: int, dns_port: int, sip_port: int) -> None:
    total = SECONDS * RATE
    load = subprocess.Popen(
        ["sipp", "-sf", "uac.xml", "-inf", "names.csv", "-i", "127.0.0.1", "-p", "0",
         "-t", "u1", "-r", str(RATE), "-rp", "1000", "-m", str(total), "-nostdin",
         "-trace_stat", "-stf", "stats.csv", "-fd", "1", f"127.0.0.1:{sip_port}"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    watch = Watch(dns_port, pid)
    changes = Changes(url)
    watch.start()
    changes.start()
    time.sleep(KILL_AT)
    a.stop()
    killed = time.monotonic() - watch.began
    time.sleep(DEAD_FOR)
    a.start()
    revived = time.monotonic() - watch.began
    load.wait(timeout=SECONDS + 60)
    watch.stop.set()
    watch.join()
    changes.join(timeout=60)
    with open(work / "stats.csv") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    last = rows[-1]
    when = [f"{r['ElapsedTime(C)'][3:]} ({r['Retransmissions(P)']})" for r in rows
            if int(r["Retransmissions(P)"])]  # fmt: skip
    created = int(last["TotalCallCreated"])
    ok, failed = int(last["SuccessfulCall(C)"]), int(last["FailedCall(C)"])
    retrans = int(last["Retransmissions(C)"])
    start_rss = next(kib for at, kib in watch.rss if at >= 5.0)
    end_rss = watch.rss[-1][1]
    peak = max(kib for _, kib in watch.rss)
    out = [t for t in watch.a_out if t >= killed]
    print(f"OPTIONS sent {created} at {RATE}/s for {SECONDS} s over {NAMES} names: "
          f"{ok} answered 200, {failed} failed or unanswered, {total - created} never sent, "
          f"{retrans} UDP retransmissions")  # fmt: skip
    if when:
        print("retransmissions (mm:ss into the load: count):", ", ".join(when))
    print(f"domain changes: {changes.done} of {CHANGES} written in {changes.took:.1f} s "
          f"({changes.failed} failed)")  # fmt: skip
    if out:
        print(f"site a killed at {killed:.1f} s: out of DNS from {out[0]:.1f} s to "
              f"{out[-1]:.1f} s; started again at {revived:.1f} s")  # fmt: skip
    else:
        print(f"site a killed at {killed:.1f} s: never left DNS answers (check the probes)")
    print(f"RSS: {start_rss / 1024:.1f} MiB at 5 s, {end_rss / 1024:.1f} MiB at the end "
          f"({(end_rss / start_rss - 1) * 100:+.1f} %), peak {peak / 1024:.1f} MiB")  # fmt: skip
    series = [f"{kib / 1024:.0f}" for at, kib in watch.rss if round(at) % 10 == 0]
    print("RSS MiB every 10 s:", " ".join(series))
    flat = abs(end_rss / start_rss - 1) <= 0.10
    verdict = failed == 0 and created == total and changes.failed == 0 and flat and bool(out)
    print("verdict:", "PASS" if verdict else "FAIL")


if __name__ == "__main__":
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        main()
