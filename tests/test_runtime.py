"""`sipzone serve` as a process: workers, supervision, live changes, metrics, clean stop."""

import json
import os
import signal
import subprocess
import time
import urllib.request

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.conftest import Cli, free_port


def a_records(port: int, name: str, timeout: float = 2) -> list[str]:
    query = dns.message.make_query(name, "A")
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
    return sorted(rr.to_text() for rrset in reply.answer for rr in rrset)


def answered(port: int, name: str) -> list[str] | None:
    try:
        return a_records(port, name, timeout=0.5)
    except dns.exception.Timeout:
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


def one_site_store(cli: Cli, *domains: str) -> None:
    """A store with zone example.com, one site and ``domains``, made with the real CLI."""
    cli("init", check=True)
    cli("zone", "add", "example.com", check=True)
    cli("site", "add", "eu1", "--vip", "192.0.2.10", "--region", "eu", check=True)
    for domain in domains:
        cli("domain", "add", domain, check=True)


def test_workers_follow_the_store_and_are_restarted(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    one_site_store(cli, "voip.example.com")
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
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert f"sipzone_revision {float(revision)}" in body

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(
        lambda: (
            children(server.proc.pid) if len(children(server.proc.pid) - {victim}) == 2 else None
        )
    )
    assert victim not in replaced
    # a query can be lost while the new worker loads its snapshot (clients retry); then every
    # query is answered again, whichever worker the kernel picks
    wait_for(lambda: all(answered(port, "voip.example.com") == ["192.0.2.10"] for _ in range(20)))

    os.killpg(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in replaced)


def test_only_one_of_several_workers_sends_notify(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    import socket

    import dns.opcode

    one_site_store(cli)
    secondary = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    secondary.bind(("127.0.0.1", 0))
    secondary.settimeout(0.2)
    notify_port = secondary.getsockname()[1]
    port = free_port()
    serve("--dns", f"127.0.0.1:{port}", "--workers", "3", "--notify", f"127.0.0.1:{notify_port}")
    cli("domain", "add", "voip.example.com", check=True)
    serials: list[int] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            data, peer = secondary.recvfrom(4096)
        except TimeoutError:
            continue
        msg = dns.message.from_wire(data)
        assert msg.opcode() == dns.opcode.NOTIFY
        serials.append(msg.answer[0][0].serial if msg.answer else -1)
        reply = dns.message.make_response(msg)
        secondary.sendto(reply.to_wire(), peer)
    secondary.close()
    assert len(serials) == 1, serials


def test_plain_udp_path_serves_sip_and_dns(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    import socket

    one_site_store(cli, "*.teams.example.com")
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
