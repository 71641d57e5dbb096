"""The API at 1,000,000 domains: GET of a first page and of a deep cursor page (p50/p99), and
POST of one domain until the SIP edge of the same process admits it (p50/p99).

One `sipzone serve --api --sip` worker on SQLite; 1,000,000 rules split between two resellers
(c0..c999999.example.com, even numbers resa's, odd resb's).  Each measurement holds
/tmp/sipzone-bench.lock (the two cores are shared).  Prints a markdown table.

usage: .venv/bin/python bench/api/run.py [COUNT=1000000] [REQUESTS=300] [POSTS=200]
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SIPZONE = str(ROOT / ".venv/bin/sipzone")
LOCK = "/tmp/sipzone-bench.lock"


@contextmanager
def bench_lock() -> Iterator[None]:
    with open(LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, db: str) -> str:
    out = subprocess.run([SIPZONE, *args, "--db", db], check=True, capture_output=True, text=True)
    return out.stdout


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def timed(fn: Callable[[], None], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def options(name: str, port: int, sock: socket.socket) -> int:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    msg = (
        f"OPTIONS sip:ping@{name} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{sock.getsockname()[1]};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bench@{name}>;tag=1\r\nTo: <sip:ping@{name}>\r\n"
        f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    sock.sendto(msg.encode(), ("127.0.0.1", port))
    data, _ = sock.recvfrom(65535)
    return int(data.split(b" ", 2)[1])


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    posts = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    tmp = Path(tempfile.mkdtemp(prefix="sipzone-bench-api."))
    proc = None
    try:
        db = f"sqlite:///{tmp / 'api.db'}"
        run("init", db=db)
        run("nameserver", "add", "ns1.example.com", "--address", "127.0.0.1", db=db)
        run("zone", "add", "example.com", db=db)
        run("site", "add", "eu1", "--vip", "127.0.0.1", "--region", "eu", db=db)
        for tenant in ("resa", "resb"):
            run("tenant", "add", tenant, db=db)
        with open(tmp / "names.txt", "w") as fh:
            for i in range(count):
                fh.write(f"c{i}.example.com {'resa' if i % 2 == 0 else 'resb'}\n")
        t0 = time.perf_counter()
        run("domain", "import", str(tmp / "names.txt"), db=db)
        imported = time.perf_counter() - t0
        provider = run("token", "create", "--tenant", "provider", db=db).splitlines()[-1]
        resa = run("token", "create", "--tenant", "resa", db=db).splitlines()[-1]
        api_port, sip_port = free_port(), free_port()
        proc = subprocess.Popen(
            [SIPZONE, "serve", "--api", f"127.0.0.1:{api_port}", "--sip",
             f"udp:127.0.0.1:{sip_port}", "--db", db],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        said = []
        for line in proc.stdout:
            said.append(line)
            if "sipzone: ready" in line:
                break
        else:
            raise SystemExit("serve did not start:\n" + "".join(said))
        url = f"http://127.0.0.1:{api_port}/api/v1"
        prov = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {provider}"})
        mine = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {resa}"})
        # a cursor deep in resa's half: found by walking once with the largest pages
        deep = None
        page = prov.get("/domains", params={"owner": "resa", "prefix": "c9", "limit": 1}).json()
        deep = page["next"]
        assert deep, page
        rows = []

        def get(client: httpx.Client, params: dict[str, object]) -> Callable[[], None]:
            def call() -> None:
                r = client.get("/domains", params=params)
                assert r.status_code == 200 and len(r.json()["items"]) == 100, r.text

            return call

        cases = [
            ("provider, owner=resa, first page", get(prov, {"owner": "resa", "limit": 100})),
            (
                "provider, owner=resa, deep cursor",
                get(prov, {"owner": "resa", "limit": 100, "cursor": deep}),
            ),
            ("provider, all, first page", get(prov, {"limit": 100})),
            ("resa's token (its subtree), first page", get(mine, {"limit": 100})),
            ("resa's token, deep cursor", get(mine, {"limit": 100, "cursor": deep})),
            (
                "provider, suffix=9.example.com, first page",
                get(prov, {"suffix": "9.example.com", "limit": 100}),
            ),
        ]
        for label, fn in cases:
            fn()  # warm
            with bench_lock():
                samples = timed(fn, requests)
            p50, p99 = percentiles(samples)
            rows.append((f"GET {label}", requests, p50, p99))

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        samples = []
        with bench_lock():
            for i in range(posts):
                name = f"new{i}.example.com"
                t0 = time.perf_counter()
                r = prov.post("/domains", json={"name": name})
                assert r.status_code == 201, r.text
                while options(name, sip_port, sock) == 403:
                    time.sleep(0.001)
                samples.append(time.perf_counter() - t0)
        p50, p99 = percentiles(samples)
        rows.append(("POST one domain until the SIP edge admits it", posts, p50, p99))
        print(f"{count:,} rules imported in {imported:.0f} s; one worker, SQLite, poll 50 ms\n")
        print("| request | n | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|")
        for label, n, p50, p99 in rows:
            print(f"| {label} | {n} | {p50:.1f} | {p99:.1f} |")
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
