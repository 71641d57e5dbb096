"""The probe that tells whether another process holds a port the services would share."""

from __future__ import annotations

import socket

import pytest

from sipzone.net.sockets import bound_socket, held_elsewhere
from tests.conftest import free_port

KINDS = [socket.SOCK_DGRAM, socket.SOCK_STREAM]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_port_joined_with_so_reuseport_is_held(host: str, kind: socket.SocketKind) -> None:
    port = free_port()
    assert not held_elsewhere(host, port, kind)
    with bound_socket(host, port, kind):
        assert held_elsewhere(host, port, kind)
        # the probe itself holds nothing: a second instance could still bind, and so can we
        with bound_socket(host, port, kind):
            pass
    assert not held_elsewhere(host, port, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_a_wildcard_holder_holds_every_address(kind: socket.SocketKind) -> None:
    port = free_port()
    with bound_socket("0.0.0.0", port, kind):
        assert held_elsewhere("127.0.0.1", port, kind)


def test_a_dual_stack_probe_sees_an_ipv4_holder() -> None:
    port = free_port()
    with bound_socket("127.0.0.1", port, socket.SOCK_DGRAM):
        assert held_elsewhere("::", port, socket.SOCK_DGRAM, dual_stack=True)
        assert not held_elsewhere("::", port, socket.SOCK_DGRAM)


def test_connections_of_an_earlier_run_in_time_wait_hold_nothing() -> None:
    port = free_port()
    listener = bound_socket("127.0.0.1", port, socket.SOCK_STREAM)
    listener.setblocking(True)
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server side closes first: its end of the connection waits
    client.close()
    listener.close()
    with socket.socket() as plain, pytest.raises(OSError):  # the TIME_WAIT is there ...
        plain.bind(("127.0.0.1", port))
    assert not held_elsewhere("127.0.0.1", port, socket.SOCK_STREAM)  # ... and holds nothing


def test_other_bind_failures_are_raised() -> None:
    with pytest.raises(OSError):
        held_elsewhere("192.0.2.1", free_port(), socket.SOCK_DGRAM)  # not an address of ours
