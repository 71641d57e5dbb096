"""TLS load for bench/sip/tls.sh: OPTIONS over established TLS connections, or new TLS
connections (handshake, then close), against HOST:PORT; prints the CPU the server's process
group spent per request or per handshake (from /proc), and how many were done.

usage: tlsload.py options HOST PORT SERVER_PID CA.pem [--connections 20 --depth 8 --count 50000]
                  [--plain: over TCP without TLS, to tell the TLS part from the SIP part]
       tlsload.py handshakes HOST PORT SERVER_PID CA.pem --tls 1.2|1.3 [--count 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import time

import uvloop

NAME = "voip.example.com"


def ticks(pgid: int) -> int:
    """utime + stime of every process in process group ``pgid`` (clock ticks)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: pgrp
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total


def options(n: int, transport: str) -> bytes:
    return (
        f"OPTIONS sip:ping@{NAME} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK-b{n}\r\nMax-Forwards: 70\r\n"
        f"To: <sip:ping@{NAME}>\r\nFrom: <sip:probe@127.0.0.1>;tag={n}\r\n"
        f"Call-ID: tlsload-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def run_options(args: argparse.Namespace, context: ssl.SSLContext, pgid: int) -> str:
    tls = {} if args.plain else {"ssl": context, "server_hostname": NAME}
    via = "TCP" if args.plain else "TLS"
    streams = [
        await asyncio.open_connection(args.host, args.port, **tls)  # type: ignore[arg-type]
        for _ in range(args.connections)
    ]
    left = [args.count]
    done = [0]

    async def drive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, base: int) -> None:
        n = base
        while left[0] > 0:
            batch = min(args.depth, left[0])
            left[0] -= batch
            writer.write(b"".join(options(n + i, via) for i in range(batch)))
            n += batch
            got = 0
            while got < batch:
                data = await reader.read(65536)
                if not data:
                    return
                got += data.count(b"SIP/2.0 200 ")
            done[0] += got

    hz = os.sysconf("SC_CLK_TCK")
    t0, c0 = time.monotonic(), ticks(pgid)
    await asyncio.gather(*(drive(r, w, i * 10_000_000) for i, (r, w) in enumerate(streams)))
    t1, c1 = time.monotonic(), ticks(pgid)
    for _, writer in streams:
        writer.close()
    per = (c1 - c0) * 1e6 / hz / max(done[0], 1)
    return f"cpu_us_per_request={per:.1f} ok={done[0]} seconds={t1 - t0:.1f}"


async def run_handshakes(args: argparse.Namespace, context: ssl.SSLContext, pgid: int) -> str:
    version = ssl.TLSVersion.TLSv1_2 if args.tls == "1.2" else ssl.TLSVersion.TLSv1_3
    context.minimum_version = context.maximum_version = version
    left = [args.count]
    done = [0]

    async def drive() -> None:
        while left[0] > 0:
            left[0] -= 1
            _, writer = await asyncio.open_connection(
                args.host, args.port, ssl=context, server_hostname=NAME
            )
            assert writer.get_extra_info("ssl_object").version() == f"TLSv{args.tls}"
            done[0] += 1
            writer.transport.abort()  # no close_notify exchange: the handshake is measured

    hz = os.sysconf("SC_CLK_TCK")
    t0, c0 = time.monotonic(), ticks(pgid)
    await asyncio.gather(*(drive() for _ in range(args.connections)))
    await asyncio.sleep(0.5)  # the server's side of the last closes
    t1, c1 = time.monotonic(), ticks(pgid)
    per = (c1 - c0) * 1e6 / hz / max(done[0], 1)
    return f"cpu_us_per_handshake={per:.1f} ok={done[0]} seconds={t1 - t0:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("options", "handshakes"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("pid", type=int)
    parser.add_argument("ca")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--tls", choices=("1.2", "1.3"), default="1.3")
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca)
    pgid = os.getpgid(args.pid)
    run = run_options if args.mode == "options" else run_handshakes
    print(uvloop.run(run(args, context, pgid)))


if __name__ == "__main__":
    main()
