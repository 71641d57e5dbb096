"""One probe against real peers: sipp over UDP and TCP, a closed port, a silent one."""

from __future__ import annotations

import asyncio
import socket
import time

from sipzone.health.probe import Target, probe
from tests.conftest import free_port
from tests.health.conftest import Sites


def run(target: Target, timeout: float = 1.0) -> str | None:
    return asyncio.run(probe(target, timeout))


def wait_answering(target: Target) -> None:
    deadline = time.monotonic() + 5
    while run(target) is not None:  # sipp takes a moment to listen
        assert time.monotonic() < deadline, "sipp did not start"


def test_a_final_response_over_udp_or_tcp_is_alive(sipp: Sites) -> None:
    udp, tcp = sipp("127.0.0.2"), sipp("127.0.0.2", "tcp")
    wait_answering(Target("udp", "127.0.0.2", udp.port))
    wait_answering(Target("tcp", "127.0.0.2", tcp.port))
    tcp.stop()
    error = run(Target("tcp", "127.0.0.2", tcp.port))
    assert error is not None and "refused" in error.lower()


def test_a_closed_udp_port_fails_at_once_and_a_silent_one_at_the_timeout() -> None:
    port = free_port()
    started = time.monotonic()
    error = run(Target("udp", "127.0.0.1", port), timeout=3.0)
    assert error is not None and "refused" in error.lower()
    assert time.monotonic() - started < 2.5  # the ICMP error ends it, not the timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        target = Target("udp", "127.0.0.1", silent.getsockname()[1])
        error = run(target, timeout=0.6)
        assert error == f"udp 127.0.0.1:{target.port}: no final response within 0.6 s"
        assert len(silent.recv(4096)) > 0  # it was asked, with retransmissions
